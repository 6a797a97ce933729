# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# GUI tests need a real GL context: run them under xvfb-run when it is there.
XVFB := $(shell command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a -s '-screen 0 1280x1024x24'")

.PHONY: demo test test-fast test-slow test-gui-lowest lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision first, pinned: pip takes them from the local disk.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[gui,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geodetect demo --out demo_out

test: $(STAMP)
	$(XVFB) $(BIN)/python -m pytest -q -p no:cacheprovider --timeout 2400

test-fast: $(STAMP)
	$(XVFB) $(BIN)/python -m pytest -q -x -m "not slow and not gui"

test-slow: $(STAMP)
	$(XVFB) $(BIN)/python -m pytest -q -m slow

# The GUI tests again on the lowest napari the `gui` extra allows (the main venv has the
# highest): a second venv, GUI tests only.
LOWEST_NAPARI := 0.9.0
LOW := .venv-napari-lowest
$(LOW)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOW)
	$(LOW)/bin/python -m pip install -q --upgrade pip
	$(LOW)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(LOW)/bin/python -m pip install -q -e '.[gui,dev]' 'napari==$(LOWEST_NAPARI)'
	touch $@

test-gui-lowest: $(LOW)/.installed
	$(XVFB) $(LOW)/bin/python -m pytest -q -p no:cacheprovider -m gui tests/test_plugin_*.py

lint: $(STAMP)
	$(BIN)/ruff check geodetect tests benchmarks notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf $(VENV) $(LOW) demo_out .pytest_cache
