"""The cell equation language: text -> a list of cell nodes, parsed with ``ast``, never run.

A cell node is one primitive applied to references ``Ref(name, delay)`` and numeric
literals. ``h = tanh(W @ x + U @ h[t-1] + b)`` becomes

    h.1 = matvec W x
    h.2 = matvec U h[t-1]
    h.3 = add h.1 h.2
    h.4 = add h.3 b
    h   = tanh h.4
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass

from engine.errors import CellError

UNARY = {"tanh", "sigmoid", "relu", "exp", "log", "softplus", "softmax", "sum", "mean"}
FUNCS = UNARY | {"split", "concat"}
BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matvec"}
FOLD = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
        "matvec": operator.matmul}
FOLD_CALL = {  # functions of a number literal are computed when parsing
    "tanh": math.tanh, "sigmoid": lambda v: 1 / (1 + math.exp(-v)), "relu": lambda v: max(v, 0),
    "exp": math.exp, "log": math.log, "sum": lambda v: v, "mean": lambda v: v,
    "softplus": lambda v: max(v, 0) + math.log1p(math.exp(-abs(v))), "softmax": lambda v: 1.0,
}
SYNTAX_NAMES = {
    ast.Attribute: "attribute access (a.b)", ast.Lambda: "lambda", ast.Import: "import",
    ast.ImportFrom: "import", ast.Compare: "comparison", ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression", ast.List: "list", ast.Dict: "dict",
    ast.FunctionDef: "function definition", ast.For: "for loop", ast.If: "if statement",
    ast.AugAssign: "augmented assignment (+=)", ast.Expr: "bare expression (no '=')",
    ast.Starred: "starred expression", ast.JoinedStr: "f-string", ast.While: "while loop",
}


@dataclass(frozen=True)
class Ref:
    """A read of ``name`` at time t - delay."""

    name: str
    delay: int = 0

    def __str__(self):
        return self.name if self.delay == 0 else f"{self.name}[t-{self.delay}]"


@dataclass(frozen=True)
class Node:
    """``out = op(*args)`` at time t; args are Refs and floats."""

    out: str
    op: str
    args: tuple
    params: tuple = ()
    line: int = 0
    col: int = 0
    target: str = ""  # the equation variable this node belongs to

    def __str__(self):
        ps = "".join(f" {k}={v}" for k, v in self.params)
        return f"{self.out} = {self.op}{ps} " + " ".join(str(a) for a in self.args)


def _syntax(node) -> CellError:
    what = SYNTAX_NAMES.get(type(node), type(node).__name__)
    return CellError(f"unsupported syntax: {what}; a cell is equations like "
                     f"'h = tanh(W @ x + U @ h[t-1] + b)'", node.lineno, node.col_offset + 1)


def _err(msg, node) -> CellError:
    return CellError(msg, node.lineno, node.col_offset + 1)


def _delay(sub: ast.Subscript) -> int:
    s = sub.slice
    if isinstance(s, ast.Name) and s.id == "t":
        return 0
    if (isinstance(s, ast.BinOp) and isinstance(s.left, ast.Name) and s.left.id == "t"
            and isinstance(s.op, (ast.Sub, ast.Add)) and isinstance(s.right, ast.Constant)):
        k = s.right.value
        if not isinstance(k, int) or isinstance(k, bool):
            raise _err(f"bad delay: the delay in v[t-k] must be an integer, got {k!r}", sub)
        k = k if isinstance(s.op, ast.Sub) else -k
        if k < 1:
            raise _err(f"bad delay: v[t-k] needs k >= 1 (a value from the past), got "
                       f"{ast.unparse(s)}", sub)
        return k
    raise _err(f"bad delay: write v[t] or v[t-k] with an integer k >= 1, got "
               f"'{ast.unparse(sub)}'", sub)


class _Lower:
    """Walks one equation's expression, emitting nodes named target.1, target.2, ..."""

    def __init__(self, target: str, line: int):
        self.target, self.line, self.nodes, self.n = target, line, [], 0

    def emit(self, op, args, node, params=(), out=None):
        if out is None:
            self.n += 1
            out = f"{self.target}.{self.n}"
        self.nodes.append(Node(out, op, tuple(args), tuple(params), node.lineno,
                               node.col_offset + 1, self.target))
        return Ref(out)

    def expr(self, node):  # recursion over a small expression tree, never over a graph
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                return float(node.value)
            raise _err(f"unsupported literal {node.value!r}: only numbers", node)
        if isinstance(node, ast.Name):
            if node.id == "t":
                raise _err("'t' is the time index: use it only inside v[t-k]", node)
            return Ref(node.id)
        if isinstance(node, ast.Subscript):
            if not isinstance(node.value, ast.Name):
                raise _err("only a name can be read at a time step, as in h[t-1]", node)
            return Ref(node.value.id, _delay(node))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.expr(node.operand)
            if isinstance(node.op, ast.UAdd):
                return v
            return -v if isinstance(v, float) else self.emit("neg", [v], node)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                p = self.expr(node.right)
                if not isinstance(p, float):
                    raise _err("the exponent of ** must be a number", node.right)
                return self.emit("pow", [self.expr(node.left)], node, (("p", p),))
            op = BINOPS.get(type(node.op))
            if op is None:
                raise _err(f"unsupported operator {type(node.op).__name__}; use + - * / @ **",
                           node)
            left = node.left
            if (op == "matvec" and isinstance(left, ast.UnaryOp)
                    and isinstance(left.op, ast.USub)):  # -W @ x is -(W @ x), as in math
                inner = ast.copy_location(ast.BinOp(left.operand, node.op, node.right), node)
                return self.emit("neg", [self.expr(inner)], node)
            a, b = self.expr(left), self.expr(node.right)
            if isinstance(a, float) and isinstance(b, float):
                return float(FOLD[op](a, b))
            if op == "matvec" and not (isinstance(a, Ref) and isinstance(b, Ref)):
                raise _err("@ takes a parameter matrix on the left and a vector on the right",
                           node)
            return self.emit(op, [a, b], node)
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in FUNCS:
                shown = name or ast.unparse(node.func)
                raise _err(f"unsupported syntax: call to unknown function '{shown}'; known: "
                           f"{', '.join(sorted(FUNCS))}", node)
            if node.keywords:
                raise _err(f"{name}() takes no keyword arguments", node)
            if name == "split":
                raise _err("split(v, n) must be the whole right side: 'a, b = split(v, 2)'",
                           node)
            args = [self.expr(a) for a in node.args]
            if name in UNARY and len(args) != 1:
                raise _err(f"{name}() takes one argument, got {len(args)}", node)
            if name == "concat" and len(args) < 2:
                raise _err("concat() takes two or more vectors", node)
            if name in FOLD_CALL and isinstance(args[0], float):  # tanh(0.5): a number
                try:
                    return float(FOLD_CALL[name](args[0]))
                except (ValueError, OverflowError):
                    raise _err(f"{name}({args[0]!r}) has no finite value", node) from None
            if any(isinstance(a, float) for a in args):
                raise _err(f"{name}() takes vectors, not number literals", node)
            return self.emit(name, args, node)
        raise _syntax(node)


