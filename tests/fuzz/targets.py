"""What the fuzzers check, one case at a time (tests/test_fuzz.py, tests/fuzz/run.py).

``check_cell(case)``: the equation parser raises nothing but CellError, and a cell it
accepts runs: ``rnn.bptt`` on tiny random data gives the same loss and gradients to
1e-10 with the compiled and the reference executor (or both refuse it with the same
clear error). ``check_file(case)``: ``Model.load`` of a mutated model file raises nothing
but ModelFileError, allocates nothing big, runs no code, and a model it loads runs.

Each returns an outcome (a short word, counted by the runner) or raises ``Fault`` with
what went wrong; the case itself is plain data (JSON, or bytes), kept in
tests/fuzz_corpus/ when it finds a fault.
"""

from __future__ import annotations

import json
import math
import re
import resource
import struct
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

import rnn
from engine.errors import CellError, UnrollError
from rnn import Cell, Model, ModelFileError, cells

TOL = 1e-10  # SPEC section 4: the executors agree to 1e-10 in float64
BIG_RSS_MB = 1024  # a case that raises the peak memory above this much has allocated
WATCHED = {"exec", "os.system", "subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn",
           "os.fork", "pickle.find_class", "marshal.loads", "ctypes.dlopen"}


# Faults found in code this fuzzing does not own, each kept as an xfail(strict=True) test
# in tests/test_fuzz.py until it is fixed: a case that fails this way is counted as
# "known: <name>" (run.py --strict counts it as a fault). name -> (where, what starts with)
KNOWN: dict[str, tuple[str, str]] = {
    # "softplus-of-parameters": ("executors", r"compiled gave ValueError: cannot reshape "
    #                            r"array of size \d+ into shape"),  # fixed in ebf3c93
    # "nan-through-a-dead-state": ("executors", r"(state_)?grads\[[^]]*\]: non-finite "
    #                              r"values differ: \[nan"),  # fixed: dead nodes skipped
}


class Fault(Exception):
    """A case that broke a promise: where, and what happened."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")
        self.where, self.what = where, what

    def known(self) -> str | None:
        """The name of the known fault this is, if it is one."""
        for name, (where, what) in KNOWN.items():
            if self.where.startswith(where) and re.match(what, self.what):
                return name
        return None


def _describe(e: BaseException) -> str:
    """The exception and the innermost frame of ours that raised it."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "/rnn/" in f.filename or "/engine/" in f.filename]
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}{at}: {str(e)[:300]}"


# ---------------------------------------------------------------- code must not run
_watch = {"on": False, "seen": []}


def _audit(event, args):
    if not _watch["on"] or not (event in WATCHED or event.startswith(("os.exec", "os.spawn"))):
        return
    code = args[0] if event == "exec" and args else None
    if getattr(code, "co_name", "") == "<module>" and \
            getattr(code, "co_filename", "").endswith(".py"):
        return  # a module imported on first use (a lazy import), not text from a file
    if "networkx.utils.decorators.argmap" in getattr(code, "co_filename", ""):
        return  # networkx compiles its decorators on their first call
    _watch["seen"].append(event)


_hooked = False


def _no_code_runs():
    """An audit hook (once per process) that records exec, os.system, subprocess, pickle
    and the like while a parse or a load runs."""
    global _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True


class _Watching:
    def __enter__(self):
        _no_code_runs()
        _watch["on"], _watch["seen"] = True, []

    def __exit__(self, *exc):
        _watch["on"] = False
        if _watch["seen"] and exc[0] is None:
            raise Fault("code ran", f"audit events {sorted(set(_watch['seen']))}")


# ---------------------------------------------------------------- the parser
def parse(case: dict) -> Cell | None:
    """The cell of a case, or None when the parser refuses it with a CellError."""
    try:
        with _Watching():
            return Cell.from_equations(case["text"], inputs=case["inputs"],
                                       states=case["states"], sizes=case["sizes"])
    except CellError as e:
        _check_place(e, case["text"])
        return None
    except Fault:
        raise
    except Exception as e:  # noqa: BLE001 - anything else is the fault we look for
        raise Fault("parser", _describe(e)) from e


