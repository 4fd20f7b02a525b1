# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)
	scripts/system-packages.sh

test: install
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python example_project/demo.py

bench: $(STAMP)
	$(BIN)/python bench/checkpoints.py
	$(BIN)/python bench/runners_floor.py
	$(BIN)/python bench/ingest_scale.py
	$(BIN)/python bench/commit.py
	$(BIN)/python bench/hooks.py
	$(BIN)/python bench/projects.py
	$(BIN)/python bench/project_variants.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/store_growth.py

clean:
	rm -rf $(VENV) .osaa .pytest_cache .demo