def parse(text: str) -> list[Node]:
    """Parse equations into cell nodes (in text order). Errors name line and column."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise CellError(f"not an equation: {e.msg}", e.lineno, e.offset) from None
    nodes: list[Node] = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign):
            raise _syntax(stmt)
        if len(stmt.targets) != 1:
            raise _err("one '=' per equation", stmt)
        tgt = stmt.targets[0]
        if isinstance(tgt, ast.Tuple):
            names = [e.id for e in tgt.elts if isinstance(e, ast.Name)]
            call = stmt.value
            if (len(names) != len(tgt.elts) or not isinstance(call, ast.Call)
                    or not isinstance(call.func, ast.Name) or call.func.id != "split"):
                raise _err("several names on the left need 'a, b, ... = split(v, n)'", stmt)
            if (len(call.args) != 2 or not isinstance(call.args[1], ast.Constant)
                    or call.args[1].value != len(names)):
                raise _err(f"split(v, n) here needs n = {len(names)}, the number of names on "
                           f"the left", call)
            low = _Lower(names[0], stmt.lineno)
            src = low.expr(call.args[0])
            if not isinstance(src, Ref):
                raise _err("split() of a number literal", call)
            nodes += low.nodes
            for i, nm in enumerate(names):
                nodes.append(Node(nm, "split", (src,), (("n", len(names)), ("i", i)),
                                  tgt.elts[i].lineno, tgt.elts[i].col_offset + 1, nm))
            continue
        if isinstance(tgt, ast.Subscript):
            raise _err("define a variable at time t without an index: 'h = ...', not 'h[t] = ...'",
                       tgt)
        if not isinstance(tgt, ast.Name):
            raise _syntax(tgt)
        low = _Lower(tgt.id, stmt.lineno)
        v = low.expr(stmt.value)
        if isinstance(v, float) or low.nodes == [] or low.nodes[-1].out != v.name:
            low.emit("copy", [v], stmt.value, out=tgt.id)  # h = x, h = 1.0: a plain copy
        else:
            last = low.nodes.pop()
            low.nodes.append(Node(tgt.id, last.op, last.args, last.params, last.line, last.col,
                                  tgt.id))
        nodes += low.nodes
    return nodes
