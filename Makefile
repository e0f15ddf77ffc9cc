# Every target works as the first command on a fresh clone: `venv` comes first where needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint bench bench-http bench-ssh bench-pg clean distclean

venv: $(STAMP)

# Reinstall whenever pyproject.toml changes (its dependencies, its entry points).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/tether serve --config examples/tether.yaml

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src
	$(BIN)/mypy --strict bench  # benchmarks run rarely: a changed signature must not rot them

# Lint is part of the tests: a change that does not lint does not pass.
test: lint
	$(BIN)/pytest

bench: venv
	$(BIN)/python bench/policy_decision.py

# The HTTP broker against nginx and a bare forwarder (needs wrk and nginx: bench/README.md).
bench-http: venv
	$(BIN)/python bench/http_proxy.py

# The SSH/SFTP broker against direct OpenSSH (bench/README.md).
bench-ssh: venv
	$(BIN)/python bench/ssh_proxy.py

# The PostgreSQL broker against direct connections and pgbouncer (bench/README.md).
bench-pg: venv
	$(BIN)/python bench/pg_proxy.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .tether
