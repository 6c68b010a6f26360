# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: the CPU wheel on this machine's disk. Nothing else may pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: run test bench reliability install clean postgres-server chromium

# constraints.txt pins every other package (regenerate: pip freeze --exclude-editable, less torch).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet setuptools==80.9.0
	$(BIN)/pip install --quiet --no-build-isolation -c constraints.txt -e '.[test]'
	@$(BIN)/python -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch was installed'; print('torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/gpuroam demo

# The store tests run against a real PostgreSQL server: install its binaries where missing (Debian, as root).
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

# The dashboard's browser tests drive Debian's chromium through Playwright (never `playwright install`):
# install it where missing (Debian, as root).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Lint, types (mypy strict on src/), the layers (import-linter's contracts in pyproject.toml), then the tests.
test: $(STAMP) postgres-server chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/worker.py

# Every fault scenario under load (network namespaces where this machine allows them), the
# fuzzers at length, the security checks: figures in bench/RELIABILITY.md. About 15 minutes.
reliability: $(STAMP) postgres-server chromium
	$(BIN)/python bench/reliability.py --markdown bench/RELIABILITY.md --json bench/results/reliability.json

clean:
	rm -rf $(VENV) .pytest_cache
