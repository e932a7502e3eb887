# The two commands that do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# No machine here downloads weights; a hub lookup would hang ~45 s before failing.
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test install lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## The service on embedded defaults (SQLite, a broker with no server, the tiny offline model).
run: install
	$(BIN)/clearance db upgrade
	$(BIN)/clearance demo seed
	$(BIN)/clearance serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

## Lint, types, then the whole suite (PostgreSQL and Redis tests included; with CI=true they
## fail instead of skipping when a server is missing).
test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache *.egg-info
