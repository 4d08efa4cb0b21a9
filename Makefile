# moa-local: the two commands of the README, and the steps they are made of.
#   make demo   an MoA answer from real local models (vLLM's CPU build)
#   make test   lint, types and the whole test suite, real engines included
# Downloads and built engines are cached under ~/.cache/moa-local (MOA_LOCAL_CACHE).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/cpu.yaml
PROMPT ?= What are some fun things to do in SF?
PYTEST_ARGS ?=

.PHONY: demo test install engine models test-tools lint unit clean

demo: install models
	@bash serving/demo.sh "$(CONFIG)" "$(PROMPT)"

test: install models test-tools lint
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> installing moa-local into $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench,eval]"
	@touch $@

engine:
	@$(PYTHON) serving/setup_engine.py

models: engine
	@$(PYTHON) serving/fetch_models.py

test-tools:
	@bash serving/install-test-tools.sh

lint: install
	$(BIN)/ruff check moa_local tests bench
	$(BIN)/mypy --strict moa_local

# The suite without the real engines: fast, for the edit-test loop.
unit: install
	$(BIN)/pytest -m "not engine" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
