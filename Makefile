# The README's two commands: `make quick` (the demo suite on CPU, ending in a report) and `make test`.
# Both create .venv from requirements.lock when it is missing or stale.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
LOCK   := requirements.lock
STAMP  := $(VENV)/.servingbench-$(shell sha256sum $(LOCK) pyproject.toml | sha256sum | cut -c1-16)
SB     := $(VENV)/bin/servingbench

.PHONY: env quick features test test-fast clean-results crosscheck
.DELETE_ON_ERROR:

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# pip (not uv/poetry) so torch==2.13.0 resolves to the local CPU wheel where one is provided.
	$(VENV)/bin/python -m pip install -q -r $(LOCK)
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	@rm -f $(VENV)/.servingbench-*; touch $@

env: $(STAMP)

quick: env
	$(SB) run scenarios/quick.yaml --report

features: env
	$(SB) run scenarios/features.yaml --report

crosscheck: env
	scripts/ensure_wrk.sh >/dev/null
	$(SB) crosscheck mosec -m mlp -c 32

test: env
	# The report's browser test needs Chromium: install it here, so a missing install step fails at once.
	scripts/ensure_chromium.sh >/dev/null
	# The compose tests (tests/unit/test_containers.py) run a real compose client's `config`: install one likewise.
	scripts/ensure_compose.sh >/dev/null
	# The crosscheck tests drive wrk, an independent C client: install it likewise.
	scripts/ensure_wrk.sh >/dev/null
	$(VENV)/bin/python -m pytest

test-fast: env
	$(VENV)/bin/python -m pytest -m "not server"
