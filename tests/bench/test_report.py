"""The report's same-guarantee comparison and the daemon config it needs (tests/bench/report.py)."""

from __future__ import annotations

import tomllib

from tests.bench import report
from tests.bench.common import CONFLUENT, CONFLUENT_IDEM, KAFKAD, KAFKAD_PLAIN, KafkadDaemon


def _lat(**p50_us):
    names = {"kafkad": KAFKAD, "confluent": CONFLUENT, "plain": KAFKAD_PLAIN, "idem": CONFLUENT_IDEM}
    rows = [{"workers": 1, "contender": names[k], "p50": v, "p99": v, "p999": v, "samples": 10}
            for k, v in p50_us.items()]
    return {"sections": {"latency": {"rows": rows, "errors": {}}}, "reps": 3}


def test_each_kafkad_variant_is_set_against_the_peer_with_the_same_guarantee():
    lat = {(1, r["contender"]): r for r in _lat(kafkad=400, confluent=200, plain=380, idem=250)
           ["sections"]["latency"]["rows"]}
    assert report._same_guarantee(lat) == [(KAFKAD, CONFLUENT_IDEM, 1.6), (KAFKAD_PLAIN, CONFLUENT, 1.9)]


def test_the_targets_table_judges_the_same_guarantee_row_by_its_worse_ratio():
    rows = [line for line in report._targets(_lat(kafkad=400, confluent=190, plain=420, idem=250))
            if "same guarantee" in line]
    assert len(rows) == 1 and "1.60x / 2.21x" in rows[0] and "**not met**" in rows[0]
    # The default-against-default row keeps its own verdict.
    default = [line for line in report._targets(_lat(kafkad=400, confluent=190, plain=380, idem=250))
               if "Sync p50, 1 worker: kafkad" in line]
    assert "2.11x" in default[0] and "**not met**" in default[0]


def test_without_the_variants_there_is_no_same_guarantee_row():
    assert not [line for line in report._targets(_lat(kafkad=400, confluent=200)) if "same guarantee" in line]
    assert not [line for line in report._latency(_lat(kafkad=400, confluent=200), []) if "same guarantee" in line]


def test_the_plain_daemon_config_turns_idempotence_off_in_the_kafka_table(tmp_path):
    d = KafkadDaemon("127.0.0.1:9092", str(tmp_path), name="p", kafka_config="idempotence = false\n")
    cfg = tomllib.loads(d.config_text())
    assert cfg["kafka"] == {"bootstrap_servers": ["127.0.0.1:9092"], "idempotence": False}
