# Quick start: `make demo` (set up, train on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml package-lock.json | sha1sum | cut -c1-12)
RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install browser demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# the package itself (console scripts), and the JAX and PyTorch backends for the tests
	$(PY) -m pip install --quiet --no-build-isolation -e ".[jax,torch]"
	# the review page's viewer (NiiVue), pinned in package-lock.json, into node_modules/
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# panoptica (the lesion-wise reference the tests compare with) needs numpy < 2.3: own venv
PANOPTICA := .venv-panoptica/.installed-$(shell sha1sum requirements-panoptica.txt | cut -c1-12)
$(PANOPTICA): requirements-panoptica.txt
	test -x .venv-panoptica/bin/python || $(PYTHON) -m venv .venv-panoptica
	.venv-panoptica/bin/python -m pip install --quiet -r requirements-panoptica.txt
	rm -f .venv-panoptica/.installed-*
	touch $(PANOPTICA)

demo: $(STAMP)
	$(PY) train.py --config configs/demo.yaml --out $(RUN)

lint: $(STAMP)
	$(PY) -m ruff check .

# Debian's Chromium, for the review page's browser tests (root, or sudo)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

test: lint browser $(PANOPTICA)
	$(PY) -m pytest

# unit tests only: no training, no real-data inference (under 2 minutes)
test-fast: lint
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) bench/bench_training.py

clean:
	rm -rf .pytest_cache .ruff_cache
