"""Render a benchmark run (`results.json`) as `report.md` plus PNG charts.

    python -m tests.bench.report bench-report     # re-render from results.json

Every table shows medians over the run's repetitions and the ratios the
issue's targets are stated in. Anything that could not be measured (a
contender missing, a section that failed, a component benchmark not yet
written) appears in the report with its reason instead of a figure.
"""

from __future__ import annotations

import json
import os
import sys

from .common import CONFLUENT, CONTENDERS, KAFKA_PYTHON, KAFKAD, SAME_GUARANTEE

COLORS = {KAFKAD: "#2b7bba", CONFLUENT: "#e08a1e", KAFKA_PYTHON: "#5aa05a"}


# --------------------------------------------------------------------------
# formatting


def _num(v, fmt: str = "{:,.0f}", missing: str = "n/a") -> str:
    return missing if v is None else fmt.format(v)


def _ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    if not rows:
        return ["_No figures (see the notes below)._", ""]
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _errors(errors: dict, what: str) -> list[str]:
    return [f"- {what}: **{c}** did not complete: {e}" for c, e in sorted(errors.items())] + \
        ([""] if errors else [])


def _spread(values: list | None, med) -> str:
    """' ±N%': half the range of the repetitions relative to their median (noise at a glance)."""
    if not values or len(values) < 2 or not med:
        return ""
    return f" ±{(max(values) - min(values)) / 2 / med * 100:.0f}%"


def _mib(kib) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


# --------------------------------------------------------------------------
# sections


def _machine(res: dict) -> list[str]:
    m = res["machine"]
    v = m.get("versions", {})
    lines = ["## Machine", ""]
    rows = [["Date", m["date_utc"]], ["CPU", m["cpu"]], ["Cores", str(m["cores"])],
            ["RAM", f"{m['ram_gib']} GiB"], ["Kernel", m["kernel"]], ["Python", m["python"]],
            ["Load average at start (1/5/15 min)", " / ".join(str(x) for x in m["load_at_start"])],
            ["Load average at the end", " / ".join(str(x) for x in m.get("load_at_end", [])) or "n/a"],
            ["Versions", ", ".join(f"{k} {val}" for k, val in v.items())],
            ["Run", f"{'quick' if res.get('quick') else 'full'}, {res['reps']} repetitions, "
                    f"{res.get('total_seconds', 0):.0f} s in total"]]
    lines += _table(["", ""], rows, "ll")
    missing = res.get("missing", {})
    if missing:
        lines += [f"- **{c}** was not measured: {why}" for c, why in missing.items()] + [""]
    return lines


