# Quick start: `make demo` (set up, train on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py --config configs/demo.yaml --out $(RUN)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_training.py

clean:
	rm -rf .pytest_cache .ruff_cache
