# Every target sets up what it needs itself (Debian packages, virtualenv, pip).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bootstrapped
PYTEST := $(PY) -m pytest

.PHONY: run test reliability bench deps clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

deps: $(STAMP)

## make run: the daemon plus an embedded local broker (kafkad dev).
run: $(STAMP)
	$(VENV)/bin/kafkad dev

## make test: the whole suite (unit, integration against real brokers,
## short reliability runs). Under 10 minutes on 2 cores.
test: $(STAMP)
	$(PYTEST) -q -m "not slow" -p no:cacheprovider

## make reliability: the full-length soaks and fault runs.
reliability: $(STAMP)
	$(PYTEST) -q -m slow -p no:cacheprovider -s

## make bench: side-by-side benchmarks; report under bench-report/.
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]" 2>&1 | grep -v "is ignored" || true
	$(PY) -m tests.bench.run --out bench-report

clean:
	rm -rf $(VENV) bench-report .pytest_cache build *.egg-info