def _find_tp(res: dict, workers: int, size: int, per_call: int) -> dict:
    for cfg in res["sections"].get("throughput", {}).get("configs", []):
        if (cfg["workers"], cfg["size"], cfg["per_call"]) == (workers, size, per_call):
            return cfg["results"]
    return {}


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _targets(res: dict) -> list[str]:
    s = res["sections"]
    rows = []
    tp = _find_tp(res, 4, 100, 1)
    k, kp = _get(tp, KAFKAD, "median"), _get(tp, KAFKA_PYTHON, "median")
    r = k / kp if k and kp else None
    rows.append(["Async throughput, 4 workers, 100 B, 1 per call: kafkad / kafka-python", ">= 3x",
                 _num(r, "{:.2f}x"), _verdict(r, lambda x: x >= 3)])
    lat = {(row["workers"], row["contender"]): row for row in _get(s, "latency", "rows") or []}
    k, c = _get(lat.get((1, KAFKAD), {}), "p50"), _get(lat.get((1, CONFLUENT), {}), "p50")
    r = k / c if k and c else None
    rows.append(["Sync p50, 1 worker: kafkad / confluent-kafka", "<= 2x", _num(r, "{:.2f}x"),
                 _verdict(r, lambda x: x <= 2)])
    pairs = _same_guarantee(lat)
    if pairs:
        rs = [r for _, _, r in pairs]
        rows.append(["Sync p50, 1 worker, same guarantee on both sides: "
                     + "; ".join(f"{a} / {b}" for a, b, _ in pairs), "<= 2x",
                     " / ".join(_num(r, "{:.2f}x") for r in rs),
                     "n/a" if None in rs else _verdict(max(rs), lambda x: x <= 2)])
    cost = {row["contender"]: row for row in _get(s, "caller_cost", "rows") or []}
    k = _get(cost.get(KAFKAD, {}), "call_us")
    rows.append(["Caller CPU per async send_messages (median)", "<= 5 us", _num(k, "{:.2f} us"),
                 _verdict(k, lambda x: x <= 5)])
    fp = {row["contender"]: row.get("first_message") for row in _get(s, "footprint", "rows") or []}
    k = fp.get(KAFKAD)
    others = [fp.get(CONFLUENT), fp.get(KAFKA_PYTHON)]
    ok = None if k is None or None in others else all(k < o for o in others)
    rows.append(["Worker RSS added (import + producer + first message): kafkad below both", "below both",
                 f"{_mib(k)} MiB vs {_mib(others[0])} / {_mib(others[1])} MiB",
                 "n/a" if ok is None else ("met" if ok else "**not met**")])
    bt = {(row["codec"], row["contender"]): row for row in _get(s, "batching", "rows") or []}
    k = _get(bt.get(("none", KAFKAD), {}), "records_per_batch")
    others = [_get(bt.get(("none", c), {}), "records_per_batch") for c in (CONFLUENT, KAFKA_PYTHON)]
    ok = None if k is None or None in others else all(k > o for o in others)
    rows.append(["Records per batch at the broker (4 workers, no compression): kafkad above both",
                 "above both",
                 f"{_num(k, '{:.1f}')} vs {_num(others[0], '{:.1f}')} / {_num(others[1], '{:.1f}')}",
                 "n/a" if ok is None else ("met" if ok else "**not met**")])
    return ["## Targets (issue 8)", ""] + _table(["Target", "Goal", "Measured", "Verdict"], rows, "lrrl")


def _same_guarantee(lat: dict) -> list[tuple[str, str, float | None]]:
    """(kafkad variant, its same-guarantee peer, p50 ratio) at 1 worker, for the pairs measured."""
    out = []
    for k, c in SAME_GUARANTEE.items():
        a, b = _get(lat.get((1, k), {}), "p50"), _get(lat.get((1, c), {}), "p50")
        if (1, k) in lat and (1, c) in lat:
            out.append((k, c, a / b if a and b else None))
    return out


def _verdict(v, test) -> str:
    if v is None:
        return "n/a"
    return "met" if test(v) else "**not met**"


def _throughput(res: dict, charts: list[str]) -> list[str]:
    sec = res["sections"].get("throughput")
    if not sec:
        return []
    lines = ["## Aggregate async throughput", "",
             "Messages acknowledged by the broker per second, all worker processes together, "
             f"median of {res['reps']} repetitions (each trial: {sec['params']['duration']} s of "
             "sending, then until every message is acknowledged); ±: half the range of the "
             "repetitions, relative to the median.", ""]
    rows = []
    for cfg in sec["configs"]:
        r = cfg["results"]
        med = {c: _get(r, c, "median") for c in CONTENDERS}
        rows.append([str(cfg["workers"]), f"{cfg['size']} B", str(cfg["per_call"])]
                    + [_num(med[c]) + _spread(_get(r, c, "rates"), med[c]) for c in CONTENDERS]
                    + [_ratio(med[KAFKAD], med[KAFKA_PYTHON]), _ratio(med[KAFKAD], med[CONFLUENT]),
                       _num(_get(r, KAFKAD, "daemon_cpu_median"), "{:.2f}")])
    lines += _table(["Workers", "Size", "Msgs/call", "kafkad", "confluent-kafka", "kafka-python",
                     "kafkad / kafka-python", "kafkad / confluent", "kafkad daemon CPU s per 1M msgs"],
                    rows, "rrr" + "r" * 6)
    if "throughput.png" in charts:
        lines += ["![throughput](throughput.png)", ""]
    conns = sec.get("connections", {})
    if conns:
        lines += ["Broker connections held on the host after warm-up (all worker processes, plus "
                  "the daemon for kafkad):", ""]
        lines += _table(["Workers"] + list(CONTENDERS),
                        [[w] + [_num(v.get(c), "{:d}") for c in CONTENDERS] for w, v in conns.items()],
                        "rrrr")
    for cfg in sec["configs"]:
        for contender, r in cfg["results"].items():
            lost = sum(r.get("sent", [])) - sum(r.get("acked", []))
            if lost > 0:
                first = (r.get("client_warnings") or [""])[0]
                lines.append(f"- {contender}, {cfg['workers']} workers, {cfg['size']} B x{cfg['per_call']}: "
                             f"{lost:,} of {sum(r['sent']):,} messages were not acknowledged (not counted)"
                             + (f"; first client warning: `{first[:200]}`" if first else "") + ".")
    if lines[-1].startswith("- "):
        lines.append("")
    unverified = sum(_get(cfg["results"], KAFKAD, "unverified_trials") or 0 for cfg in sec["configs"])
    if unverified:
        lines += [f"- {unverified} kafkad trial(s) could not read the daemon's delivered counter: their "
                  "figure counts messages sent whose producer's stop() returned, not broker acknowledgements.", ""]
    lines += _errors(sec.get("errors", {}), "throughput")
    return lines


