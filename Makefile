# fmprog developer commands. Everything installs into a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test bench check-examples demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/executor_overhead.py

check-examples: install
	@for f in examples/programs/*.py; do echo "== $$f"; $(BIN)/fmprog program check $$f || exit 1; done

demo: check-examples
	@echo "The serving demo (Ray Serve backends, router, policy, feedback) is not built yet:"
	@echo "it needs the backend services (issue 3) and the router and policy services (issue 4)."
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