def _check_place(e: CellError, text: str) -> None:
    """A CellError's line and column, when it gives them, lie in the text (the column
    may point one past the end of the line: a missing bracket)."""
    if e.line is None:
        return
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ok = isinstance(e.line, int) and 1 <= e.line <= len(lines) + 1 and (
        e.col is None or isinstance(e.col, int) and 1 <= e.col <= max(
            len(lines[e.line - 1]) if e.line <= len(lines) else 0, 0) + 2)
    if not ok:
        raise Fault("CellError place", f"line {e.line}, column {e.col} is outside the text "
                                       f"({len(lines)} lines): {str(e)[:200]}")


def _views(cell: Cell, model: Model, folder: Path | None) -> None:
    """What a user does next with a cell: print it, look at its graph, unroll it, save
    its model and load it back (the equations travel in the file)."""
    try:
        str(cell)
        cell.graph.number_of_nodes()
        rnn.unroll(cell, steps=2)
    except Exception as e:  # noqa: BLE001
        raise Fault("views of an accepted cell", _describe(e)) from e
    if folder is None:
        return
    path = folder / "cell.unroll"
    try:
        back = Model.load(model.save(path))
    except Exception as e:  # noqa: BLE001
        raise Fault("save and load of an accepted cell", _describe(e)) from e
    if back.cell.text != cell.text or back.params.keys() != model.params.keys() or any(
            not np.array_equal(back.params[k], model.params[k]) for k in model.params):
        raise Fault("save and load of an accepted cell", "another model came back")


def check_cell(case: dict, executors=("compiled", "reference"), folder: Path | None = None
               ) -> str:
    """'rejected' (a CellError), 'agreed' (both executors ran and agree) or 'refused'
    (both raised the same clear error); a Fault otherwise. With a ``folder``, the model
    is also saved there and loaded back."""
    cell = parse(case)
    if cell is None:
        return "rejected"
    try:
        model = Model(cell, dtype="float64", seed=0)
    except (UnrollError, ValueError) as e:  # too big a model is a clear refusal
        if "MAX_PARAM_ELEMENTS" in str(e):
            return "refused"
        raise Fault("Model of an accepted cell", _describe(e)) from e
    except Exception as e:  # noqa: BLE001
        raise Fault("Model of an accepted cell", _describe(e)) from e
    _views(cell, model, folder)
    rng = np.random.default_rng(len(case["text"]))
    B, T = 2, 4
    xs = rng.standard_normal((B, T, model.input_size))
    variant = case.get("variant", "all")
    kw: dict = {}
    if variant == "last":
        kw["at"] = "last"
        targets = rng.standard_normal((B, model.output_size))
    else:
        targets = rng.standard_normal((B, T, model.output_size))
    if variant == "mask":
        kw["mask"] = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], float)
    if variant == "truncate":
        kw["truncate"] = 2
    got = {}
    for ex in executors:
        try:
            with np.errstate(all="ignore"):
                got[ex] = rnn.bptt(model, xs, targets, executor=ex, **kw)
        except (UnrollError, ValueError, TypeError) as e:
            got[ex] = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001
            raise Fault(f"bptt {ex} ({variant})", _describe(e)) from e
    if len(executors) < 2:
        return "refused" if isinstance(got[executors[0]], str) else "agreed"
    a, b = (got[ex] for ex in executors)
    if isinstance(a, str) or isinstance(b, str):
        if a == b:
            return "refused"
        show = [x if isinstance(x, str) else f"loss {x.loss!r}" for x in (a, b)]
        raise Fault(f"executors ({variant})", f"{executors[0]} gave {show[0][:200]}; "
                                              f"{executors[1]} gave {show[1][:200]}")
    for what, x, y in _pairs(a, b):
        bad = _disagree(x, y)
        if bad:
            raise Fault(f"executors ({variant})", f"{what}: {bad}")
    return "agreed"


def _pairs(a, b):
    yield "loss", np.asarray(a.loss), np.asarray(b.loss)
    for part in ("grads", "state_grads"):
        da, db = getattr(a, part), getattr(b, part)
        if da.keys() != db.keys():
            yield part, np.zeros(len(da)), np.zeros(len(db))
        for k in da:
            yield f"{part}[{k}]", np.asarray(da[k]), np.asarray(db.get(k))


def _disagree(x, y) -> str:
    """'' when x and y agree to TOL (relative to the larger of 1 and their scale) with
    NaN and inf in the same places, else what differs."""
    if x.shape != y.shape:
        return f"shapes {x.shape} and {y.shape}"
    fx, fy = np.isfinite(x), np.isfinite(y)
    if not (fx == fy).all() or not (np.isnan(x) == np.isnan(y)).all() or \
            not (x[~fx & ~np.isnan(x)] == y[~fy & ~np.isnan(y)]).all():
        return f"non-finite values differ: {x.ravel()[:4]} vs {y.ravel()[:4]}"
    if not fx.any():
        return ""
    scale = max(1.0, float(np.abs(x[fx]).max()))
    err = float(np.abs(x[fx] - y[fy]).max())
    return "" if err <= TOL * scale else f"differ by {err:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------- model files
