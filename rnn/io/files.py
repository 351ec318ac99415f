"""Model files: a model's weights and its cell's equations in one safetensors file.

safetensors is the format PyTorch and Hugging Face users already trust for weights
from strangers: a JSON header of names, dtypes, shapes and byte ranges, then the raw
bytes; no pickle, nothing that runs. ``safe_open`` in ``safe_open(path, "np")`` mode
reads it; any tool that reads safetensors reads our weights (their names are
PyTorch's for the built-ins). What rebuilds the model travels in the header's string
metadata:

    format   "unroll.model"          version  "1"
    cell     the equations, re-parsed by the equation parser (nothing is evaluated)
    spec     JSON: inputs, states, outputs and sizes of the cell; layers, head, dtype,
             learn_initial of the model
    sha256   of the tensors' names, dtypes, shapes and bytes (safetensors has no
             checksum: a flipped bit in the weights is caught here)

Saving is atomic: a temporary file in the same folder, fsync, ``os.replace``, fsync
of the folder; a crash leaves the old file or the new one, never half of one.

Loading trusts nothing: only a regular file is opened (a FIFO would block); the size
of the header is checked against the file and a cap before anything is parsed, and the
header must be JSON without a name twice; safetensors checks that every tensor's byte
range lies in the file and matches its shape and dtype (so no allocation exceeds the
file). The model description is checked before a Model is made: the cell's text and its
layers are capped, the dtype is float32 or float64, every array has it, and the
parameters the description implies hold no more elements than the file's arrays, so a
few bytes of header cannot make the loader allocate gigabytes or stack a million
layers. Then the names and shapes must be exactly those of the model it describes.
Every failure is a ``ModelFileError`` (a ValueError) that names the file and the cause;
tests/fuzz/run.py throws mutated and random files at it (``make fuzz``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np

from engine.errors import UnrollError, all_finite

from ..lang.cell import Cell
from ..model import Model, _probability

FORMAT, CHECKPOINT, VERSION = "unroll.model", "unroll.checkpoint", "1"
MAX_HEADER = 16 << 20  # bytes of JSON header: far above any model's (a few KB)
MAX_CELL_TEXT = 1 << 20  # characters of equations: 25,000 equations parse in about 3 s
MAX_LAYERS = 1024
MAX_STACKED_NODES = 1 << 18  # layers x the cell's operations: stacking takes seconds
DTYPES = {"float32": "F32", "float64": "F64"}


# the Model's options a spec may add, with the value a spec without them means
OPTIONS = {"bidirectional": False, "dropout": 0.0, "recurrent_dropout": 0.0}


class ModelFileError(UnrollError, ValueError):
    """A model file that cannot be read back: what is wrong, and with which file."""


def save(model, path) -> Path:
    """Write ``model`` to ``path`` (atomically); returns the path."""
    path = Path(path)
    cell = model.cell
    if not cell.text.strip():
        raise ValueError("this model's cell has no equations text to save; build it with "
                         "Cell.from_equations")
    spec = {"inputs": cell.inputs, "states": cell.states, "outputs": list(cell.outputs),
            "sizes": {k: v for k, v in cell.declared.items() if k not in cell.states},
            "layers": model.layers, "head": model.head, "dtype": model.dtype,
            "learn_initial": list(model.learn_initial)}
    for key, default in OPTIONS.items():  # written only where set: older readers load the rest
        if getattr(model, key, default) != default:
            spec[key] = getattr(model, key)
    _write(path, FORMAT, model.params, {"cell": cell.text, "spec": json.dumps(spec)})
    return path


def save_checkpoint(path, tensors: dict, info: dict) -> None:
    """A training checkpoint: arrays, and ``info`` (anything JSON holds; floats
    round-trip exactly, NaN included), written atomically like a model file."""
    _write(Path(path), CHECKPOINT, tensors, {"info": json.dumps(info)})


def load_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, info) of a checkpoint written by ``save_checkpoint``, checked as a
    model file is."""
    path = Path(path)
    meta, tensors = _read(path, CHECKPOINT)
    try:
        return tensors, json.loads(meta["info"])
    except (KeyError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: a damaged checkpoint ({e})") from None


def _write(path: Path, fmt: str, tensors: dict, meta: dict) -> None:
    from safetensors.numpy import save as to_bytes

    # np.asarray(order="C"), not np.ascontiguousarray: that one turns a scalar parameter
    # (shape ()) into shape (1,), and such a file did not load back
    tensors = {k: np.asarray(v, order="C") for k, v in tensors.items()}
    for k, v in tensors.items():
        if not all_finite(v):
            raise ValueError(f"'{k}' holds NaN or inf; {path} not written")
    meta = {"format": fmt, "version": VERSION, **meta, "sha256": _digest(tensors)}
    write_atomic(path, to_bytes(tensors, metadata=meta))


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, whatever happens meanwhile."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise type(e)(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in folder.glob(f".{glob.escape(path.name)}.*.tmp"):  # a killed writer's
            old.unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a crash once the folder is synced
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # a system that cannot open folders (Windows): nothing to sync
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path):
    """The model saved at ``path``."""
    path = Path(path)
    meta, tensors = _read(path, FORMAT)
    try:
        spec = _spec(meta)
        cell = Cell.from_equations(meta["cell"], inputs=spec["inputs"], states=spec["states"],
                                   outputs=spec["outputs"], sizes=spec["sizes"])
        _fits(cell, spec, tensors)
        model = Model(cell, layers=spec["layers"], head=spec["head"], dtype=spec["dtype"],
                      learn_initial=spec["learn_initial"],
                      **{k: spec.get(k, d) for k, d in OPTIONS.items()})
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise ModelFileError(f"{path}: its model description does not build a model: "
                             f"{type(e).__name__}: {e}") from None
    try:
        model.load_params(tensors)
    except (ValueError, TypeError) as e:  # TypeError: a dtype (DTypeError)
        raise ModelFileError(f"{path}: {e}") from None
    return model


