# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chatsmith-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
OUT ?= runs/demo

.PHONY: setup demo test test-quick bench clean

$(STAMP): pyproject.toml requirements/tested.txt requirements/test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -c requirements/tested.txt -e . -r requirements/test.txt
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --out $(OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout 900 tests

test-quick: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: setup
	$(PY) tests/bench/run_all.py

clean:
	rm -rf runs .pytest_cache
