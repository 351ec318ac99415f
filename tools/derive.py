"""The backward recurrence of a cell, as equations: ``unroll derive CELL``.

Reverse mode over one step of the cell, written out in the cell language's notation
instead of run. Every line comes from the same rules the compiled loops use (the
elementwise VJPs of rnn.program.loop.BACKWARD; the matrix product's ``dW += g x^T``,
``dx += W^T g``), applied to the cell's primitives in reverse order, so that what is
printed is what the engine computes (tests/test_derive.py evaluates the text and
compares it with ``rnn.bptt``). Nothing here is written per cell.

Notation, per example (vectors; the batch is summed into the parameters):

- ``dv`` is dL/dv at step t. ``dv[t]`` is what the loss at step t and the later steps
  sent to v; a line ``dv[t-k] += e`` sends ``e`` back to step t-k: those lines are the
  recurrence through time.
- ``dW += e`` sums a parameter's gradient over t and the batch; ``outer(a, b)`` is
  a b^T.
- Values the cell names are used by name; the primitives the compiler split an equation
  into (``z_1`` for ``z.1``) are written inline when short.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.ops import LAYERNORM_EPS
from rnn.program.loop import BACKWARD, step_of

# how each primitive reads, forward ({0}, {1}: the operands, {p}: an exponent)
SHOW = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "neg": "-{0}", "copy": "{0}", "exp": "exp({0})", "log": "log({0})",
    "tanh": "tanh({0})", "sigmoid": "sigmoid({0})", "relu": "relu({0})",
    "softplus": "softplus({0})", "pow": "{0} ** {p}", "matvec": "{0} @ {1}",
    "sum": "sum({0})", "mean": "mean({0})", "softmax": "softmax({0})",
    "layernorm": "layernorm({0})",
}
INLINE = 32  # a primitive's value or adjoint longer than this gets its own line
_ATOMS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.[]-")


def vjp_rule(op: str, k: int) -> str:
    """The cotangent of operand k of an elementwise ``op``, from the compiler's rule
    (``BACKWARD``), in the notation printed here."""
    if op == "relu":  # the rule is a conditional expression: the same as a 0/1 factor
        return "{g} * ({0} > 0)"
    if op == "pow":
        return "{g} * {p} * {0} ** ({p} - 1)"
    rule = BACKWARD[op][k]
    return rule.replace("ONE", "1").replace("ZERO", "0").replace("_sigmoid", "sigmoid")


def _paren(s: str) -> str:
    """``s`` in parentheses unless it is a name, a number or one call (``tanh(a + b)``)."""
    if set(s) <= _ATOMS:
        return s
    head = s.split("(", 1)[0]
    if head.isidentifier() and s.endswith(")"):
        depth = 0
        for k, ch in enumerate(s):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and ch == ")":
                if k == len(s) - 1:
                    return s  # the call's own parentheses close at the end
                break
    return f"({s})"


@dataclass
class Derivation:
    forward: list = field(default_factory=list)  # lines "v = expr"
    backward: list = field(default_factory=list)  # lines "dv = expr", "dW += expr", ...
    through_time: list = field(default_factory=list)  # the "dv[t-k] += e" lines
    states: tuple = ()
    params: tuple = ()

    def text(self) -> str:
        out = ["forward, one step t (the cell in primitives):"]
        out += ["  " + ln for ln in self.forward]
        out += ["", "backward, one step t = T-1, ..., 0 (dv: dL/dv at step t; dv[t]: what the",
                "loss and later steps sent to v; a parameter's d sums over t and the batch):"]
        out += ["  " + ln for ln in self.backward]
        out += ["", "through time (what step t sends to earlier steps):"]
        for ln in self.through_time:
            how = ("a matrix product: its norm can shrink or grow the gradient at every step"
                   if "@" in ln else "elementwise, no matrix: where its factor is near 1, the"
                   " gradient passes on unchanged")
            out.append(f"  {ln}    # {how}")
        if not self.through_time:
            out.append("  (nothing: no state)")
        return "\n".join(out) + "\n"


def derive(cell) -> Derivation:
    """The backward equations of one step of ``cell`` (an rnn.Cell)."""
    step = step_of(cell, masked=False)
    widths = step.widths
    out = Derivation(states=step.states, params=tuple(step.params))
    shown: dict[str, str] = {}  # node -> how it reads in an expression

    taken = set(widths) | set(step.params)
    pretty = {}
    for v in widths:  # z.1 -> z_1 (z__1 where the cell has a z_1 of its own)
        p = v.replace(".", "_")
        while "." in v and p in taken:
            p = p.replace("_", "__", 1)
        pretty[v] = p

    def name(v: str) -> str:
        return pretty[v]

    def operand(a, by_name=False) -> str:
        if a.kind == "lit":
            return _number(a.value)
        if a.kind == "node" and not a.delay:
            return name(a.name) if by_name else shown[a.name]
        return a.name + (f"[t-{a.delay}]" if a.delay else "")

    for n in step.nodes:  # forward: the listing by names; expressions for inlining
        listed, expr = (_show(n, [operand(a, by) for a in n.args]) for by in (True, False))
        out.forward.append(f"{name(n.out)} = {listed}")
        inline = "." in n.out and len(expr) <= INLINE and n.op != "slice"
        shown[n.out] = expr if inline else name(n.out)

    contribs: dict[str, list] = {}  # node -> [expr] or [("slice", lo, hi, expr)]
    for n in reversed(step.nodes):
        terms = contribs.pop(n.out, [])
        carried = n.out in step.states or n.out in step.outputs
        plain = [t for t in terms if isinstance(t, str)]
        pieces = sorted(t[1:] for t in terms if not isinstance(t, str))
        if pieces:
            ends = [0] + [hi for _, hi, _ in pieces]
            if [lo for lo, _, _ in pieces] == ends[:-1] and ends[-1] == widths[n.out]:
                plain.append(f"concat({', '.join(e for _, _, e in pieces)})")  # a split
            else:
                plain += [f"place({e}, {lo}, {widths[n.out]})" for lo, _, e in pieces]
        total = ([f"d{n.out}[t]"] if carried else []) + plain
        if not total:
            continue  # nothing reaches this value
        expr = " + ".join(total).replace(" + -", " - ")
        users = sum(1 for a in n.args if a.kind in ("node", "param"))
        if total == [f"d{n.out}[t]"]:
            g = total[0]
        elif len(total) == 1 and "." in n.out and (users <= 1 or set(expr) <= _ATOMS) \
                and len(expr) <= INLINE:
            g = expr
        else:
            g = f"d{name(n.out)}"
            out.backward.append(f"{g} = {expr}")
        _send(n, g, operand, widths, step, contribs, out, shown)
    return out


def _send(n, g, operand, widths, step, contribs, out, shown):
    """The cotangents node ``n`` sends its operands, given its adjoint ``g``."""
    gp = _paren(g)
    w = n.width
    for k, a in enumerate(n.args):
        if a.kind in ("lit", "input"):
            continue
        if n.op == "matvec":
            if k == 0:
                out.backward.append(f"d{a.name} += outer({g}, {operand(n.args[1])})")
                continue
            expr = f"{n.args[0].name}.T @ {gp}"
        elif n.op == "slice":
            lo, hi = n.kw["index"][1][0] or 0, n.kw["index"][1][1]
            if a.kind == "node" and not a.delay:
                contribs.setdefault(a.name, []).append(("slice", lo, hi, g))
                continue
            expr = f"place({g}, {lo}, {widths[a.name]})"
        elif n.op == "concat":
            off = sum(widths[b.name] for b in n.args[:k])
            expr = f"{gp}[{off}:{off + widths[a.name]}]"
        elif n.op in ("sum", "mean"):
            expr = gp if n.op == "sum" else f"{gp} / {widths[a.name]}"
        elif n.op == "softmax":
            y = shown[n.out]
            expr = f"{_paren(y)} * ({gp} - sum({gp} * {_paren(y)}))"
        elif n.op == "layernorm":  # var: the biased variance, as the op
            y, x = _paren(shown[n.out]), operand(a)
            expr = (f"({gp} - mean({gp}) - {y} * mean({gp} * {y})) / sqrt(var({x}) + "
                    f"{LAYERNORM_EPS!r})")
        else:
            args = [_paren(operand(b)) for b in n.args]
            expr = vjp_rule(n.op, k).format(*args, g=gp, y=_paren(shown[n.out]),
                                             p=_number(n.kw.get("p", 0.0)))
        wa = widths.get(a.name) if a.kind == "node" else _size(step.params[a.name])
        if wa == 1 and w != 1 and n.op not in ("sum", "mean"):
            expr = f"sum({expr})"  # a scalar broadcast over the vector: its cotangent sums
        if a.kind == "param":
            out.backward.append(f"d{a.name} += {expr}")
        elif a.delay:
            line = f"d{a.name}[t-{a.delay}] += {expr}"
            out.backward.append(line)
            out.through_time.append(line)
        else:
            contribs.setdefault(a.name, []).append(expr)


def _show(n, args) -> str:
    """Primitive ``n`` over operands shown as ``args``."""
    if n.op == "slice":
        lo, hi = n.kw["index"][1][0] or 0, n.kw["index"][1][1]
        return f"{_paren(args[0])}[{lo}:{hi}]"
    if n.op == "concat":
        return f"concat({', '.join(args)})"
    rule = SHOW[n.op]
    if not rule.endswith("({0})"):  # an operator: compound operands in parentheses
        args = [a if n.op == "add" and _product(a) else _paren(a) for a in args]
    return rule.format(*args, p=_number(n.kw.get("p", 0.0)))


def _product(s: str) -> bool:
    """``s`` is a product or quotient at its top level (no + or - outside brackets)."""
    depth = 0
    for k, ch in enumerate(s):
        depth += (ch in "([") - (ch in ")]")
        if depth == 0 and ch in "+-" and k > 0 and s[k - 1] == " ":
            return False
    return not s.startswith("-")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _size(shape) -> int:
    return int(shape[0]) if shape else 1