def _spec(meta: dict) -> dict:
    """The model description of the metadata, its types checked (the values are checked
    by the Cell and the Model)."""
    cell = meta["cell"]
    if len(cell) > MAX_CELL_TEXT:
        raise ValueError(f"the cell's equations are {len(cell):,} characters, more than the "
                         f"{MAX_CELL_TEXT:,} a model file may hold")
    spec = json.loads(meta["spec"])
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a JSON object, got {type(spec).__name__}")
    layers, head = spec["layers"], spec["head"]
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= MAX_LAYERS:
        raise ValueError(f"layers must be an int from 1 to {MAX_LAYERS}, got {layers!r}")
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 1):
        raise ValueError(f"head must be null or a positive int, got {head!r}")
    if spec["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {spec['dtype']!r}")
    learn = spec["learn_initial"]
    if not isinstance(learn, list) or not all(isinstance(s, str) for s in learn):
        raise TypeError(f"learn_initial must be a list of state names, got {learn!r}")
    if not isinstance(spec.get("bidirectional", False), bool):
        raise TypeError(f"bidirectional must be true or false, got {spec['bidirectional']!r}")
    for key in ("dropout", "recurrent_dropout"):
        _probability(key, spec.get(key, 0.0))
    return spec


def _fits(cell: Cell, spec: dict, tensors: dict) -> None:
    """The file's arrays can be this model's: its dtype, and parameters no bigger in all
    than the arrays, checked before the Model allocates and initializes them."""
    from ..model import stack_cells

    for k, a in tensors.items():
        if a.dtype != np.dtype(spec["dtype"]):
            raise ValueError(f"array '{k}' is {a.dtype} but the model is {spec['dtype']}")
    layers = spec["layers"]
    if layers > 1 and cell.params and layers * len(cell.params) > len(tensors):
        raise ValueError(f"{layers} layers of a cell with {len(cell.params)} parameters need "
                         f"{layers * len(cell.params)} arrays; the file has {len(tensors)}")
    if layers * len(cell.nodes) > MAX_STACKED_NODES:
        raise ValueError(f"{layers} layers of a cell of {len(cell.nodes)} operations are more "
                         f"than the {MAX_STACKED_NODES:,} operations a model file may describe")
    have = sum(a.size for a in tensors.values())
    need = sum(math.prod(s) for s in stack_cells(cell, layers, spec["head"]).params.values())
    if spec.get("bidirectional"):  # at least twice the layers (a reverse copy of each)
        need += sum(math.prod(s) for s in stack_cells(cell, layers, None).params.values())
    need += layers * sum(cell.states.get(s, 0) for s in set(spec["learn_initial"]))
    if need > have:
        raise ValueError(f"the model it describes has {need:,} parameter values; the file's "
                         f"arrays hold {have:,}")


def _read(path: Path, fmt: str):
    """(metadata, {name: array}) of a safetensors file of ours in format ``fmt``,
    checked before it is parsed and against its checksum after."""
    from safetensors import SafetensorError, safe_open

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO (would block), a device
            raise ModelFileError(f"cannot read model file {path}: not a regular file")
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e.strerror or e}") from None
    if len(head) < 8:
        raise ModelFileError(f"{path} is not a model file: {size} bytes, shorter than a "
                             f"safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > min(MAX_HEADER, size - 8):
        raise ModelFileError(f"{path} is not a model file (or is truncated): its header "
                             f"claims {n} bytes, the file has {size - 8} after the length "
                             f"and the cap is {MAX_HEADER}")
    try:
        with open(path, "rb") as f:
            f.seek(8)
            json.loads(f.read(n), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path} is not a model file: its header is not JSON without "
                             f"duplicate names ({e})") from None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != fmt:
                raise ModelFileError(f"{path} is a safetensors file but not an {fmt} file "
                                     f"(metadata format={meta.get('format')!r})")
            if meta.get("version") != VERSION:
                raise ModelFileError(f"{path} is an unroll model file of version "
                                     f"{meta.get('version')!r}; this unroll reads version "
                                     f"{VERSION}")
            tensors = {}
            for k in f.keys():
                try:
                    tensors[k] = f.get_tensor(k)
                except Exception as e:  # noqa: BLE001 - BF16 or F8 (numpy has neither:
                    # TypeError, AttributeError), over 64 dims (ValueError), ...
                    raise ModelFileError(f"{path} is not a valid model file: array {k!r} "
                                         f"cannot be read: {type(e).__name__}: {e}") from None
    except SafetensorError as e:
        raise ModelFileError(f"{path} is not a valid model file: {e}") from None
    if meta.get("sha256") != _digest(tensors):
        raise ModelFileError(f"{path} is damaged: its arrays do not match the checksum "
                             f"written with them")
    return meta, tensors


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"the name {sorted(dup)[0]!r} appears twice")
    return dict(pairs)


def _digest(tensors: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor, in name order:
    safetensors has no checksum, and a flipped bit in the weights must not load."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])  # () hashes as (1,): files written before
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()
