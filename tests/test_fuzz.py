"""Fuzzing that stays: the equation parser and the model-file loader under random and
mutated input (tests/strategies.py, checked by tests/fuzz/targets.py).

In the suite: a seeded few hundred cases of each, the corpus of every failing case found
so far (tests/fuzz_corpus/), and the faults found, one test each. ``make fuzz`` runs
100,000 cases (tests/fuzz/run.py).
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fuzz import targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import cell_cases, file_cases, random_cells

import rnn
from engine import CellError
from rnn import Cell, Model, ModelFileError
from rnn.io import files

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "fuzz_corpus"
SEEDED = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- seeded fuzzing
@SEEDED
@given(cell_cases())
def test_parser_raises_only_cell_errors_and_what_it_accepts_runs(case):
    # the reference executor only: the compiled one would compile every new cell (a
    # second or more each); the run below checks it, with Numba's JIT off
    targets.check_cell(case, executors=("reference",))


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return targets.base_files(tmp_path_factory.mktemp("bases"))


def test_loader_raises_only_model_file_errors(bases, tmp_path):
    @SEEDED
    @given(file_cases(targets.base_cell_texts()))
    def check(case):
        targets.check_file(targets.build_file(case, bases), tmp_path / "case.unroll")

    check()


def test_a_seeded_run_of_both_targets_finds_nothing():
    """tests/fuzz/run.py as make fuzz runs it, small: the executors agree on the cells
    accepted (the compiled one with Numba's JIT off: the same generated code)."""
    out = subprocess.run([sys.executable, str(HERE / "fuzz" / "run.py"), "--cells", "300",
                          "--files", "300", "--seed", "0", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cells: 300 cases" in out.stdout and "files: 300 cases" in out.stdout
    assert "0 distinct faults" in out.stdout


def test_random_cells_are_mostly_accepted():
    # the generator is worth its name only if most of what it makes is a valid cell;
    # a refusal must still be a CellError
    refused = []

    @settings(max_examples=40, derandomize=True, deadline=None, database=None)
    @given(random_cells())
    def check(case):
        try:
            Cell.from_equations(case["text"], inputs=case["inputs"], states=case["states"],
                                sizes=case["sizes"])
        except CellError as e:
            refused.append(str(e))

    check()
    assert len(refused) <= 12, refused


# ---------------------------------------------------------------- the corpus
def _corpus(kind):
    params = []
    for path in sorted(CORPUS.glob(f"{kind}-*")):
        if path.suffix not in (".json", ".unroll"):
            continue
        marks = ()
        if path.suffix == ".json":
            xfail = json.loads(path.read_text()).get("xfail")
            if xfail:
                marks = pytest.mark.xfail(strict=True, raises=targets.Fault, reason=xfail)
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", _corpus("cell"))
def test_cell_corpus(path, tmp_path):
    """Every cell case that once broke a promise: it now keeps them all, on both
    executors (JIT on), and its model saves and loads."""
    case = json.loads(path.read_text())
    got = targets.check_cell(case, folder=tmp_path)
    if "expect" in case:
        assert got == case["expect"], case["found"]


@pytest.mark.parametrize("path", _corpus("file"))
def test_file_corpus(path, tmp_path):
    """Every model file that once made Model.load raise something else, allocate
    gigabytes or hang: now a ModelFileError, quickly."""
    t = time.perf_counter()
    assert targets.check_file(path.read_bytes(), tmp_path / "case.unroll") == "refused"
    assert time.perf_counter() - t < 10


def test_corpus_is_there():
    assert len(_corpus("cell")) >= 4 and len(_corpus("file")) >= 20


# ---------------------------------------------------------------- faults found, one by one
def _cell(text, **kw):
    return Cell.from_equations(text, inputs=kw.pop("inputs", {"x": 2}), **kw)


def test_sigmoid_of_a_very_negative_literal_folds_to_zero():
    # "sigmoid(-1000.0) has no finite value" before: 1 / (1 + exp(1000)) overflowed
    for text, value in [("sigmoid(-1000.0)", 0.0), ("sigmoid(1000.0)", 1.0),
                        ("sigmoid(-1e308)", 0.0), ("softplus(-1000.0)", 0.0),
                        ("softplus(1000.0)", 1000.0), ("exp(-1000.0)", 0.0),
                        ("tanh(-1e308)", -1.0), ("sigmoid(0.0)", 0.5)]:
        cell = _cell(f"h = x * {text}")
        (node,) = cell.nodes
        assert node.args[1] == value, text
    with pytest.raises(CellError, match=r"exp\(1000.0\) has no finite value"):
        _cell("h = x * exp(1000.0)")


def test_an_integer_of_too_many_digits_is_named_at_its_column():
    # column 0, outside the line, and "use sys.set_int_max_str_digits()" before
    with pytest.raises(CellError, match="has 5000 digits, more than the 4,300") as e:
        _cell("h = x\ny = h * " + "1" * 5000)
    assert (e.value.line, e.value.col) == (2, 9)
    assert "set_int_max_str_digits" not in str(e.value)


def test_equations_with_parameters_parse_in_linear_time():
    # 25,000 equations with a parameter each took 31 s: a list searched per variable
    n = 20000
    lines = ["a0 = tanh(W0 @ x)"] + [f"a{i} = tanh(a{i - 1} * b{i})" for i in range(1, n)]
    t = time.perf_counter()
    cell = _cell("\n".join(lines + [f"h = tanh(U @ h[t-1] + a{n - 1})"]),
                 sizes={"a0": 2, "h": 2})
    assert len(cell.params) == n + 1 and time.perf_counter() - t < 15


def test_a_scalar_parameter_survives_save_and_load(tmp_path):
    # np.ascontiguousarray made shape () into (1,): the file did not load back
    cell = _cell("h = tanh(W @ x + U @ h[t-1]) + alpha * sum(h[t-1])", states={"h": 3})
    m = Model(cell, seed=0)
    back = Model.load(m.save(tmp_path / "m.unroll"))
    assert back.params["alpha_l0"].shape == ()
    xs = np.random.default_rng(0).standard_normal((2, 3, 2))
    np.testing.assert_array_equal(back.forward(xs, executor="reference")[0],
                                  m.forward(xs, executor="reference")[0])


def test_softplus_of_a_parameter_runs_on_both_executors():
    # the compiled executor's sweep handed softplus's VJP kernel b (H,) beside g (B*T, H):
    # 'cannot reshape array of size H into shape (B*T,H)'; the reference ran it
    case = {"text": "h = tanh(W @ x + U @ h[t-1] + softplus(b))", "inputs": {"x": 2},
            "states": {"h": 3}, "sizes": {}}
    assert targets.check_cell(case) == "agreed"


def test_a_dead_state_that_overflows_gives_zero_gradients_on_both_executors():
    # a state the loss does not read (c) overflows to inf: the reference gives dL/dU = 0,
    # the compiled backward loop gave 0 * inf = NaN (it now skips what reaches no output)
    case = {"text": "c = c[t-1] + tanh(sigmoid(U @ h[t-1]) ** -1000)\nh = W @ x",
            "inputs": {"x": 2}, "states": {"h": 2, "c": 2}, "sizes": {}}
    assert targets.check_cell(case) == "agreed"


# ---------------------------------------------------------------- the loader, by hand
def _saved(tmp_path, **kw):
    m = Model(rnn.cells.elman(3, 4), seed=1, **kw)
    return m, m.save(tmp_path / "m.unroll")


def _rewrite(path, tensors=None, rehash=False, **spec_changes):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    tensors = load_file(str(path)) if tensors is None else tensors
    spec = json.loads(meta["spec"])
    spec.update(spec_changes)
    meta["spec"] = json.dumps(spec)
    if rehash:
        meta["sha256"] = files._digest(tensors)
    save_file(tensors, str(path), metadata=meta)
    return path


def _refused(path, match):
    with pytest.raises(ModelFileError, match=match):
        Model.load(path)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "complex64"])
def test_arrays_of_another_dtype_are_a_model_file_error(tmp_path, dtype):
    # DTypeError (a TypeError) escaped when the checksum was recomputed
    m, path = _saved(tmp_path)
    _rewrite(path, {k: np.asarray(v).astype(dtype) for k, v in m.params.items()}, rehash=True)
    _refused(path, f"is {dtype} but the model is float64")


def test_deep_json_is_a_model_file_error(tmp_path):
    # RecursionError escaped, from the header and from the spec
    _, path = _saved(tmp_path)
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path),
              metadata={**meta, "spec": "[" * 100000 + "]" * 100000})
    _refused(path, "RecursionError")
    head = b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"
    path.write_bytes(len(head).to_bytes(8, "little") + head)
    _refused(path, "not a model file")