def _latency(res: dict, charts: list[str]) -> list[str]:
    sec = res["sections"].get("latency")
    if not sec:
        return []
    lines = ["## Sync latency", "",
             "One 100-byte message per call, each waiting for the broker's acknowledgement; "
             f"percentiles per repetition over every worker's sends, median of {res['reps']} "
             "repetitions. Milliseconds.", ""]
    conf = {row["workers"]: row for row in sec["rows"] if row["contender"] == CONFLUENT}
    rows = []
    for row in sec["rows"]:
        c = conf.get(row["workers"], {})
        rows.append([str(row["workers"]), row["contender"]]
                    + [_num(row[k] / 1000 if row[k] is not None else None, "{:.2f}") for k in ("p50", "p99", "p999")]
                    + [_num(row["samples"], "{:,d}"), _ratio(row["p50"], c.get("p50"))])
    lines += _table(["Workers", "Client", "p50", "p99", "p99.9", "Sends", "p50 vs confluent"], rows,
                    "rlrrrrr")
    pairs = _same_guarantee({(row["workers"], row["contender"]): row for row in sec["rows"]})
    if pairs:
        lines += ["The same guarantee on both sides (1 worker): kafkad is idempotent by default, "
                  "confluent-kafka is not, so each default is also set against the other client "
                  "configured alike (confluent-kafka's idempotence needs acks=all, which against one "
                  "broker waits for the same write as acks=1): "
                  + "; ".join(f"{a} / {b} {_num(r, '{:.2f}x')}" for a, b, r in pairs) + ".", ""]
    if "latency.png" in charts:
        lines += ["![latency](latency.png)", ""]
    return lines + _errors(sec.get("errors", {}), "latency")


def _caller_cost(res: dict) -> list[str]:
    sec = res["sections"].get("caller_cost")
    if not sec:
        return []
    lines = ["## Caller cost", "",
             "CPU time of the calling thread per async send of one 100-byte message "
             "(`time.thread_time`, median over chunks of 100 calls), and the CPU of the whole "
             "worker process per message including the client's own threads, through to the last "
             "acknowledgement.", ""]
    rows = [[row["contender"], _num(row["call_us"], "{:.2f}"), _num(row["process_us"], "{:.2f}")]
            for row in sec["rows"]]
    lines += _table(["Client", "Caller thread, us per call", "Whole worker, us per message"], rows)
    return lines + _errors(sec.get("errors", {}), "caller cost")


