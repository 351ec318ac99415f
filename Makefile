# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-nojit lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unroll demo

test: $(STAMP)
	$(VENV)/bin/ruff check engine rnn tools tests benchmarks examples
	$(PY) -m pytest -q

# the same engine and cell tests with Numba switched off (pure Python kernels)
test-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q tests/test_ops.py tests/test_ir.py tests/test_cells.py

lint: $(STAMP)
	$(VENV)/bin/ruff check engine rnn tools tests benchmarks examples

bench: $(STAMP)
	$(VENV)/bin/unroll bench

clean:
	rm -rf $(VENV) out .pytest_cache