@pytest.mark.parametrize("change, match", [
    ({"states": {"h": 30000}}, "900,150,000 parameter values"),  # allocated 7 GB in 29 s
    ({"states": {"h": 10 ** 10}}, "parameter values"),  # MemoryError
    ({"head": 10 ** 9}, "parameter values"),
    ({"layers": 100000}, "layers must be an int from 1 to 1024"),  # did not end
    ({"layers": 3}, "3 layers of a cell with 4 parameters need 12 arrays"),
    ({"layers": True}, "layers must be an int"),
    ({"dtype": "f16"}, "dtype must be one of"),  # a longdouble model
    ({"learn_initial": "h"}, "learn_initial must be a list"),
])
def test_a_description_bigger_than_the_file_is_refused_before_allocating(tmp_path, change,
                                                                         match):
    _, path = _saved(tmp_path)
    _rewrite(path, **change)
    t = time.perf_counter()
    _refused(path, match)
    assert time.perf_counter() - t < 5


@pytest.mark.parametrize("dtype, shape, nbytes", [
    ("BF16", [4], 8), ("F8_E4M3", [4], 4), ("F8_E5M2", [4], 4), ("F64", [1] * 100, 8)])
def test_arrays_numpy_cannot_hold_are_a_model_file_error(tmp_path, dtype, shape, nbytes):
    # found by make fuzz: TypeError "data type 'bfloat16' not understood" and ValueError
    # "maximum supported dimension for an ndarray is currently 64" from get_tensor
    head = json.dumps({"__metadata__": {"format": "unroll.model", "version": "1"},
                       "w": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}})
    path = tmp_path / "w.unroll"
    path.write_bytes(len(head).to_bytes(8, "little") + head.encode() + b"\0" * nbytes)
    # numpy reads BF16 and F8 once ml_dtypes is imported (Keras or JAX in the same
    # process): then the file is refused further on (it has no checksum)
    _refused(path, "array 'w' cannot be read" if dtype == "F64" or "ml_dtypes" not in
             sys.modules else "array 'w' cannot be read|checksum")


def test_a_cell_text_past_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_CELL_TEXT", 20)
    _, path = _saved(tmp_path)
    _refused(path, "characters, more than the 20")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.unroll"
    os.mkfifo(fifo)
    result = []
    t = threading.Thread(target=lambda: result.append(_try_load(fifo)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("Model.load of a FIFO blocked")
    assert "not a regular file" in result[0]


def _try_load(path):
    try:
        Model.load(path)
    except ModelFileError as e:
        return str(e)
    return "loaded"


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_are_refused(tmp_path, seed):
    data = np.random.default_rng(seed).bytes(64 + 997 * seed)
    assert targets.check_file(data, tmp_path / "r.unroll") == "refused"
    assert targets.check_file(b"\x10\0\0\0\0\0\0\0" + data, tmp_path / "r.unroll") == "refused"


@given(st.binary(max_size=64))
@settings(max_examples=50, derandomize=True, deadline=None, database=None)
def test_short_files_are_refused(data):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        assert targets.check_file(data, Path(d) / "s.unroll") == "refused"
