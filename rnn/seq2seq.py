"""Unsynced many-to-many: an encoder hands its final state to a decoder (seq2seq).

Both are unrolled into *one* program: the encoder over the source steps, the decoder
over the target steps, and each decoder state's initial value is an edge from the
encoder's last step (the "bridge"). BPTT then runs through the decoder, across the
bridge, and back through the encoder, end to end.

>>> import rnn
>>> s2s = rnn.Seq2Seq(rnn.cells.gru(3, 8), rnn.cells.gru(1, 8), head=3, out_steps=4)
>>> sorted(s2s.params)[:2]
['decoder.bias_hh_l0', 'decoder.bias_ih_l0']
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.ir import Eqn, Program, Var

from .bptt import BPTTResult
from .lang.cell import Cell
from .losses import add_loss, check_loss, check_targets, loss_weights
from .model import Model, ReadOnlyParams
from .program.executor import REFERENCE, check_executor
from .program.unroll import Unrolled, positive_int, unroll


def prefixed(prog: Program, prefix: str, rename: dict[str, Var] | None = None) -> Program:
    """A copy of ``prog`` with every variable renamed ``prefix + name``; variables in
    ``rename`` are replaced by the given ones (and dropped from the inputs)."""
    rename = dict(rename or {})

    def var(v):
        if v.name in rename:
            return rename[v.name]
        return replace(v, name=prefix + v.name)

    def arg(a):
        return var(a) if isinstance(a, Var) else a

    eqns = tuple(Eqn(var(e.out), e.op, tuple(arg(a) for a in e.inputs), e.params)
                 for e in prog.eqns)
    inputs = tuple(var(v) for v in prog.inputs if v.name not in rename)
    return Program(inputs, eqns, tuple(var(v) for v in prog.outputs))


class Seq2Seq(ReadOnlyParams):
    """An encoder cell and a decoder cell (with a dense head), trained end to end.

    The decoder's states start from the encoder's final states of the same name (or
    as ``bridge={decoder_state: encoder_state}`` says). The decoder reads zeros (a
    "go" input) at every step; its own state carries what it needs. Works with
    ``rnn.bptt`` and ``rnn.fit`` like a Model: xs are the source sequences and targets
    are (B, out_steps, O), or class indices (B, out_steps) for cross-entropy.
    """

    def __init__(self, encoder: Cell, decoder: Cell, head: int, out_steps: int,
                 bridge: dict[str, str] | None = None, dtype: str = "float64", seed: int = 0):
        out_steps = positive_int("out_steps", out_steps)
        self.encoder = Model(encoder, head=None, dtype=dtype, seed=seed)
        self.decoder = Model(decoder, head=head, dtype=dtype, seed=seed + 1)
        self.bridge = bridge or {s: s for s in decoder.states if s in encoder.states}
        for d, e in self.bridge.items():
            if d not in decoder.states or e not in encoder.states:
                raise ValueError(f"bridge {d!r} <- {e!r}: decoder states are "
                                 f"{list(decoder.states)}, encoder states {list(encoder.states)}")
            if decoder.states[d] != encoder.states[e]:
                raise ValueError(f"bridge {d!r} <- {e!r}: sizes {decoder.states[d]} and "
                                 f"{encoder.states[e]} differ")
        self.out_steps, self.dtype = out_steps, self.encoder.dtype
        self.input_size, self.output_size = self.encoder.input_size, self.decoder.output_size
        # the sub-models' own arrays: an optimizer's in-place update reaches both
        self._params = {**{f"encoder.{k}": v for k, v in self.encoder._params.items()},
                        **{f"decoder.{k}": v for k, v in self.decoder._params.items()}}
        self._programs: dict[tuple, tuple] = {}

    def load_params(self, mapping, strict: bool = True) -> None:
        """Set weights from {"encoder.name" / "decoder.name": array}, checked as
        ``Model.load_params`` checks them; nothing is set unless all of it is right."""
        if not hasattr(mapping, "items"):
            raise TypeError(f"load_params takes a mapping of names to arrays, got "
                            f"{type(mapping).__name__}")
        parts: dict[str, dict] = {"encoder": {}, "decoder": {}}
        for k, v in mapping.items():
            part, dot, name = str(k).partition(".")
            if part not in parts or not dot:
                raise ValueError(f"no parameter named {k!r} in this model (names start with "
                                 f"'encoder.' or 'decoder.')")
            parts[part][name] = v
        new = {part: getattr(self, part)._checked_params(sub, strict)  # both, then set
               for part, sub in parts.items()}
        self._sync()
        for part, arrays in new.items():
            for k, a in arrays.items():
                np.copyto(getattr(self, part)._params[k], a)

    def __repr__(self):
        return (f"Seq2Seq(encoder={self.encoder!r}, decoder={self.decoder!r}, "
                f"out_steps={self.out_steps})")

    check_xs = Model.check_xs
    check_dtype = Model.check_dtype

    def program(self, in_steps: int, loss: str | None = None, at: str = "all"):
        key = (in_steps, loss, at)
        if key in self._programs:
            return self._programs[key]
        enc = unroll(self.encoder.full, in_steps, dtype=self.dtype)
        dec = unroll(self.decoder.full, self.out_steps, dtype=self.dtype)
        enc_p = prefixed(enc.program, "encoder.")
        links = {}
        for d, e in self.bridge.items():
            last = enc.values[f"{e}_l0"][-1]
            links[f"{d}_l0@init"] = replace(last, name="encoder." + last.name)
        dec_p = prefixed(dec.program, "decoder.", links)
        prog = Program(enc_p.inputs + dec_p.inputs, enc_p.eqns + dec_p.eqns, dec_p.outputs)
        values = {n: [replace(v, name="decoder." + v.name) for v in vs]
                  for n, vs in dec.values.items()}
        un = Unrolled(self.decoder.full, self.out_steps, prog, {}, {}, {}, values)
        if loss is not None:
            prog = add_loss(un, loss, at)
        self._programs[key] = (prog, un, enc, dec)
        return self._programs[key]

    def _env(self, enc, dec, xs):
        B = xs.shape[0]
        env = {f"encoder.{k}": v for k, v in self.encoder.feed(enc, xs).items()}
        go = np.zeros((B, self.out_steps, self.decoder.input_size), self.dtype)
        env.update({f"decoder.{k}": v for k, v in self.decoder.feed(dec, go).items()})
        return env

    def _plans(self, executor):
        if check_executor(executor) != "compiled":
            return None
        enc, dec = self.encoder.plan(), self.decoder.plan()
        return None if enc is None or dec is None else (enc, dec)

    def _loop_forward(self, plans, xs):
        """Encoder loop, then decoder loop from the encoder's final states."""
        enc, dec = plans
        feed, init = self.encoder.loop_inputs(enc, xs)
        evals = enc.forward(feed, self.encoder.step_params(enc), init)
        go = np.zeros((xs.shape[0], self.out_steps, self.decoder.input_size), self.dtype)
        dfeed, dinit = self.decoder.loop_inputs(dec, go)
        for d, e in self.bridge.items():
            dinit[f"{d}_l0"] = evals[f"{e}_l0"][-1]
        dvals = dec.forward(dfeed, self.decoder.step_params(dec), dinit)
        return evals, init, dvals, dinit

    def forward(self, xs, executor: str = "compiled"):
        """xs (B, T_in, I) -> decoder outputs (B, out_steps, O)."""
        xs = self.check_xs(xs)
        self._sync()
        plans = self._plans(executor)
        if plans is not None:
            dvals = self._loop_forward(plans, xs)[2]
            return dvals[self.decoder.full.outputs[0]].transpose(1, 0, 2)
        prog, un, enc, dec = self.program(xs.shape[1])
        vals = REFERENCE.forward(prog, self._env(enc, dec, xs))
        return np.stack([vals[v.name] for v in un.outputs()], axis=1)

    __call__ = forward

    def _sync(self):
        """``self._params`` stays the one source: the sub-models read their slices of it
        (a gradient check swaps in other arrays by rebinding ``_params``)."""
        for k in self.encoder._params:
            self.encoder._params[k] = self._params[f"encoder.{k}"]
        for k in self.decoder._params:
            self.decoder._params[k] = self._params[f"decoder.{k}"]

    def bptt(self, xs, targets, loss: str = "mse", at: str = "all", executor="compiled",
             **unsupported) -> BPTTResult:
        given = {k: v for k, v in unsupported.items() if v is not None}
        if given:
            raise ValueError(f"Seq2Seq.bptt does not support {sorted(given)}")
        if at != "all":
            raise ValueError("a Seq2Seq model is trained on every decoder step (at='all')")
        xs = self.check_xs(xs)
        self._sync()
        B = xs.shape[0]
        T, O = self.out_steps, self.output_size
        check_loss(loss, at)
        targets = check_targets(loss, at, targets, B, T, O, self.dtype)
        weights = loss_weights(loss, at, B, T, O, None, self.dtype)
        plans = self._plans(executor)
        if plans is not None:
            return self._loop_bptt(plans, xs, targets, weights, loss)
        prog, un, enc, dec = self.program(xs.shape[1], loss, at)
        env = self._env(enc, dec, xs)
        env["targets"], env["weights"] = targets, weights
        ex = REFERENCE
        vals = ex.forward(prog, env)
        adj = ex.backward(prog, vals, {"loss": np.ones((), self.dtype)})
        grads = {k: adj.get(k, np.zeros_like(v)) for k, v in self._params.items()}
        ys = np.stack([vals[v.name] for v in un.outputs()], axis=1)
        return BPTTResult(float(vals["loss"]), grads, {}, {}, ys, {})

    def _loop_bptt(self, plans, xs, targets, weights, loss) -> BPTTResult:
        """Decoder backward, across the bridge (the adjoint of the decoder's initial
        states seeds the encoder's final step), then encoder backward."""
        from .bptt import _loss

        enc, dec = plans
        evals, einit, dvals, dinit = self._loop_forward(plans, xs)
        out = self.decoder.full.outputs[0]
        lval, dY = _loss(self.decoder, dvals[out], targets, weights, loss, "all")
        dgrads, dginit, _, _ = dec.backward(dvals, {out: dY}, self.decoder.step_params(dec),
                                            dinit)
        seeds = {}
        for d, e in self.bridge.items():
            seed = seeds.setdefault(f"{e}_l0", np.zeros_like(evals[f"{e}_l0"]))
            seed[-1] += dginit[f"{d}_l0"]
        egrads = enc.backward(evals, seeds, self.encoder.step_params(enc), einit)[0]
        grads = {f"encoder.{k}": egrads.get(k, np.zeros_like(v))
                 for k, v in self.encoder._params.items()}
        grads.update({f"decoder.{k}": dgrads.get(k, np.zeros_like(v))
                      for k, v in self.decoder._params.items()})
        return BPTTResult(lval, grads, {}, {}, dvals[out].transpose(1, 0, 2), {})