def _footprint(res: dict) -> list[str]:
    sec = res["sections"].get("footprint")
    if not sec:
        return []
    lines = ["## Per-worker footprint", "",
             "Resident memory a fresh worker process adds (MiB, VmRSS deltas from before the import; "
             "medians). \"Anonymous\" is private memory (RssAnon), which forked workers cannot share.", ""]
    rows = [[row["contender"], _mib(row.get("import")), _mib(row.get("producer")),
             _mib(row.get("first_message")), _mib(row.get("anon_first_message"))]
            for row in sec["rows"]]
    lines += _table(["Client", "Import", "+ producer", "+ first message", "Anonymous at the end"], rows)
    daemon = res.get("daemon_rss_kib")
    if daemon:
        lines += [f"kafkad's daemon itself (one per host, not per worker) held {_mib(daemon.get('VmRSS'))} MiB "
                  f"resident ({_mib(daemon.get('RssAnon'))} MiB anonymous) at the end of the run.", ""]
    return lines + _errors(sec.get("errors", {}), "footprint")


def _batching(res: dict) -> list[str]:
    sec = res["sections"].get("batching")
    if not sec:
        return []
    if "unavailable" in sec:
        return ["## Batching at the broker", "", f"Not measured: {sec['unavailable']}", ""]
    p = sec["params"]
    lines = ["## Batching at the broker", "",
             f"{p['workers']} workers each sending {p['rate_per_worker']:,} JSON events/s (one per "
             f"call, {p['duration']} s), seen by a counting proxy in front of the broker. Wire ratio = "
             "JSON bytes handed to the client / bytes the client sent to the broker.", ""]
    rows = [[row["codec"], row["contender"], _num(row["records_per_batch"], "{:.1f}"),
             _num(row["records_per_request"], "{:.1f}"), _num(row["requests_per_s"]),
             _num(row["wire_ratio"], "{:.2f}")]
            for row in sorted(sec["rows"], key=lambda r: (["none", "gzip", "zstd"].index(r["codec"]),
                                                          CONTENDERS.index(r["contender"])))]
    lines += _table(["Codec", "Client", "Records / batch", "Records / request", "Produce requests/s",
                     "Wire ratio"], rows, "llrrrr")
    return lines + _errors(sec.get("errors", {}), "batching")


def _profile(res: dict) -> list[str]:
    sec = res["sections"].get("profile")
    lines = []
    tp = res["sections"].get("throughput", {})
    cpu_rows = []
    for cfg in tp.get("configs", []):
        v = _get(cfg["results"], KAFKAD, "daemon_cpu_median")
        if v is not None:
            cpu_rows.append([str(cfg["workers"]), f"{cfg['size']} B", str(cfg["per_call"]), f"{v:.2f}"])
    if not sec and not cpu_rows:
        return []
    lines += ["## Daemon cost", ""]
    if cpu_rows:
        lines += ["CPU seconds (user + system, from /proc) the daemon spent per million messages "
                  "during the throughput trials:", ""]
        lines += _table(["Workers", "Size", "Msgs/call", "CPU s per 1M msgs"], cpu_rows, "rrrr")
    if not sec:
        return lines
    if "unavailable" in sec:
        return lines + [f"Profile not taken: {sec['unavailable']}", ""]
    lines += [f"Profile ({sec['tool']}) of the daemon under 4 workers sending 100-byte messages: "
              f"{_num(sec.get('messages'), '{:,d}')} messages, "
              f"{_num(sec.get('cpu_s_per_million'), '{:.2f}')} CPU s per million. Top functions by "
              f"own time; the full profile is `{sec.get('file', '')}` next to this report.", ""]
    rows = [[f"`{t['function']}`", f"{t['own_pct']:.1f}%", f"{t['incl_pct']:.1f}%"] for t in sec.get("top", [])]
    lines += _table(["Function", "Own", "Inclusive"], rows, "lrr")
    return lines + _errors(sec.get("errors", {}), "profile")


_ROLE_ORDER = ("worker main threads", "shim I/O thread", "worker ZeroMQ I/O", "librdkafka threads",
               "worker other threads", "feeders", "daemon main thread", "daemon ZeroMQ I/O",
               "daemon other threads", "Tansu")


