"""A model: a cell stacked ``layers`` deep, an optional dense head, and its weights.

Stacking is itself just a cell: layer k's nodes are renamed with ``_l{k}`` and read the
layer below's output where the cell read its input, so the whole model is one cyclic
graph, unrolled by the same compiler.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from engine.errors import DTypeError, ShapeError, all_finite
from engine.ir import Program

from .lang.cell import Cell
from .lang.parse import Ref
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


def _suffix(name: str, k: int) -> str:
    base, dot, rest = name.partition(".")
    return f"{base}_l{k}{dot}{rest}"


def stack_cells(cell: Cell, layers: int, head: int | None) -> Cell:
    """One cell for the whole model: ``layers`` copies of ``cell`` and a dense head."""
    (x,) = cell.inputs
    out = cell.outputs[0]
    out_size = cell.shapes[out][0]
    nodes, sizes, params = [], {}, {}
    for k in range(layers):
        layer = cell if k == 0 else Cell.from_nodes(
            cell.nodes, {x: out_size}, {}, cell.outputs, cell.declared, {}, cell.sources,
            cell.text)

        def rename(n, k=k):
            if n == x:
                return x if k == 0 else f"{out}_l{k - 1}"
            return _suffix(n, k)

        nodes += layer.renamed(rename)
        sizes.update({rename(v): n for v, n in {**layer.declared, **layer.states}.items()})
        params.update({rename(p): s for p, s in layer.params.items()})
    top = f"{out}_l{layers - 1}"
    outputs = [top]
    if head is not None:
        dense = Cell.from_equations("y = head_weight @ h + head_bias", inputs={"h": out_size},
                                    sizes={"y": head})
        nodes += dense.renamed(lambda n: top if n == "h" else n)
        params.update(dense.params)
        outputs = ["y"]
    return Cell.from_nodes(nodes, {x: cell.inputs[x]}, {}, outputs, sizes, params, {}, "")


class Model:
    """A stacked recurrent model with PyTorch's parameter names and initialization.

    >>> from rnn import cells
    >>> m = Model(cells.lstm(3, 8), layers=2, head=1)
    >>> sorted(m.params)[:2], m.params["weight_ih_l1"].shape
    (['bias_hh_l0', 'bias_hh_l1'], (32, 8))
    """

    def __init__(self, cell: Cell, layers: int = 1, head: int | None = None,
                 dtype: str = "float64", seed: int = 0, learn_initial=()):
        if not isinstance(cell, Cell):
            raise TypeError(f"Model needs a Cell (e.g. rnn.cells.lstm(1, 16)), got "
                            f"{type(cell).__name__}")
        if len(cell.inputs) != 1:
            raise ValueError(f"a Model's cell takes one input, this one has {list(cell.inputs)}")
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
        self.cell, self.layers, self.head = cell, layers, head
        self.learn_initial = tuple(learn_initial)
        self.dtype = dtype
        self.full = stack_cells(cell, layers, head)
        self.input_size = next(iter(cell.inputs.values()))
        self.output_size = self.full.shapes[self.full.outputs[0]][0]
        self._layer_names: dict[str, tuple[str, ...]] = {}
        check_param_sizes(self.full.params, dtype)
        self._params = self.init_params(seed)  # the weights; model.params is a read-only view
        self._programs: dict[tuple, tuple[Program, Unrolled]] = {}
        self._plans: dict[bool, Plan | None] = {}

    @property
    def params(self) -> Params:
        """{name: array}, read-only (arrays too): ``load_params`` sets weights."""
        return Params(self._params)

    @params.setter
    def params(self, value):
        raise TypeError("model.params is read-only: model.load_params(mapping, strict=True) "
                        "is the only way weights go in")

    def __repr__(self):
        n = sum(p.size for p in self._params.values())
        return (f"Model({self.input_size} -> {self.output_size}, layers={self.layers}, "
                f"head={self.head}, states={list(self.cell.states)}, {n} parameters, "
                f"{self.dtype})")

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        """PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)), H the hidden size (fan-in for the
        head)."""
        rng = np.random.default_rng(seed)
        out_size = self.cell.shapes[self.cell.outputs[0]][0]
        hidden = next(iter(self.cell.declared.values()), out_size)
        out = {}
        for p, shape in self.full.params.items():
            bound = 1 / np.sqrt(out_size if p.startswith("head_") else hidden)
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
        """The per-layer names of a state of the cell: h -> (h_l0, h_l1, ...)."""
        names = self._layer_names.get(state)
        if names is None:
            names = self._layer_names[state] = tuple(_suffix(state, k)
                                                     for k in range(self.layers))
        return names

    def split_layers(self, per_layer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{h_l0: a, h_l1: b} -> {h: a} for one layer, {h: stack([a, b])} for more."""
        out = {}
        for s in self.cell.states:
            arrs = [per_layer[n] for n in self.layer_names(s)]
            out[s] = arrs[0] if self.layers == 1 else np.stack(arrs)
        return out

    # ------------------------------------------------------------ checks
    def check_xs(self, xs, batch_first: bool = True) -> np.ndarray:
        """``xs`` checked, as a (B, T, I) array: with ``batch_first=False`` it comes
        time-major, (T, B, I), and the result is a batch-major view of it."""
        xs = np.asarray(xs)
        layout = ("(batch, time, features) = (B, T, {})" if batch_first else
                  "(time, batch, features) = (T, B, {}) (batch_first=False)")
        if xs.ndim != 3:
            raise ShapeError(f"xs must be {layout.format(self.input_size)}, got shape "
                             f"{xs.shape}")
        given = xs.shape
        if not batch_first:
            xs = xs.swapaxes(0, 1)
        if xs.shape[1] == 0:
            raise ShapeError("xs has T = 0 time steps; a sequence needs at least one")
        if xs.shape[0] == 0:
            raise ShapeError("xs has an empty batch (B = 0)")
        if xs.shape[2] != self.input_size:
            raise ShapeError(f"xs has {xs.shape[2]} features per step but the model takes "
                             f"{self.input_size}: expected {layout.format(self.input_size)}, "
                             f"got {given}")
        self.check_dtype("xs", xs)
        if not all_finite(xs):
            raise ValueError("xs holds NaN or inf values")
        return xs

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
            want = (B, H) if self.layers == 1 else (self.layers, B, H)
            if arr.shape != want:
                raise ShapeError(f"initial_state['{s}'] must be {want}, got {arr.shape}")
            self.check_dtype(f"initial_state['{s}']", arr)
            if not all_finite(arr):
                raise ValueError(f"initial_state['{s}'] holds NaN or inf values")
            for k, name in enumerate(self.layer_names(s)):
                env[name] = arr if self.layers == 1 else arr[k]
        for s in self.learn_initial:
            for name in self.layer_names(s):
                env.setdefault(name, np.broadcast_to(
                    self._params[f"init_{name}"], (B, self.cell.states[s])))
        for name, w in widths.items():
            if name not in env:
                env[name] = np.zeros((B, w), self.dtype)
        return env

    # ------------------------------------------------------------ running
    def program(self, steps: int, **kw) -> tuple[Program, Unrolled]:
        """The unrolled program for ``steps`` (cached), with the loss if ``loss`` is given."""
        key = (steps,) + tuple(sorted(kw.items()))
        if key not in self._programs:
            from .losses import add_loss

            loss, at = kw.pop("loss", None), kw.pop("at", "all")
            un = unroll(self.full, steps, dtype=self.dtype, **kw)
            prog = un.program if loss is None else add_loss(un, loss, at)
            if len(self._programs) > 16:
                self._programs.clear()
            self._programs[key] = (prog, un)
        return self._programs[key]

    def feed(self, un: Unrolled, xs: np.ndarray, initial_state=None, mask=None) -> dict:
        env = {p: v for p, v in self._params.items() if not p.startswith("init_")}
        (x,) = self.full.inputs
        for t in range(xs.shape[1]):
            env[f"{x}@{t}"] = xs[:, t]
        env.update(self.initial_env(un, xs.shape[0], initial_state))
        if mask is not None:
            for t in range(xs.shape[1]):
                env[f"mask@{t}"] = mask[:, t, None]
        return env

    def plan(self, masked: bool = False):
        """The loop plan of the whole stack (rnn/program/loop.py), compiled once; None
        (with a warning: the reference interpreter runs instead) when the cell has
        something the loop compiler does not generate."""
        if masked not in self._plans:
            try:
                self._plans[masked] = Plan(self.full, self.dtype, masked)
            except Unsupported as e:
                warnings.warn(f"the loop compiler does not handle this cell ({e}); the "
                              f"reference interpreter runs it", RuntimeWarning, stacklevel=3)
                self._plans[masked] = None
        return self._plans[masked]

    def loop_inputs(self, plan, xs, initial_state=None, mask=None, carried=None):
        """What a plan runs on: inputs (T, B, w) and initial values (B, w)."""
        (x,) = self.full.inputs
        feed = {x: np.ascontiguousarray(xs.transpose(1, 0, 2))}
        if mask is not None:
            feed["mask"] = np.ascontiguousarray(mask.T[:, :, None])
        widths = {s: plan.step.widths[s] for s in plan.step.states}
        init = self.initial_values(xs.shape[0], initial_state, widths)
        init.update(carried or {})
        return feed, init

    def step_params(self, plan) -> dict[str, np.ndarray]:
        return {p: self._params[p] for p in plan.step.params}

    def forward(self, xs, initial_state=None, mask=None, executor: str = "compiled",
                batch_first: bool = True):
        """Run the model: xs (B, T, I) -> ys (B, T, O) and the final state of every layer.
        ``batch_first=False``: xs (T, B, I), mask (T, B) -> ys (T, B, O), as torch; the
        state keeps its shape."""
        check_executor(executor)
        xs = self.check_xs(xs, batch_first)
        if mask is not None and not batch_first:
            mask = np.asarray(mask).T
        ys, final = self._forward(xs, initial_state, mask, executor)
        return (ys if batch_first else ys.swapaxes(0, 1)), final

    def _forward(self, xs, initial_state, mask, executor):
        mask = check_mask(mask, xs.shape[:2], self.dtype, self.full)
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
            new.update({x: xs[:, -1] for x in cell.input_delays})
            return ys, new
        return run

    __call__ = forward


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
    if not mask.any():
        raise ValueError("mask is all zeros: no step would count")
    return mask.astype(dtype)
