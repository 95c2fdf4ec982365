# The two commands README promises: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test test-fast bench lock clean-venv

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev]'
	# sample-factory 2.1.1 pins gymnasium<1.0; its runtime needs are in pyproject.toml.
	$(BIN)/pip install -q --no-deps sample-factory==2.1.1
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,bench]'
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lock: $(STAMP)
	( head -2 requirements/constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//' ) > requirements/constraints.tmp
	mv requirements/constraints.tmp requirements/constraints.txt

clean-venv:
	rm -rf $(VENV)
