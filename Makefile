# The README's two commands: `make run` (the main job) and `make test` (everything CI runs).
# Each sets up its own virtual environment with the pinned dependencies on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run train test lint venv clean

venv: $(STAMP)

# torch is installed on its own first, pinned exactly: the CPU wheel that matches the range in
# pyproject.toml (an unpinned resolve could pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,datasets,gp,mlflow,tensorboard,wandb]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/progtune search $(ARGS)

train: $(STAMP)
	$(BIN)/progtune train $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Fast and slow (end-to-end, fault) tests together. pytest's exit code 5 means no tests ran.
# tests/test_report_browser.py needs Debian's chromium: installed here when missing and apt-get
# can (root); otherwise that test is skipped and says why.
test: $(STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -qq chromium >/dev/null 2>&1 \
	      || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1)) ; } \
	  || echo "chromium not installed: tests/test_report_browser.py will be skipped"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

clean:
	rm -rf $(VENV) runs