def _role_key(role: str) -> tuple:
    return (_ROLE_ORDER.index(role) if role in _ROLE_ORDER else len(_ROLE_ORDER), role)


def _capacity(res: dict) -> list[str]:
    sec = res["sections"].get("capacity")
    if not sec:
        return []
    lines = ["## Where throughput is bound", ""]
    if "unavailable" in sec:
        return lines + [f"Not measured: {sec['unavailable']}", ""]
    p = sec["params"]
    cfgs = sec["configs"]

    def pct(v) -> str:
        return "n/a" if v is None else f"{v * 100:.0f}%"

    lines += [f"100-byte messages, {p['duration']:g} s per trial, medians of the trials. CPU per "
              "thread from /proc/<pid>/task/<tid>/schedstat between the common start and the last "
              "acknowledgement; \"waiting\" is the time a thread was runnable but had no core; "
              "\"by others\" is /proc/stat's busy time not spent by the threads measured (the "
              "runner, the kernel, other users of a shared machine); a trial where that was under "
              f"{sec.get('quiet_cores', 0.1):g} core is \"quiet\".", ""]
    rows = []
    for c in (c for c in cfgs if c["part"] == "a" and c.get("median")):
        u, w, q = c["cores_used"], c["runqueue_wait"], c.get("quiet", {})
        senders = (f"{c['name'][len('feeders x'):].split(',')[0]} feeder(s)"
                   if c["name"].startswith("feeders") else f"{p['workers']} shim workers")
        senders += f", {c['per_call']}/call"
        quiet = (f"{_num(q.get('median'))} ({q['n']}; {pct(q.get('daemon_main_busy'))} + "
                 f"{pct(q.get('daemon_main_wait'))})" if q.get("n") else "none")
        rows.append([senders, _num(c["median"]) + _spread(c.get("rates"), c["median"]),
                     pct(u.get("daemon main thread")), pct(w.get("daemon main thread")),
                     _num(c["us_per_msg"].get("daemon main thread"), "{:.2f}"),
                     pct(u.get("Tansu")), _num(c["machine_busy_cores"], "{:.2f}"),
                     _num(c["rest_cores"], "{:.2f}"), quiet])
    if rows:
        lines += ["**The daemon's capacity.** Feeders write `SEND_GROUPS` frames of "
                  f"{p['feed_entries']:,} one-message entries on a bare DEALER (at most "
                  f"{p['feed_window']:,} unacknowledged each; with 10 per call, a tenth as many "
                  "entries of 10), costing the daemon exactly its real work and the cores almost "
                  "nothing; the shim at 10 messages per call for comparison.", ""]
        lines += _table(["Senders", "msg/s acknowledged", "Daemon main thread busy", "... waiting",
                         "Daemon main us/msg", "Tansu busy", "Machine busy (cores)", "... by others",
                         "Quiet trials: msg/s (n; main busy + waiting)"], rows, "lrrrrrrrr")
    b = [c for c in cfgs if c["part"] == "b" and c.get("median")]
    if b:
        roles = sorted({r for c in b for r in c["us_per_msg"]}, key=_role_key)
        rows = [[r] + [f"{c['us_per_msg'][r]:.2f} ({c['cores_used'][r]:.2f}; {c['runqueue_wait'][r]:.2f})"
                       if r in c["us_per_msg"] else "" for c in b] for r in roles]
        rows.append(["**all measured threads**"] + [f"**{c['us_per_msg_total']:.2f}**" for c in b])
        rows.append(["cores busy with other work"] + [f"{c['rest_cores']:.2f}" for c in b])
        rows.append(["msg/s acknowledged"] + [_num(c["median"]) for c in b])
        lines += [f"**CPU per message, end to end** ({p['workers']} workers, 1 message per call, all "
                  f"{sec['cores']} cores): us per acknowledged message (cores busy; cores' worth of "
                  "threads waiting for a core).", ""]
        lines += _table(["Thread"] + [c["contender"] for c in b], rows, "l" + "r" * len(b))
    rows = []
    for contender in (KAFKAD, CONFLUENT):
        one = next((c for c in cfgs if c["part"] == "c" and c["contender"] == contender), None)
        full = next((c for c in cfgs if c["part"] == "b" and c["contender"] == contender), None)
        if one and full:
            q1, qa = one.get("quiet", {}), full.get("quiet", {})
            rows.append([contender, _num(one.get("median")), _num(full.get("median")),
                         _ratio(full.get("median"), one.get("median")),
                         f"{one['rest_cores']:.2f} / {full['rest_cores']:.2f}",
                         f"{_num(q1.get('median'))} / {_num(qa.get('median'))}: "
                         f"{_ratio(qa.get('median'), q1.get('median'))} ({q1.get('n', 0)} / {qa.get('n', 0)})"])
    if rows:
        lines += [f"**Cores.** The same trials with every thread of the workers, the daemon and "
                  f"Tansu pinned to core {sec['one_core']}, against all {sec['cores']} cores "
                  "(msg/s acknowledged):", ""]
        lines += _table(["Client", "1 core", f"{sec['cores']} cores", "Gain",
                         "Cores busy with other work (1 / all)", "Quiet trials only (n)"], rows)
    elif sec.get("pinning") != "ok":
        lines += [f"1 core vs all: not measured ({sec.get('pinning')}).", ""]
    return lines + _errors(sec.get("errors", {}), "capacity")


