# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-nojit lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unroll demo

test: $(STAMP)
	$(VENV)/bin/ruff check engine rnn tools tests benchmarks examples
	$(PY) -m pytest -q

# the suite again with Numba switched off (the kernels run as plain Python); the demo
# and the examples, which train on bigger arrays for minutes that way, are left out
test-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q --ignore tests/test_examples.py \
	  --deselect tests/test_tools.py::test_demo_writes_results_and_pictures

lint: $(STAMP)
	$(VENV)/bin/ruff check engine rnn tools tests benchmarks examples

bench: $(STAMP)
	$(VENV)/bin/unroll bench

# 100,000 generated cases against the equation parser and the model-file loader (about
# 20 minutes), then 200 cells with Numba's JIT on; faults' cases go to out/fuzz/
# (tests/fuzz/run.py --help; FUZZ_SEED=n for another seed)
FUZZ_SEED ?= 0
fuzz: $(STAMP)
	$(PY) tests/fuzz/run.py --cells 60000 --files 40000 --seed $(FUZZ_SEED) --save out/fuzz
	$(PY) tests/fuzz/run.py --cells 200 --files 0 --jit --seed $(FUZZ_SEED) --save out/fuzz-jit

clean:
	rm -rf $(VENV) out .pytest_cache