BASE_MODELS = [  # (cell, Model keywords): the files mutations start from
    (lambda: cells.elman(3, 4), {}),
    (lambda: cells.lstm(2, 3), {"layers": 2, "head": 2}),
    (lambda: cells.gru(2, 2), {"dtype": "float32", "learn_initial": ("h",)}),
    (lambda: Cell.from_equations("p, q = split(Z @ concat(h[t-1], x), 2)\n"
                                 "h = tanh(p * sigmoid(q) + W @ x + b)",
                                 inputs={"x": 2}, states={"h": 3}), {"head": 1}),
]


def base_files(folder: Path) -> list[bytes]:
    """The bytes of each base model's file (deterministic: seeded weights)."""
    out = []
    for i, (make, kw) in enumerate(BASE_MODELS):
        path = Model(make(), seed=i, **kw).save(folder / f"base{i}.unroll")
        out.append(path.read_bytes())
    return out


def base_cell_texts() -> list[str]:
    return [make().text for make, _ in BASE_MODELS]


def _split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def build_file(case: dict, bases: list[bytes]) -> bytes:
    """The bytes of a model-file case (see tests/strategies.py file_cases)."""
    from safetensors.numpy import load, save

    from rnn.io.files import _digest

    if "random" in case:
        return case["random"]
    data = bases[case["base"]]
    if case["model"] or case["cell"] is not None:
        head, _ = _split(data)
        meta = dict(head["__metadata__"])
        tensors = dict(load(data))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NaN cast to int, complex to real: on purpose
            for op in case["model"]:
                _model_op(op, meta, tensors)
        if case["cell"] is not None:
            meta["cell"] = case["cell"]
        if case["rehash"]:
            meta["sha256"] = _digest(tensors)
        meta = {k: v for k, v in meta.items() if isinstance(v, str)}
        try:
            data = save(tensors, metadata=meta)
        except Exception:  # noqa: BLE001 - safetensors cannot write it: keep the base
            data = bases[case["base"]]
    for op in case["header"]:
        data = _header_op(op, data)
    for op in case["bytes"]:
        data = _byte_op(op, data)
    return data


def _model_op(op, meta: dict, tensors: dict) -> None:
    kind = op[0]
    names = sorted(tensors)
    k = names[op[1] % len(names)] if names and isinstance(op[1], int) else None
    if kind == "meta":
        if op[2] is None:
            meta.pop(op[1], None)
        else:
            meta[op[1]] = op[2]
    elif kind == "spec":
        try:
            spec = json.loads(meta.get("spec", "{}"))
        except (ValueError, RecursionError):
            return
        if not isinstance(spec, dict):
            return
        if op[2] == "DELETE":
            spec.pop(op[1], None)
        else:
            spec[op[1]] = op[2]
        meta["spec"] = json.dumps(spec)
    elif k is None:
        if kind == "add":
            tensors[op[1]] = np.zeros(op[3], op[2])
    elif kind == "retype":
        tensors[k] = tensors[k].astype(op[2])
    elif kind == "reshape":
        a = tensors[k]
        shape = {"()": (), "(0,)": (0,), "(1,)": (1,), "T": a.shape[::-1],
                 "+1": (a.size + 1,), "-1": (max(a.size - 1, 0),), "(2, n)": (2, a.size),
                 "(300, 300)": (300, 300), "flat": (a.size,)}[op[2]]
        tensors[k] = np.resize(a, shape) if a.size else np.zeros(shape, a.dtype)
    elif kind == "values":
        a = tensors[k].copy()
        if a.size and a.dtype.kind == "f":
            a.flat[0] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zeros": 0.0,
                         "big": np.finfo(a.dtype).max, "tiny": np.finfo(a.dtype).smallest_subnormal,
                         "random": 0.123}[op[2]]
        tensors[k] = a
    elif kind == "rename":
        tensors[op[2]] = tensors.pop(k)
    elif kind == "drop":
        del tensors[k]
    elif kind == "add":
        tensors[op[1]] = np.zeros(op[3], op[2])