def _external(res: dict) -> list[str]:
    sec = res["sections"].get("external")
    if not sec:
        return []
    lines = ["## Component benchmarks", ""]
    for name, e in sec.items():
        lines += [f"### {name}", ""]
        if e["status"] != "ok":
            lines += [f"Not available ({e['status']}): {e.get('detail', '')}", ""]
            if e.get("stderr"):
                lines += ["```", e["stderr"], "```", ""]
        text = (e.get("stdout") or "").strip()
        if text:
            if all(l.startswith(("|", "#", "-", "*")) or not l.strip() for l in text.splitlines()) \
                    and any(l.startswith("|") for l in text.splitlines()):
                lines += [text, ""]
            else:
                lines += ["```", text, "```", ""]
    return lines


def _problems(res: dict) -> list[str]:
    errs = res.get("section_errors", {})
    if not errs:
        return []
    return ["## Sections that failed", ""] + [f"- {k}: {v}" for k, v in errs.items()] + [""]


# --------------------------------------------------------------------------
# charts


def _charts(res: dict, out: str) -> tuple[list[str], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [], f"charts not drawn: matplotlib is not installed ({exc}); `pip install -e .[bench]`"
    made = []
    tp = res["sections"].get("throughput")
    if tp and tp.get("configs"):
        made += _chart_throughput(plt, tp, os.path.join(out, "throughput.png"))
    lat = res["sections"].get("latency")
    if lat and lat.get("rows"):
        made += _chart_latency(plt, lat, os.path.join(out, "latency.png"))
    return made, ""


def _plain_ticks():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:g}")


