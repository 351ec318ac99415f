"""A model: a cell stacked ``layers`` deep, an optional dense head, and its weights.

Stacking is itself just a cell: layer k's nodes are renamed with ``_l{k}`` and read the
layer below's output where the cell read its input, so the whole model is one cyclic
graph, unrolled by the same compiler.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.errors import DTypeError, ShapeError, all_finite
from engine.ir import Builder, Eqn, Program, Var, verify

from .lang.cell import Cell
from .lang.parse import Node, Ref
from .program.executor import REFERENCE, check_executor
from .program.loop import Plan, Unsupported
from .program.unroll import Unrolled, check_dtype_name, check_mask_name, positive_int, unroll

# Parameters are allocated (and initialized) at once when a Model is made: a cell with
# sizes of 10^7 would otherwise fill gigabytes before any error. 2**28 elements are 2 GiB
# of float64, far above any RNN this CPU engine trains; raise it if you mean it.
MAX_PARAM_ELEMENTS = 1 << 28


class Params(Mapping):
    """``model.params``: a read-only mapping {name: array} whose arrays are read-only
    views of the model's weights (they follow every update). ``model.load_params`` is
    the only way weights go in; optimizers write through ``writable(params)``.

    >>> from rnn import cells
    >>> m = Model(cells.elman(2, 3))
    >>> m.params["bias_ih_l0"].flags.writeable, "bias_ih_l0" in m.params
    (False, True)

    Item assignment or deletion is a TypeError that points to ``load_params``.
    """

    __slots__ = ("_arrays",)

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays

    def __getitem__(self, name: str) -> np.ndarray:
        view = self._arrays[name].view()
        view.flags.writeable = False
        return view

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __contains__(self, name) -> bool:
        return name in self._arrays

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v.dtype}{list(v.shape)}" for k, v in self._arrays.items())
        return f"Params({{{inner}}})"

    def __setitem__(self, name, value):
        raise TypeError(f"model.params is read-only: set {name!r} with model.load_params("
                        f"{{{name!r}: array}}, strict=False)")

    def __delitem__(self, name):
        raise TypeError(f"model.params is read-only: parameter {name!r} cannot be deleted "
                        f"(model.load_params(mapping) sets weights)")

    def _refuse(self, *args, **kw):
        raise TypeError("model.params is read-only: model.load_params(mapping, strict=True) "
                        "is the only way weights go in")

    update = pop = popitem = clear = setdefault = __ior__ = _refuse


def writable(params) -> dict[str, np.ndarray]:
    """The arrays behind ``params`` (a Params or a plain dict), for the code that updates
    weights in place (optimizers): the one private write path."""
    return params._arrays if isinstance(params, Params) else params


def check_param_sizes(shapes: dict[str, tuple], dtype: str) -> None:
    """Refuse parameters too big to allocate, naming the biggest, before allocating."""
    sizes = {p: int(np.prod(s, dtype=np.float64)) for p, s in shapes.items()}
    total = sum(sizes.values())
    if total > MAX_PARAM_ELEMENTS:
        big = max(sizes, key=sizes.get)
        nbytes = total * np.dtype(dtype).itemsize
        raise ValueError(f"parameter '{big}' is {tuple(shapes[big])} = {sizes[big]:,} elements "
                         f"and the model's {len(sizes)} parameters total {total:,} "
                         f"({nbytes / 2**30:.1f} GiB of {dtype}): more than the bound of "
                         f"{MAX_PARAM_ELEMENTS:,} elements (rnn.model.MAX_PARAM_ELEMENTS, "
                         f"{MAX_PARAM_ELEMENTS * 8 / 2**30:g} GiB of float64) a Model "
                         f"allocates; check the cell's sizes")


def _suffix(name: str, k: int, reverse: bool = False) -> str:
    base, dot, rest = name.partition(".")
    return f"{base}_l{k}{'_reverse' if reverse else ''}{dot}{rest}"


DROPOUT, RDROP = "dropout_", "rdrop_"  # prefixes of the mask inputs of a training cell


def _recurrent_reads(cell: Cell) -> set[tuple[str, int]]:
    """(node, argument index) of every read of a state from the past that enters a matrix
    product within the step (``W @ h[t-1]``, ``W @ (r * h[t-1])``): the recurrent
    connections that recurrent dropout masks (an LSTM's ``c[t-1]`` and a GRU's
    ``z * h[t-1]`` pass unmasked, as in Keras)."""
    into: set[str] = set()
    for nd in reversed(cell.nodes):
        if nd.op == "matvec":
            a = nd.args[1]
            if isinstance(a, Ref) and not a.delay:
                into.add(a.name)
        elif nd.out in into:
            into.update(a.name for a in nd.args if isinstance(a, Ref) and not a.delay)
    return {(nd.out, i) for nd in cell.nodes for i, a in enumerate(nd.args)
            if isinstance(a, Ref) and a.delay and a.name in cell.states
            and ((nd.op == "matvec" and i == 1) or (nd.op != "matvec" and nd.out in into))}


def _layer(cell: Cell, k: int, first_size: int, feed: dict, reverse: bool = False,
           rdrop: bool = False):
    """Layer k of a stack (one direction): ``cell``'s nodes, its inputs read from the
    names ``feed`` gives, everything else suffixed ``_l{k}`` (``_l{k}_reverse``). With
    ``rdrop``, every recurrent read (_recurrent_reads) is multiplied by a mask input
    ``rdrop_<state>``, one per state. Returns (nodes, sizes, params, mask inputs)."""
    x = next(iter(cell.inputs))
    layer = cell if k == 0 else Cell.from_nodes(
        cell.nodes, {**cell.inputs, x: first_size}, {}, cell.outputs, cell.declared, {},
        cell.sources, cell.text)

    def rename(n):
        return feed[n] if n in layer.inputs else _suffix(n, k, reverse)

    nodes = layer.renamed(rename)
    sizes = {rename(v): n for v, n in {**layer.declared, **layer.states}.items()}
    params = {rename(p): s for p, s in layer.params.items()}
    masks: dict[str, int] = {}
    if rdrop:
        reads = _recurrent_reads(layer)
        if not reads:
            raise ValueError("recurrent_dropout masks the states read from t-1 where they "
                             "enter a matrix product (W @ h[t-1]); this cell has no such "
                             "read")
        done: dict[tuple, str] = {}
        out = []
        for nd, orig in zip(nodes, layer.nodes):
            args = list(nd.args)
            for i, a in enumerate(orig.args):
                if (orig.out, i) not in reads:
                    continue
                s = rename(a.name)
                if (s, a.delay) not in done:
                    name = done[(s, a.delay)] = f"{s}.rdrop{a.delay}"
                    masks[RDROP + s] = layer.states[a.name]
                    out.append(Node(name, "mul", (Ref(s, a.delay), Ref(RDROP + s)),
                                    target=name))
                args[i] = Ref(done[(s, a.delay)])
            out.append(replace(nd, args=tuple(args)))
        nodes = out
    return nodes, sizes, params, masks


def stack_cells(cell: Cell, layers: int, head: int | None, dropout: bool = False,
                recurrent_dropout: bool = False) -> Cell:
    """One cell for the whole model: ``layers`` copies of ``cell`` and a dense head.

    Layer k > 0 reads the output of layer k-1 as its first input; a cell's other inputs
    (``inputs={"x": 3, "u": 2}``: ``u``) are fed to every layer. The training cell of a
    model with dropout has mask inputs after the data: ``dropout_l{k}`` multiplies the
    output of layer k where layer k+1 reads it, ``rdrop_<state>_l{k}`` the recurrent
    reads of a state (see _layer)."""
    x = next(iter(cell.inputs))
    out = cell.outputs[0]
    out_size = cell.shapes[out][0]
    nodes, sizes, params = [], {}, {}
    inputs = dict(cell.inputs)
    below = x
    for k in range(layers):
        feed = {n: n for n in cell.inputs}
        feed[x] = below
        lnodes, lsizes, lparams, masks = _layer(cell, k, out_size, feed,
                                                rdrop=recurrent_dropout)
        nodes += lnodes
        sizes.update(lsizes)
        params.update(lparams)
        inputs.update(masks)
        below = f"{out}_l{k}"
        if dropout and k < layers - 1:
            m, dropped = f"{DROPOUT}l{k}", f"{below}.dropout"
            inputs[m] = out_size
            nodes.append(Node(dropped, "mul", (Ref(below), Ref(m)), target=dropped))
            below = dropped
    top = f"{out}_l{layers - 1}"
    outputs = [top]
    if head is not None:
        dense = Cell.from_equations("y = head_weight @ h + head_bias", inputs={"h": out_size},
                                    sizes={"y": head})
        nodes += dense.renamed(lambda n: top if n == "h" else n)
        params.update(dense.params)
        outputs = ["y"]
    return Cell.from_nodes(nodes, inputs, {}, outputs, sizes, params, {}, "")


def bi_layer_cell(cell: Cell, k: int, in_size: int, recurrent_dropout: bool = False) -> Cell:
    """Layer k of a bidirectional model: two copies of ``cell``, the forward one reading
    the inputs as they come (``x``), the reverse one reading them reversed within each
    sequence (``x_reverse``), with PyTorch's names (``weight_ih_l0_reverse``); outputs
    ``h_l{k}`` and ``h_l{k}_reverse``, both in the order each direction runs.

    For k > 0 the first input passes through a node ``x_l{k}.in`` (``_reverse``) read
    once more at t-1 by a node with no reader: so the compiled executor's
    ``keep_adjoints`` hands back its adjoint, the gradient the layer below needs."""
    x = next(iter(cell.inputs))
    ins = {**cell.inputs, x: in_size if k else cell.inputs[x]}
    inputs = {**ins, **{f"{n}_reverse": w for n, w in ins.items()}}
    nodes, sizes, params, outputs = [], {}, {}, []
    for rev in (False, True):
        feed = {n: f"{n}_reverse" if rev else n for n in ins}
        if k > 0:
            tap = f"{x}_l{k}{'_reverse' if rev else ''}.in"
            nodes += [Node(tap, "mul", (Ref(feed[x]), 1.0), target=tap),
                      Node(f"{tap}.keep", "mul", (Ref(tap, 1), 0.0), target=f"{tap}.keep")]
            feed[x] = tap
        lnodes, lsizes, lparams, masks = _layer(cell, k, in_size, feed, reverse=rev,
                                                rdrop=recurrent_dropout)
        nodes += lnodes
        sizes.update(lsizes)
        params.update(lparams)
        inputs.update(masks)
        outputs.append(_suffix(cell.outputs[0], k, rev))
    return Cell.from_nodes(nodes, inputs, {}, outputs, sizes, params, {}, "")


def unroll_both_ways(model, steps: int, dtype: str, truncate: int | None = None) -> Unrolled:
    """A bidirectional model over ``steps`` as one program in time order. The model runs
    each layer's reverse direction over the reversed sequence; here its step s is placed
    at time T-1-s, reading x@t as the forward one does. Layer k>0 reads
    ``h_l{k-1}.concat@t``, both directions of the layer below at t (as BiRun concatenates
    them); the head reads the top one. ``truncate``: each direction cut every k of its own
    steps, as bptt's. The outputs: the model's at t = 0..T-1."""
    T, x, h = steps, next(iter(model.inputs)), model.cell.outputs[0]
    b, kinds, drawn, below = Builder(dtype), {}, {}, []

    def time(v):  # the reverse direction's step s is time T-1-s; params, initial values keep
        back = v.step is not None and v.step >= 0 and v.node.partition(".")[0].endswith(
            "_reverse")
        return T - 1 - v.step if back else v.step

    def put(v, t):  # v at time t, its name saying so (h_l0_reverse@0|cut at T-1 ...)
        return replace(v, name=v.name.replace(f"@{v.step}", f"@{t}", 1), step=t)

    for k, stage in enumerate(model.stages):
        kinds.update(stage.graph.nodes(data="kind"))
        taps = {f"{x}_l{k}.in", f"{x}_l{k}_reverse.in"}  # plumbing for the executors
        un = unroll(stage, T, dtype=dtype, truncate=truncate)
        to: dict[str, Var] = {}  # a var of the layer's program -> the var in the whole
        for v in un.program.inputs:
            base = v.node.removesuffix("_reverse") if v.node in stage.inputs else None
            if base == x and k:  # layer k reads both directions of layer k-1
                to[v.name] = below[time(v)]
            elif base is not None:  # x_reverse@s is x@(T-1-s): both directions read x@t
                to[v.name] = drawn.setdefault(f"{base}@{time(v)}", put(
                    replace(v, name=f"{base}@{v.step}", node=base), time(v)))
            elif v.node not in taps:
                to[v.name] = drawn.setdefault(v.name, v)
        for e in un.program.eqns:
            if e.out.node in taps:  # x_l1.in = x * 1: the layer's input, passed through
                to[e.out.name] = to[e.inputs[0].name]
                continue
            if e.out.node.removesuffix(".keep") in taps:
                continue
            out = to[e.out.name] = put(e.out, time(e.out))
            b.eqns.append(Eqn(out, e.op, tuple(to[a.name] if isinstance(a, Var) else a
                                               for a in e.inputs), e.params))
        fwd, rev = (un.outputs(o) for o in stage.outputs)
        below = [b.call("concat", to[fwd[t].name], to[rev[T - 1 - t].name], axis=-1,
                        name=f"{h}_l{k}.concat@{t}", node=f"{h}_l{k}.concat", step=t)
                 for t in range(T)]
    ys = below
    if model.head is not None:
        kinds["y"] = "var"
        w, c = (drawn.setdefault(p, Var(p, model.param_shapes[p], dtype, p))
                for p in ("head_weight", "head_bias"))
        ys = [b.call("add", b.call("matvec", w, z, name=f"y.1@{t}", node="y.1", step=t), c,
                     name=f"y@{t}", node="y", step=t) for t, z in enumerate(below)]
    b.inputs = list(drawn.values())
    inputs = {v.name: v for v in b.inputs}
    values: dict[str, list[Var]] = {}  # each variable at t = 0..T-1 (not the cuts)
    for e in b.eqns:
        if e.out.name == f"{e.out.node}@{e.out.step}":
            values.setdefault(e.out.node, [None] * T)[e.out.step] = e.out
    return Unrolled(model.cell, T, verify(b.program(ys)),
                    {n: [inputs[f"{n}@{t}"] for t in range(T)] for n in model.inputs},
                    {v.name: v for v in b.inputs if v.step is None},
                    {v.node: v for v in b.inputs if v.step == -1}, values,
                    kinds=kinds, output=ys[0].node)


class ReadOnlyParams:
    """``params``: {name: array} of ``_params``, read-only (arrays too):
    ``load_params`` sets weights."""

    @property
    def params(self) -> Params:
        return Params(self._params)

    @params.setter
    def params(self, value):
        raise TypeError("model.params is read-only: model.load_params(mapping, strict=True) "
                        "is the only way weights go in")


class Model(ReadOnlyParams):
    """A stacked recurrent model with PyTorch's parameter names and initialization.

    >>> from rnn import cells
    >>> m = Model(cells.lstm(3, 8), layers=2, head=1)
    >>> sorted(m.params)[:2], m.params["weight_ih_l1"].shape
    (['bias_hh_l0', 'bias_hh_l1'], (32, 8))
    """

    def __init__(self, cell: Cell, layers: int = 1, head: int | None = None,
                 dtype: str = "float64", seed: int = 0, learn_initial=(), *,
                 bidirectional: bool = False, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0):
        if not isinstance(cell, Cell):
            raise TypeError(f"Model needs a Cell (e.g. rnn.cells.lstm(1, 16)), got "
                            f"{type(cell).__name__}")
        layers = positive_int("layers", layers)
        if head is not None:
            if isinstance(head, bool) or not isinstance(head, numbers.Integral) or head < 1:
                raise ValueError(f"head is the output size of a dense layer (a positive int) "
                                 f"or None, got {head!r}")
            head = int(head)
        dtype = check_dtype_name(dtype)
        unknown = set(learn_initial) - set(cell.states)
        if unknown:
            raise ValueError(f"learn_initial names {sorted(unknown)}; the cell's states are "
                             f"{list(cell.states)}")
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
        self.dropout = _probability("dropout", dropout)
        self.recurrent_dropout = _probability("recurrent_dropout", recurrent_dropout)
        if self.dropout and layers == 1:
            warnings.warn("dropout acts between stacked layers (PyTorch's semantics): with "
                          "layers=1 it does nothing", UserWarning, stacklevel=2)
        self.cell, self.layers, self.head = cell, layers, head
        self.bidirectional, self.directions = bidirectional, 2 if bidirectional else 1
        self.learn_initial = tuple(learn_initial)
        self.dtype = dtype
        self.inputs = dict(cell.inputs)  # the data inputs, in the order they are packed
        self.input_size = sum(self.inputs.values())
        out_size = cell.shapes[cell.outputs[0]][0]
        if bidirectional:
            self.stages = [bi_layer_cell(cell, k, out_size * 2) for k in range(layers)]
            self.full = self.stages[0]  # layer 0, where the inputs enter
            self.head_params = {} if head is None else {"head_weight": (head, 2 * out_size),
                                                        "head_bias": (head,)}
            shapes = {p: s for c in self.stages for p, s in c.params.items()}
            shapes.update(self.head_params)
            self.output_size = head or 2 * out_size
        else:
            self.full = stack_cells(cell, layers, head)
            shapes = self.full.params
            self.output_size = self.full.shapes[self.full.outputs[0]][0]
        self.param_shapes = dict(shapes)
        self._train: dict = {}
        self._layer_names: dict[str, tuple[str, ...]] = {}
        check_param_sizes(shapes, dtype)
        self._params = self.init_params(seed)  # the weights; model.params is a read-only view
        self._programs: dict[tuple, tuple[Program, Unrolled]] = {}
        self._plans: dict = {}
        if self.trains_differently:
            self.cell_for(True)  # a cell recurrent dropout cannot act on: an error now

    # ------------------------------------------------------------ training cells
    @property
    def trains_differently(self) -> bool:
        """Whether training (fit, bptt(train=True)) runs another cell: one with masks."""
        return bool((self.dropout and self.layers > 1) or self.recurrent_dropout)

    def cell_for(self, train: bool = False, stage: int = 0) -> Cell:
        """The cell that runs: the stack (a bidirectional model: layer ``stage``), with
        the dropout masks as inputs when ``train`` and the model has dropout. A
        bidirectional layer's cell has masks only for recurrent dropout (BiRun drops
        out between layers): without it training runs the plain cell, and its plan."""
        plain = not (self.recurrent_dropout if self.bidirectional else self.trains_differently)
        if not train or plain:
            return self.stages[stage] if self.bidirectional else self.full
        key = stage
        if key not in self._train:
            if self.bidirectional:
                out_size = self.cell.shapes[self.cell.outputs[0]][0]
                self._train[key] = bi_layer_cell(self.cell, stage, 2 * out_size,
                                                 recurrent_dropout=True)
            else:
                self._train[key] = stack_cells(self.cell, self.layers, self.head,
                                               bool(self.dropout), bool(self.recurrent_dropout))
        return self._train[key]

    def masks(self, cell: Cell, B: int, T: int, rng) -> np.ndarray | None:
        """The dropout masks ``cell``'s mask inputs take, packed (B, T, w) in its input
        order, or None: ``dropout_*`` a fresh 0 or 1/(1-p) per element and step,
        ``rdrop_*`` one per sequence and feature, the same at every step (Gal &
        Ghahramani). Drawn from ``rng`` (a numpy Generator) in that order."""
        parts = []
        for name, w in cell.inputs.items():
            if name in self.inputs or name.endswith("_reverse") and \
                    name.removesuffix("_reverse") in self.inputs:
                continue
            if name.startswith(DROPOUT):
                parts.append(dropout_mask(rng, (B, T, w), self.dropout, self.dtype))
            elif name.startswith(RDROP):
                m = dropout_mask(rng, (B, 1, w), self.recurrent_dropout, self.dtype)
                parts.append(np.broadcast_to(m, (B, T, w)))
        return np.concatenate(parts, axis=-1) if parts else None

    def __repr__(self):
        n = sum(p.size for p in self._params.values())
        extra = "".join(f", {k}={v}" for k, v in (("bidirectional", self.bidirectional),
                                                   ("dropout", self.dropout),
                                                   ("recurrent_dropout",
                                                    self.recurrent_dropout)) if v)
        return (f"Model({self.input_size} -> {self.output_size}, layers={self.layers}, "
                f"head={self.head}{extra}, states={list(self.cell.states)}, {n} parameters, "
                f"{self.dtype})")

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        """PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)), H the hidden size (fan-in for the
        head)."""
        rng = np.random.default_rng(seed)
        out_size = self.cell.shapes[self.cell.outputs[0]][0]
        hidden = next(iter(self.cell.declared.values()), out_size)
        out = {}
        for p, shape in self.param_shapes.items():
            bound = 1 / np.sqrt(out_size * self.directions if p.startswith("head_") else
                                hidden)
            out[p] = np.asarray(rng.uniform(-bound, bound, size=shape), self.dtype)
        for s in self.learn_initial:  # learned initial states start at zero
            for name in self.layer_names(s):
                out[f"init_{name}"] = np.zeros(self.cell.states[s], self.dtype)
        return out

    # ------------------------------------------------------------ weights in and out
    def load_params(self, mapping, strict: bool = True) -> None:
        """Set parameters from ``mapping`` {name: array}. Each array must have the
        parameter's shape and the model's dtype (no silent cast) and be finite; with
        ``strict``, the names must be exactly the model's. Nothing is set unless all of
        it is right: an error names the parameter."""
        for k, a in self._checked_params(mapping, strict).items():
            np.copyto(self._params[k], a)

    def _checked_params(self, mapping, strict: bool) -> dict[str, np.ndarray]:
        """``mapping`` as {name: array}, checked as ``load_params`` says; sets nothing."""
        if not hasattr(mapping, "items"):
            raise TypeError(f"load_params takes a mapping of names to arrays, got "
                            f"{type(mapping).__name__}")
        mapping = dict(mapping)
        unknown = sorted(set(mapping) - set(self._params))
        missing = sorted(set(self._params) - set(mapping))
        if unknown:
            raise ValueError(f"no parameter named {unknown[0]!r} in this model (it has "
                             f"{sorted(self._params)})")
        if strict and missing:
            raise ValueError(f"parameter {missing[0]!r} is missing (strict=True needs all of "
                             f"{sorted(self._params)})")
        new = {}
        for k, v in mapping.items():
            a = np.asarray(v)
            want = self._params[k].shape
            if a.shape != want:
                raise ShapeError(f"parameter '{k}' must be {want}, got {a.shape}")
            self.check_dtype(f"parameter '{k}'", a)
            if not all_finite(a):
                raise ValueError(f"parameter '{k}' holds NaN or inf values")
            new[k] = a
        return new

    def save(self, path) -> Path:
        """Write the model (the cell's equations and the weights) to a safetensors file,
        atomically; ``rnn.Model.load(path)`` reads it back (rnn/io/files.py)."""
        from .io import files

        return files.save(self, path)

    @classmethod
    def load(cls, path) -> Model:
        """The model saved at ``path`` by ``save``. A file that is not one (truncated,
        corrupt, hostile) is a ModelFileError naming the cause; nothing in it runs."""
        from .io import files

        return files.load(path)

    # ------------------------------------------------------------ state names
    def layer_names(self, state: str) -> tuple[str, ...]:
        """The per-layer names of a state of the cell: h -> (h_l0, h_l1, ...); with
        bidirectional=True (h_l0, h_l0_reverse, h_l1, ...), PyTorch's h_n order."""
        names = self._layer_names.get(state)
        if names is None:
            names = self._layer_names[state] = tuple(
                _suffix(state, k, bool(d)) for k in range(self.layers)
                for d in range(self.directions))
        return names

    def split_layers(self, per_layer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{h_l0: a, h_l1: b} -> {h: a} for one layer, {h: stack([a, b])} for more
        (layers x directions, as PyTorch's h_n)."""
        out = {}
        for s in self.cell.states:
            names = self.layer_names(s)
            out[s] = per_layer[names[0]] if len(names) == 1 else np.stack(
                [per_layer[n] for n in names])
        return out

    # ------------------------------------------------------------ checks
    def check_xs(self, xs, batch_first: bool = True) -> np.ndarray:
        """``xs`` checked, as a (B, T, I) array: with ``batch_first=False`` it comes
        time-major, (T, B, I), and the result is a batch-major view of it.

        A cell with several inputs (``inputs={"x": 3, "u": 2}``) takes a dict of
        (B, T, size) arrays, one per input; they are packed into one (B, T, 5) array,
        in the cell's order, which is also accepted as it is."""
        if isinstance(xs, Mapping):
            names = list(self.inputs)
            unknown = sorted(set(xs) - set(names), key=str)
            missing = [n for n in names if n not in xs]
            if unknown or missing:
                raise ValueError(f"xs must give the cell's inputs {names}, one (B, T, size) "
                                 f"array each; " + (f"got no {missing}" if missing else
                                                    f"{unknown} are not inputs"))
            parts = [self._check_one(xs[n], self.inputs[n], f"xs[{n!r}]", batch_first)
                     for n in names]
            for n, a in zip(names[1:], parts[1:]):
                if a.shape[:2] != parts[0].shape[:2]:
                    raise ShapeError(f"xs[{n!r}] has (B, T) = {a.shape[:2]} but "
                                     f"xs[{names[0]!r}] has {parts[0].shape[:2]}: every "
                                     f"input needs the same batch and steps")
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        return Model._check_one(self, xs, self.input_size, "xs", batch_first)

    def _check_one(self, xs, size: int, what: str, batch_first: bool) -> np.ndarray:
        inputs = getattr(self, "inputs", {})  # (Seq2Seq checks its xs here too)
        xs = np.asarray(xs)
        layout = ("(batch, time, features) = (B, T, {})" if batch_first else
                  "(time, batch, features) = (T, B, {}) (batch_first=False)")
        several = (f" (this cell's inputs {inputs} come as a dict of arrays, or "
                   f"concatenated in that order)" if what == "xs" and len(inputs) > 1
                   else "")
        if xs.ndim != 3:
            raise ShapeError(f"{what} must be {layout.format(size)}, got shape "
                             f"{xs.shape}{several}")
        given = xs.shape
        if not batch_first:
            xs = xs.swapaxes(0, 1)
        if xs.shape[1] == 0:
            raise ShapeError(f"{what} has T = 0 time steps; a sequence needs at least one")
        if xs.shape[0] == 0:
            raise ShapeError(f"{what} has an empty batch (B = 0)")
        if xs.shape[2] != size:
            raise ShapeError(f"{what} has {xs.shape[2]} features per step but the model "
                             f"takes {size}: expected {layout.format(size)}, got "
                             f"{given}{several}")
        self.check_dtype(what, xs)
        if not all_finite(xs):
            raise ValueError(f"{what} holds NaN or inf values")
        return xs

    def split_inputs(self, xs: np.ndarray, cell: Cell) -> dict[str, np.ndarray]:
        """The packed (B, T, w) array as {input of ``cell``: (B, T, its size)} views."""
        if len(cell.inputs) == 1:
            return {next(iter(cell.inputs)): xs}
        out, at = {}, 0
        for name, w in cell.inputs.items():
            out[name] = xs[..., at:at + w]
            at += w
        return out

    def check_dtype(self, what, a):
        if a.dtype != self.dtype:
            raise DTypeError(f"{what} is {a.dtype} but the model is {self.dtype}; unroll never "
                             f"casts silently: pass {what}.astype(np.{self.dtype})")

    def initial_env(self, un: Unrolled, B: int, initial_state) -> dict[str, np.ndarray]:
        """Values for every ``@init`` input of the unrolled program."""
        widths = {name: v.shape[-1] for name, v in un.init.items()}
        return {f"{n}@init": v for n, v in self.initial_values(B, initial_state,
                                                               widths).items()}

    def initial_values(self, B: int, initial_state, widths: dict) -> dict[str, np.ndarray]:
        """The (B, w) initial value of every name in ``widths`` (states, and delayed inputs
        and masked outputs): zeros unless ``initial_state`` gives it or it is learned."""
        env = {}
        given = dict(initial_state or {})
        unknown = set(given) - set(self.cell.states)
        if unknown:
            raise ValueError(f"initial_state names {sorted(unknown)}; the cell's states are "
                             f"{list(self.cell.states)}")
        for s, arr in given.items():
            arr = np.asarray(arr)
            H = self.cell.states[s]
            names = self.layer_names(s)
            want = (len(names), B, H)  # PyTorch's (layers * directions, B, H)
            if arr.shape == want[1:] and len(names) == 1:
                arr = arr[None]  # one layer, one direction: (B, H) as well
            if arr.shape != want:
                shown = (f"{want[1:]} (or {want}, PyTorch's (layers * directions, B, H))"
                         if len(names) == 1 else f"(layers * directions, B, H) = {want}")
                raise ShapeError(f"initial_state['{s}'] must be {shown}, got {arr.shape}")
            self.check_dtype(f"initial_state['{s}']", arr)
            if not all_finite(arr):
                raise ValueError(f"initial_state['{s}'] holds NaN or inf values")
            for k, name in enumerate(names):
                env[name] = arr[k]
        for s in self.learn_initial:
            for name in self.layer_names(s):
                env.setdefault(name, np.broadcast_to(
                    self._params[f"init_{name}"], (B, self.cell.states[s])))
        return {name: env[name] if name in env else np.zeros((B, w), self.dtype)
                for name, w in widths.items()}

    # ------------------------------------------------------------ running
    def program(self, steps: int, train: bool = False, stage: int = 0,
                **kw) -> tuple[Program, Unrolled]:
        """The unrolled program for ``steps`` (cached), with the loss if ``loss`` is given;
        ``train``: of the cell with dropout masks; a bidirectional model has one per
        layer (``stage``), without the loss."""
        cell = self.cell_for(train, stage)
        key = (steps, id(cell)) + tuple(sorted(kw.items()))
        if key not in self._programs:
            from .losses import add_loss

            loss, at = kw.pop("loss", None), kw.pop("at", "all")
            un = unroll(cell, steps, dtype=self.dtype, **kw)
            prog = un.program if loss is None else add_loss(un, loss, at)
            if len(self._programs) > 16:
                self._programs.clear()
            self._programs[key] = (prog, un)
        return self._programs[key]

    def unrolled(self, steps: int, dtype: str | None = None, masked: bool = False,
                 truncate: int | None = None, print_after_all: bool = False) -> Unrolled:
        """The whole model over ``steps`` (``rnn.unroll(model)``): its stacked cell; for a
        bidirectional one, every layer both ways in time order (``unroll_both_ways``)."""
        dtype = self.dtype if dtype is None else check_dtype_name(dtype)
        if not self.bidirectional:
            return unroll(self.full, steps, dtype=dtype, masked=masked, truncate=truncate,
                          print_after_all=print_after_all)
        if masked:
            raise ValueError("a bidirectional model reverses each sequence within its own "
                             "length, so its program in time order is for whole sequences: "
                             "unroll it without masked=True (bptt and forward take the mask)")
        un = unroll_both_ways(self, positive_int("steps", steps), dtype, truncate)
        if print_after_all:
            cut = (f", each direction cut every {truncate} of its steps"
                   if truncate and truncate < steps else "")
            print(f"# unrolled in time order{cut}\n{un.program}")
        return un

    def feed(self, un: Unrolled, xs: np.ndarray, initial_state=None, mask=None) -> dict:
        """The values of the unrolled program's inputs: ``xs`` packed (B, T, w) as the
        inputs of ``un.cell`` (masks included), parameters, initial values, mask."""
        env = {p: v for p, v in self._params.items() if p in un.params}
        for x, a in self.split_inputs(xs, un.cell).items():
            for t in range(xs.shape[1]):
                env[f"{x}@{t}"] = a[:, t]
        env.update(self.initial_env(un, xs.shape[0], initial_state))
        if mask is not None:
            for t in range(xs.shape[1]):
                env[f"mask@{t}"] = mask[:, t, None]
        return env

    def plan(self, masked: bool = False, train: bool = False, stage: int = 0):
        """The loop plan of the whole stack (rnn/program/loop.py), compiled once; None
        (with a warning: the reference interpreter runs instead) when the cell has
        something the loop compiler does not generate."""
        cell = self.cell_for(train, stage)
        key = masked if cell is self.full else (masked, id(cell))
        if key not in self._plans:
            try:
                self._plans[key] = Plan(cell, self.dtype, masked)
            except Unsupported as e:
                warnings.warn(f"the loop compiler does not handle this cell ({e}); the "
                              f"reference interpreter runs it", RuntimeWarning, stacklevel=3)
                self._plans[key] = None
        return self._plans[key]

    def loop_inputs(self, plan, xs, initial_state=None, mask=None, carried=None):
        """What a plan runs on: inputs (T, B, w) and initial values (B, w)."""
        feed = {x: np.ascontiguousarray(a.transpose(1, 0, 2))
                for x, a in self.split_inputs(xs, plan.cell).items()}
        if mask is not None:
            feed["mask"] = np.ascontiguousarray(mask.T[:, :, None])
        widths = {s: plan.step.widths[s] for s in plan.step.states}
        init = self.initial_values(xs.shape[0], initial_state, widths)
        init.update(carried or {})
        return feed, init

    def step_params(self, plan) -> dict[str, np.ndarray]:
        return {p: self._params[p] for p in plan.step.params}

    def with_masks(self, xs: np.ndarray, rng, stage: int = 0) -> np.ndarray:
        """``xs`` packed with fresh dropout masks: what the training cell takes."""
        m = self.masks(self.cell_for(True, stage), xs.shape[0], xs.shape[1], rng)
        return xs if m is None else np.concatenate([xs, m], axis=-1)

    def forward(self, xs, initial_state=None, mask=None, executor: str = "compiled",
                batch_first: bool = True):
        """Run the model: xs (B, T, I) -> ys (B, T, O) and the final state of every layer.
        ``batch_first=False``: xs (T, B, I), mask (T, B) -> ys (T, B, O), as torch; the
        state keeps its shape. A cell with several inputs takes a dict of arrays.
        Dropout never acts here (only in training)."""
        check_executor(executor)
        xs = self.check_xs(xs, batch_first)
        if mask is not None and not batch_first:
            mask = np.asarray(mask).T
        ys, final = self._forward(xs, initial_state, mask, executor)
        return (ys if batch_first else ys.swapaxes(0, 1)), final

    def _forward(self, xs, initial_state, mask, executor):
        mask = check_mask(mask, xs.shape[:2], self.dtype, self.full)
        if self.bidirectional:
            run = BiRun(self, xs, initial_state, mask, executor)
            return run.outputs().transpose(1, 0, 2), self.split_layers(run.final)
        names = [n for s in self.cell.states for n in self.layer_names(s)]
        plan = self.plan(mask is not None) if executor == "compiled" else None
        if plan is not None:
            feed, init = self.loop_inputs(plan, xs, initial_state, mask)
            vals = plan.forward(feed, self.step_params(plan), init)
            ys = vals[self.full.outputs[0]].transpose(1, 0, 2)
            return ys, self.split_layers({n: vals[n][-1] for n in names})
        prog, un = self.program(xs.shape[1], masked=mask is not None)
        final = {un.values[n][-1].name for n in names}
        vals = REFERENCE.forward(prog, self.feed(un, xs, initial_state, mask),
                                           keep=final)
        ys = np.stack([vals[v.name] for v in un.outputs()], axis=1)
        last = {n: vals[un.values[n][-1].name] for n in names}
        return ys, self.split_layers(last)

    def predict(self, xs, initial_state=None, mask=None, executor: str = "compiled",
                batch_first: bool = True) -> np.ndarray:
        """The outputs alone, for inference: ``forward(xs)[0]`` (dropout, where a model
        has it, acts only in training and never here).

        >>> import numpy as np, rnn
        >>> m = rnn.Model(rnn.cells.gru(2, 4), head=1)
        >>> m.predict(np.zeros((3, 5, 2))).shape, m.predict(np.zeros((5, 3, 2)),
        ...                                                  batch_first=False).shape
        ((3, 5, 1), (5, 3, 1))
        """
        return self.forward(xs, initial_state, mask, executor, batch_first)[0]

    def generate(self, x0, steps: int, temperature: float = 1.0, seed=None,
                 kind: str = "values", initial_state=None, executor: str = "compiled"):
        """One-to-many: run on ``x0`` and then feed each output back as the next input,
        for ``steps`` outputs in all; the recurrent state is carried from step to step
        (nothing is re-run). The output size must equal the input size.

        ``x0`` is the first input, (B, I), or a primer sequence (B, T0, I) whose last
        output is the first one generated. ``kind`` says what an output is:

        - ``"values"`` (regression): the output itself is the next input; returns the
          outputs (B, steps, O). ``temperature`` and ``seed`` play no part.
        - ``"classes"`` (a head trained with cross_entropy: outputs are logits): the next
          input is the one-hot vector of a class drawn from softmax(logits /
          temperature) (the argmax at ``temperature=0``; ``seed`` makes draws
          reproducible); ``x0`` may be class indices (B,) or (B, T0). Returns the outputs
          (B, steps, O) and the classes drawn, (B, steps).

        >>> import numpy as np, rnn
        >>> m = rnn.Model(rnn.cells.lstm(4, 8), head=4)
        >>> logits, chars = m.generate(np.array([0, 2]), steps=6, kind="classes", seed=0)
        >>> logits.shape, chars.shape
        ((2, 6, 4), (2, 6))
        """
        steps = positive_int("steps", steps)
        if kind not in ("values", "classes"):
            raise ValueError(f"kind must be 'values' (the output is the next input) or "
                             f"'classes' (a class drawn from the logits is), got {kind!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
                not 0 <= temperature < np.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        I, O = self.input_size, self.output_size
        if O != I:
            raise ShapeError(f"generate feeds each output back as the next input, so the "
                             f"output size must equal the input size; this model maps {I} "
                             f"features to {O} (give it head={I}, or loop over forward "
                             f"with your own feedback)")
        x0 = np.asarray(x0)
        if kind == "classes" and x0.dtype.kind in "iu":
            if x0.ndim not in (1, 2) or x0.size == 0 or x0.min() < 0 or x0.max() >= I:
                raise ValueError(f"class indices x0 must be (B,) or (B, T0) in [0, {I}), got "
                                 f"shape {x0.shape}" + (f", values {x0.min()}..{x0.max()}"
                                                        if x0.size else ""))
            x0 = np.eye(I, dtype=self.dtype)[x0]
        if x0.ndim == 2:
            x0 = x0[:, None]
        xs = self.check_xs(x0)
        B = xs.shape[0]
        rng = np.random.default_rng(seed)
        run = self._stepper(executor)
        ys, carry = run(xs, initial_state, None)
        out = np.empty((B, steps, O), self.dtype)
        drawn = np.empty((B, steps), np.int64)
        eye = np.eye(I, dtype=self.dtype)
        for t in range(steps):
            y = out[:, t] = ys[:, -1]
            if kind == "classes":
                drawn[:, t] = sample(y, temperature, rng)
                y = eye[drawn[:, t]]
            if t + 1 < steps:
                ys, carry = run(y[:, None], None, carry)
        return (out, drawn) if kind == "classes" else out

    def _stepper(self, executor: str):
        """run(xs, initial_state, carry) -> (ys, carry): the model on xs (B, T, I) from
        the values ``carry`` holds (or from the initial state when it is None), and the
        values the next call needs: every value read at t-1 (states, delayed outputs and
        inputs). A cell that reads further back than t-1 is re-run from the start."""
        check_executor(executor)
        if self.bidirectional:
            raise ValueError("generate runs forward in time, one step after another; a "
                             "bidirectional model needs the whole sequence first")
        cell = self.full
        deepest = max((a.delay for nd in cell.nodes for a in nd.args if isinstance(a, Ref)),
                      default=0)
        if deepest > 1:
            def rerun(xs, initial_state, carry):
                seq, init = (xs, initial_state) if carry is None else (
                    np.concatenate([carry[0], xs], axis=1), carry[1])
                return self._forward(seq, init, None, executor)[0][:, -xs.shape[1]:], \
                    (seq, init)
            return rerun
        plan = self.plan(False) if executor == "compiled" else None
        out = cell.outputs[0]

        def run(xs, initial_state, carry):
            if plan is not None:
                feed, init = self.loop_inputs(plan, xs, initial_state, None, carry)
                vals = plan.forward(feed, self.step_params(plan), init)
                ys = vals[out].transpose(1, 0, 2)
                new = {n: vals[n][-1] for n in plan.step.states if n not in cell.inputs}
            else:
                prog, un = self.program(xs.shape[1])
                env = self.feed(un, xs, initial_state)
                env.update({f"{n}@init": v for n, v in (carry or {}).items()})
                names = [n for n in un.init if n in un.values]
                keep = {un.values[n][-1].name for n in names}
                vals = REFERENCE.forward(prog, env, keep=keep)
                ys = np.stack([vals[v.name] for v in un.outputs()], axis=1)
                new = {n: vals[un.values[n][-1].name] for n in names}
            parts = self.split_inputs(xs, cell)
            new.update({x: parts[x][:, -1] for x in cell.input_delays})
            return ys, new
        return run

    __call__ = forward


class BiRun:
    """A bidirectional model on one batch, layer after layer. Each layer's two
    directions run as one cell (bi_layer_cell): the reverse one over the inputs
    reversed within each sequence's own length (``mask``: as PyTorch's packed
    sequences, so padding never reaches it). Their outputs are put back in time order
    and concatenated [forward, backward] for the layer above (through dropout when
    training) and the head. Keeps what ``backward`` needs.

    At a padded step t >= length the outputs repeat those at length - 1, as a masked
    step of a one-way model carries its values."""

    def __init__(self, model: Model, xs, initial_state, mask, executor: str, rng=None,
                 truncate=None):
        B, T, _ = xs.shape
        self.model, self.mask, self.truncate = model, mask, truncate
        t = np.arange(T)
        if mask is None:
            lengths = np.full((B, 1), T)
        else:
            lengths = mask.sum(axis=1).astype(np.int64)[:, None]
            if not np.array_equal(mask, (t < lengths).astype(mask.dtype)):
                raise ValueError("a bidirectional model reverses each sequence within its "
                                 "length: its mask must be 1s then 0s in every row (padding "
                                 "at the end, as pack_padded_sequence's lengths)")
        self.rev = np.where(t < lengths, lengths - 1 - t, t)  # reverse step s reads time rev
        self.back = np.where(t < lengths, lengths - 1 - t, 0)  # time t: reverse step back
        first = next(iter(model.inputs))
        others = xs[..., model.inputs[first]:]  # a cell's other inputs feed every layer
        self.stages, self.drops = [], []
        inp = xs
        for k in range(model.layers):
            packed = np.concatenate([inp, np.take_along_axis(inp, self.rev[..., None], 1)],
                                    axis=-1)
            if rng is not None:
                packed = model.with_masks(packed, rng, stage=k)
            stage = _Stage(model, k, rng is not None, executor, mask, truncate)
            yf, yr = stage.forward(packed, initial_state)
            z = np.concatenate([yf.transpose(1, 0, 2),
                                np.take_along_axis(yr.transpose(1, 0, 2),
                                                   self.back[..., None], 1)], axis=-1)
            drop = None
            if rng is not None and model.dropout and k < model.layers - 1:
                drop = dropout_mask(rng, z.shape, model.dropout, model.dtype)
                z = z * drop
            self.stages.append(stage)
            self.drops.append(drop)
            inp = z if k == model.layers - 1 else np.concatenate([z, others], axis=-1)
        self.top = z
        if model.head is not None:
            p = model._params
            z = z @ p["head_weight"].T + p["head_bias"]
        self.Y = np.ascontiguousarray(z.transpose(1, 0, 2))  # (T, B, O)
        self.final = {n: v for st in self.stages for n, v in st.final.items()}

    def outputs(self) -> np.ndarray:
        return self.Y

    def backward(self, dY: np.ndarray):
        """dL/d(parameters), dL/d(initial values) {name@init}, per-step state norms, from
        dY (T, B, O) = dL/d(outputs)."""
        model, B = self.model, self.Y.shape[1]
        grads: dict[str, np.ndarray] = {}
        dZ = dY.transpose(1, 0, 2)
        if model.head is not None:
            grads["head_weight"] = np.einsum("bto,btj->oj", dZ, self.top)
            grads["head_bias"] = dZ.sum(axis=(0, 1))
            dZ = dZ @ model._params["head_weight"]
        ginit, norms = {}, {}
        rows = np.arange(B)[:, None]
        for k in range(model.layers - 1, -1, -1):
            st = self.stages[k]
            if self.drops[k] is not None:
                dZ = dZ * self.drops[k]
            H = dZ.shape[-1] // 2
            seed_r = np.zeros_like(dZ[..., H:])
            np.add.at(seed_r, (rows, self.back), dZ[..., H:])
            g, gi, nm, din = st.backward(
                {st.outs[0]: np.ascontiguousarray(dZ[..., :H].transpose(1, 0, 2)),
                 st.outs[1]: np.ascontiguousarray(seed_r.transpose(1, 0, 2))}, k > 0)
            grads.update(g)
            ginit.update(gi)
            norms.update(nm)
            if k:
                df, dr = (d.transpose(1, 0, 2) for d in din)
                dZ = (df + np.take_along_axis(dr, self.rev[..., None], 1))[..., :2 * H]
        return grads, ginit, norms


class _Stage:
    """One bidirectional layer run by an executor: its plan (compiled) or its unrolled
    program (reference), the values of the forward pass, and its reverse mode."""

    def __init__(self, model: Model, k: int, train: bool, executor: str, mask, truncate):
        self.model, self.k, self.train, self.mask, self.K = model, k, train, mask, truncate
        self.cell = model.cell_for(train, k)
        self.outs = self.cell.outputs
        x = next(iter(model.inputs))
        self.taps = [f"{x}_l{k}.in", f"{x}_l{k}_reverse.in"]
        self.states = [n for s in model.cell.states for n in model.layer_names(s)
                       if n in self.cell.states]
        self.plan = model.plan(mask is not None, train, k) if executor == "compiled" else None

    def forward(self, packed: np.ndarray, initial_state):
        model, T = self.model, packed.shape[1]
        if self.plan is not None:
            self.feed, self.init = model.loop_inputs(self.plan, packed, initial_state,
                                                     self.mask)
            self.params = model.step_params(self.plan)
            self.vals = self.plan.forward(self.feed, self.params, self.init)
            self.final = {n: self.vals[n][-1] for n in self.states}
            return [self.vals[o] for o in self.outs]
        self.prog, self.un = model.program(T, self.train, self.k, masked=self.mask is not None,
                                           truncate=self.K)
        self.vals = REFERENCE.forward(self.prog, model.feed(self.un, packed, initial_state,
                                                            self.mask))
        self.final = {n: self.vals[self.un.values[n][-1].name] for n in self.states}
        return [np.stack([self.vals[v.name] for v in self.un.outputs(o)]) for o in self.outs]

    def backward(self, seeds: dict, inputs: bool):
        """(param grads, {state@init: grad}, {state: (T,) norms}, [dL/d tap (T, B, w)] for
        the forward and reverse first input when ``inputs``)."""
        if self.plan is not None:
            g, gi, norms, kept = self.plan.backward(self.vals, seeds, self.params, self.init,
                                                    truncate=self.K, keep_adjoints=inputs)
            din = [kept[t] for t in self.taps] if inputs else None
            return (g, {f"{n}@init": gi[n] for n in self.states}, {n: norms[n] for n in
                                                                     self.states}, din)
        un, T = self.un, self.un.steps
        env = {v.name: seeds[o][t] for o in self.outs for t, v in enumerate(un.outputs(o))}
        where = {v.name: (v.node, t) for n in self.states for t, v in enumerate(un.values[n])}
        norms = {n: np.zeros(T) for n in self.states}

        def seen(var, g):
            hit = where.get(var.name)
            if hit is not None:
                norms[hit[0]][hit[1]] = np.linalg.norm(g)

        adj = REFERENCE.backward(self.prog, self.vals, env, seen)
        g = {p: adj[p] for p in un.params if p in adj}
        gi = {f"{n}@init": adj[f"{n}@init"] for n in self.states if f"{n}@init" in adj}
        din = None
        if inputs:
            din = [np.stack([adj.get(v.name, np.zeros_like(self.vals[v.name]))
                             for v in un.values[t]]) for t in self.taps]
        return g, gi, norms, din


def _probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"{name} is a probability in [0, 1), got {p!r}")
    return float(p)


def dropout_mask(rng, shape: tuple, p: float, dtype) -> np.ndarray:
    """Inverted dropout: each element 0 with probability ``p``, else 1/(1-p) (mean 1).

    >>> m = dropout_mask(np.random.default_rng(0), (1000, 100), 0.25, "float64")
    >>> sorted(set(m.ravel().tolist())), bool(abs(m.mean() - 1) < 0.01)
    ([0.0, 1.3333333333333333], True)
    """
    keep = rng.random(shape) >= p
    return keep.astype(dtype) * np.asarray(1 / (1 - p), dtype)


def sample(logits: np.ndarray, temperature: float, rng) -> np.ndarray:
    """One class per row of ``logits`` (B, C), drawn from softmax(logits / temperature);
    the argmax (the first, on ties) at temperature 0."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = np.asarray(logits, np.float64)
    with np.errstate(over="ignore"):  # -inf at a tiny temperature: probability 0
        z = (z - z.max(axis=-1, keepdims=True)) / temperature  # <= 0: exp cannot overflow
    p = np.exp(z)
    c = np.cumsum(p / p.sum(axis=-1, keepdims=True), axis=-1)
    c[:, -1] = 1.0  # u < 1 always finds a class, whatever the rounding
    u = rng.random(len(c))
    return (u[:, None] < c).argmax(axis=-1)


def check_mask(mask, bt, dtype, cell=None):
    """``mask`` as a (B, T) array of 0/1 in ``dtype``, or a clear error."""
    if mask is None:
        return None
    if cell is not None:
        check_mask_name(cell)
    mask = np.asarray(mask)
    if mask.shape != tuple(bt):
        raise ShapeError(f"mask must be (B, T) = {tuple(bt)}, got {mask.shape}")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must hold only 0 and 1")
    return counting(mask.astype(dtype))


def counting(mask: np.ndarray) -> np.ndarray:
    """A checked ``mask`` if it counts some step (a batch's loss needs one), else a
    ValueError."""
    if not mask.any():
        raise ValueError("mask is all zeros: no step would count")
    return mask