def _header_op(op, data: bytes) -> bytes:
    try:
        head, body = _split(data)
    except Exception:  # noqa: BLE001 - no JSON header any more: leave the bytes
        return data
    if not isinstance(head, dict):
        return data
    kind = op[0]
    names = sorted(k for k in head if k != "__metadata__" and isinstance(head[k], dict))
    k = names[op[1] % len(names)] if names and isinstance(op[1], int) else None
    text = None
    if kind == "h_dtype" and k:
        head[k]["dtype"] = op[2]
    elif kind == "h_shape" and k:
        head[k]["shape"] = op[2]
    elif kind == "h_offsets" and k:
        off = head[k].get("data_offsets")
        v = op[2]
        if isinstance(v, str) and isinstance(off, list) and len(off) == 2 and all(
                type(o) is int for o in off):
            v = {"shift+1": [off[0] + 1, off[1] + 1], "shift-1": [off[0] - 1, off[1] - 1],
                 "shift+8": [off[0] + 8, off[1] + 8], "swap": off[::-1],
                 "grow": [off[0], off[1] + 8], "shrink": [off[0], off[1] - 8]}[v]
        head[k]["data_offsets"] = off if isinstance(v, str) else v
    elif kind == "h_meta":
        if op[1] == "__all__":
            if op[2] == "DELETE":
                head.pop("__metadata__", None)
            else:
                head["__metadata__"] = op[2]
        elif isinstance(head.get("__metadata__"), dict):
            if op[2] == "DELETE":
                head["__metadata__"].pop(op[1], None)
            else:
                head["__metadata__"][op[1]] = op[2]
    elif kind == "h_dup" and k:
        body_json = json.dumps(head)
        entry = json.dumps(k) + ": " + json.dumps(head[k])
        text = body_json[:-1] + ", " + entry + "}"
    elif kind == "h_extra":
        head[op[1]] = op[2]
    elif kind == "h_pad":
        text = json.dumps(head) + op[2] * op[1]
    elif kind == "h_len":
        raw = json.dumps(head).encode("utf-8", "surrogatepass")
        v = op[1]
        n = len(raw) + len(body) if v == "file" else len(raw) + v if v in (-8, -1, 1, 8) else v
        return struct.pack("<Q", max(0, min(n, 2 ** 64 - 1))) + raw + body
    if text is None:
        text = json.dumps(head)
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + body


def _byte_op(op, data: bytes) -> bytes:
    kind, n = op[0], len(data)
    if kind == "flip" and n:
        i = op[1] % n
        return data[:i] + bytes([data[i] ^ (1 << op[2])]) + data[i + 1:]
    if kind == "flip_head" and n > 8:
        try:
            (h,) = struct.unpack("<Q", data[:8])
        except struct.error:
            return data
        i = 8 + op[1] % max(1, min(h, n - 8))
        return data[:i] + bytes([data[i] ^ (1 << op[2])]) + data[i + 1:] if i < n else data
    if kind == "trunc":
        return data[:op[1] % (n + 1)]
    if kind == "append":
        return data + op[1]
    if kind == "insert":
        i = op[1] % (n + 1)
        return data[:i] + op[2] + data[i:]
    if kind == "delete":
        i = op[1] % (n + 1)
        return data[:i] + data[i + op[2]:]
    return data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_XS = np.random.default_rng(0).standard_normal((2, 3, 64))


def check_file(data: bytes, path: Path) -> str:
    """'refused' (a ModelFileError) or 'loaded' (and the model runs); a Fault otherwise."""
    path.write_bytes(data)
    before = peak_rss_mb()
    try:
        with _Watching():
            model = Model.load(path)
    except ModelFileError:
        outcome = "refused"
    except Fault:
        raise
    except Exception as e:  # noqa: BLE001
        raise Fault("Model.load", _describe(e)) from e
    else:
        outcome = "loaded"
        n = sum(math.prod(a.shape) for a in model.params.values())
        if n <= 10 ** 6 and model.input_size <= 64:
            xs = _XS[:, :, :model.input_size].astype(model.dtype)
            try:
                with np.errstate(all="ignore"):
                    model.forward(xs, executor="reference")
            except Exception as e:  # noqa: BLE001
                raise Fault("forward of a loaded model", _describe(e)) from e
    after = peak_rss_mb()
    if after > max(before, BIG_RSS_MB):
        raise Fault("memory", f"peak RSS went from {before:.0f} to {after:.0f} MB")
    return outcome