def _chart_throughput(plt, tp: dict, path: str) -> list[str]:
    panels = sorted({(c["size"], c["per_call"]) for c in tp["configs"]})
    workers = sorted({c["workers"] for c in tp["configs"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False, sharey=True)
    present = [c for c in CONTENDERS if any(c in cfg["results"] for cfg in tp["configs"])]
    width = 0.8 / max(len(present), 1)
    for ax, (size, per_call) in zip(axes[0], panels):
        for i, contender in enumerate(present):
            ys = []
            for w in workers:
                cfg = next((c for c in tp["configs"] if (c["workers"], c["size"], c["per_call"]) ==
                            (w, size, per_call)), None)
                ys.append((_get(cfg["results"], contender, "median") or 0) if cfg else 0)
            xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(workers))]
            bars = ax.bar(xs, [y / 1000 for y in ys], width, label=contender, color=COLORS[contender])
            ax.bar_label(bars, labels=[f"{y / 1000:.0f}" if y else "" for y in ys], fontsize=7)
        ax.set_xticks(range(len(workers)), [f"{w} worker{'s' if w > 1 else ''}" for w in workers])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_ticks())
        ax.set_title(f"{size} B, {per_call} per call")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("thousand messages/s acknowledged (log)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Aggregate async throughput (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [os.path.basename(path)]


def _chart_latency(plt, lat: dict, path: str) -> list[str]:
    workers = sorted({r["workers"] for r in lat["rows"]})
    fig, axes = plt.subplots(1, len(workers), figsize=(5 * len(workers), 4), squeeze=False)
    quants = ("p50", "p99", "p999")
    present = [c for c in CONTENDERS if any(r["contender"] == c for r in lat["rows"])]
    width = 0.8 / max(len(present), 1)
    for ax, w in zip(axes[0], workers):
        for i, contender in enumerate(present):
            row = next((r for r in lat["rows"] if r["workers"] == w and r["contender"] == contender), None)
            ys = [(row[q] or 0) / 1000 if row else 0 for q in quants]
            xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(quants))]
            bars = ax.bar(xs, ys, width, label=contender, color=COLORS[contender])
            ax.bar_label(bars, labels=[f"{y:.2g}" if y else "" for y in ys], fontsize=7)
        ax.set_xticks(range(len(quants)), ["p50", "p99", "p99.9"])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_ticks())
        ax.set_ylabel("ms (log)")
        ax.set_title(f"{w} concurrent worker{'s' if w > 1 else ''}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Sync send latency (median of repetitions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [os.path.basename(path)]


# --------------------------------------------------------------------------


def render(res: dict, charts: list[str], chart_note: str = "") -> str:
    m = res["machine"]
    lines = ["# kafkad benchmark report", "",
             f"Measured {m['date_utc']} on {m['cpu']} ({m['cores']} cores, {m['ram_gib']} GiB), "
             f"Python {m['python']}, against a local Tansu broker (memory storage) on the same machine. "
             "The three contenders ran in the same run, interleaved trial by trial. "
             "See docs/performance.md for the method.", ""]
    if res.get("quick"):
        lines += ["> Quick run (`--quick`): short trials and fewer configurations; indicative only.", ""]
    if chart_note:
        lines += [f"> {chart_note}", ""]
    lines += _targets(res)
    lines += _throughput(res, charts)
    lines += _latency(res, charts)
    lines += _caller_cost(res)
    lines += _footprint(res)
    lines += _batching(res)
    lines += _profile(res)
    lines += _capacity(res)
    lines += _external(res)
    lines += _problems(res)
    lines += _machine(res)
    return "\n".join(lines).rstrip() + "\n"


def render_summary(res: dict) -> str:
    """The few lines meant for the README: machine, targets, the 4-worker throughput rows."""
    m = res["machine"]
    lines = [f"Measured {m['date_utc']} on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
             f"Python {m['python']} (`make bench`{', quick run' if res.get('quick') else ''}; "
             "method: docs/performance.md).", ""]
    lines += _targets(res)[2:]
    tp = res["sections"].get("throughput")
    if tp:
        rows = []
        for cfg in tp["configs"]:
            if cfg["workers"] != 4:
                continue
            med = {c: _get(cfg["results"], c, "median") for c in CONTENDERS}
            rows.append([f"{cfg['size']} B", str(cfg["per_call"])] + [_num(med[c]) for c in CONTENDERS])
        if rows:
            lines += ["Aggregate async throughput with 4 worker processes (messages/s acknowledged, median):", ""]
            lines += _table(["Size", "Msgs/call"] + list(CONTENDERS), rows, "rrrrr")
    return "\n".join(lines).rstrip() + "\n"


def write(res: dict, out: str) -> list[str]:
    """Write report.md, summary.md (for the README) and the charts into `out`; the paths written."""
    charts, note = _charts(res, out)
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write(render(res, charts, note))
    summary = os.path.join(out, "summary.md")
    with open(summary, "w") as f:
        f.write(render_summary(res))
    return [path, summary] + [os.path.join(out, c) for c in charts]


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "bench-report"
    with open(os.path.join(folder, "results.json")) as fh:
        print("\n".join(write(json.load(fh), folder)))
