# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs gs-tune, runs the default search (cosine_l2.yaml on digits)
#   make test   creates .venv, installs gs-tune with test tools, runs the test suite
# torch is installed first and pinned, so pip never swaps in another build;
# GPU users pick theirs: make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,bench,dashboard]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/gs-tune launch --space cosine_l2.yaml

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check gs_tune tests benchmarks

bench: install
	$(BIN)/python benchmarks/meta_gradient_cost.py
	$(BIN)/python benchmarks/hvp_accuracy.py
	$(BIN)/python benchmarks/search_overhead.py

# Re-resolve every dependency to its newest release and rewrite constraints.txt (then run make test).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet $(TORCH_SPEC)
	.venv-lock/bin/pip install --quiet -e ".[dev,bench,dashboard]"
	{ sed -n '1,/^# and commit this file/p' constraints.txt; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v -e '^torch==' -e '^gs-tune'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) *.egg-info
