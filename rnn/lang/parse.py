"""The cell equation language: text -> a list of cell nodes, parsed with ``ast``, never run.

A cell node is one primitive applied to references ``Ref(name, delay)`` and numeric
literals. ``h = tanh(W @ x + U @ h[t-1] + b)`` becomes

    h.1 = matvec W x
    h.2 = matvec U h[t-1]
    h.3 = add h.1 h.2
    h.4 = add h.3 b
    h   = tanh h.4

Whatever the text, the only error that comes out is a ``CellError`` naming line and
column. Expressions are lowered with an explicit stack, never by recursion, so their
depth is bounded only by Python's own parser (about 3,000 levels, 200 brackets; beyond
that a CellError). Line offsets are computed once, so parsing is linear in the text.
"""

from __future__ import annotations

import ast
import io
import math
import operator
import re
import sys
import tokenize
import warnings
from bisect import bisect_right
from dataclasses import dataclass

from engine.errors import CellError

UNARY = {"tanh", "sigmoid", "relu", "exp", "log", "softplus", "softmax", "layernorm", "sum",
         "mean"}
FUNCS = UNARY | {"split", "concat"}
BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matvec"}
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matvec": "@"}
FOLD = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


def _sigmoid(v: float) -> float:
    if v >= 0:
        return 1 / (1 + math.exp(-v))
    e = math.exp(v)  # never overflows for v < 0: sigmoid(-1000.0) is 0.0, not an error
    return e / (1 + e)


FOLD_CALL = {  # functions of a number literal are computed when parsing
    "tanh": math.tanh, "sigmoid": _sigmoid, "relu": lambda v: max(v, 0.0),
    "exp": math.exp, "log": math.log, "sum": lambda v: v, "mean": lambda v: v,
    "softplus": lambda v: max(v, 0) + math.log1p(math.exp(-abs(v))), "softmax": lambda v: 1.0,
    "layernorm": lambda v: 0.0,  # one number, normalized: its mean is itself
}
SYNTAX_NAMES = {
    ast.Attribute: "attribute access (a.b)", ast.Lambda: "lambda", ast.Import: "import",
    ast.ImportFrom: "import", ast.Compare: "comparison", ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression", ast.List: "list", ast.Dict: "dict",
    ast.FunctionDef: "function definition", ast.For: "for loop", ast.If: "if statement",
    ast.AugAssign: "augmented assignment (+=)", ast.Expr: "bare expression (no '=')",
    ast.Starred: "starred expression", ast.JoinedStr: "f-string", ast.While: "while loop",
    ast.AnnAssign: "annotated assignment (h: ... = ...)", ast.Tuple: "tuple",
    ast.Set: "set", ast.Slice: "slice", ast.NamedExpr: "assignment expression (:=)",
    ast.Invert: "operator ~", ast.Not: "boolean operator 'not'",
}
MAX_SHOWN = 60  # characters of source text quoted in a message


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


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


class Source:
    """The text with its line offsets, computed once: character columns (ast gives
    UTF-8 byte offsets) and source segments of ast nodes in time linear in their length."""

    def __init__(self, text: str):
        self.text = text
        # the tokenizer's newlines: \r\n, \r and \n (not form feeds or \u2028)
        self.starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
        self._ascii: dict[int, bool] = {}
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: Python's parser cannot read it
            line, col = self.where(e.start)
            raise CellError(f"character {text[e.start]!r} is not valid Unicode text (a lone "
                            f"surrogate)", line, col) from None
        if "\0" in text:
            line, col = self.where(text.index("\0"))
            raise CellError("a NUL character ('\\0') in the equations", line, col)

    def where(self, index: int) -> tuple[int, int]:
        """Line and column (both from 1) of a character index into the text."""
        line = bisect_right(self.starts, index)
        return line, index - self.starts[line - 1] + 1

    def line_text(self, lineno: int) -> str:
        end = self.starts[lineno] if lineno < len(self.starts) else len(self.text)
        return self.text[self.starts[lineno - 1]:end]

    def char_col(self, lineno: int, byte_col: int) -> int:
        """0-based character column of ast's UTF-8 byte offset on that line."""
        if not 1 <= lineno <= len(self.starts):
            return byte_col
        ascii_ = self._ascii.get(lineno)
        if ascii_ is None:
            ascii_ = self._ascii[lineno] = self.line_text(lineno).isascii()
        if ascii_:
            return byte_col
        return len(self.line_text(lineno).encode("utf-8")[:byte_col].decode("utf-8", "replace"))

    def col(self, node) -> int:
        return self.char_col(node.lineno, node.col_offset) + 1

    def segment(self, node) -> str:
        """The source text of an ast node (what ast.get_source_segment gives)."""
        try:
            a = self.starts[node.lineno - 1] + self.char_col(node.lineno, node.col_offset)
            b = self.starts[node.end_lineno - 1] + self.char_col(node.end_lineno,
                                                                 node.end_col_offset)
        except (AttributeError, IndexError, TypeError):
            return ""
        return self.text[a:b]

    def err(self, msg: str, node) -> CellError:
        return CellError(msg, node.lineno, self.col(node))

    def syntax(self, node, kind=None) -> CellError:
        kind = type(node) if kind is None else kind
        what = SYNTAX_NAMES.get(kind, kind.__name__)
        return self.err(f"unsupported syntax: {what}; a cell is equations like "
                        f"'h = tanh(W @ x + U @ h[t-1] + b)'", node)

    def parse(self) -> ast.Module:
        """ast.parse, with every way it can fail turned into a CellError."""
        try:
            with warnings.catch_warnings():  # e.g. invalid escapes in a string literal
                warnings.simplefilter("ignore")
                return ast.parse(self.text)
        except SyntaxError as e:
            if "integer string conversion" in e.msg:  # an int of over 4,300 digits
                raise self._too_many_digits(e.lineno) from None
            col = e.offset if e.offset is None or e.offset >= 1 else 1  # 0: no column known
            raise CellError(f"not an equation: {e.msg}", e.lineno, col) from None
        except (RecursionError, MemoryError):
            line = self._longest_statement()
            raise CellError("expression too deeply nested for Python's parser (it stops at "
                            "about 3,000 levels: a sum of that many terms, or that many signs "
                            "or powers in a row); split it into several equations",
                            line, 1 if line else None) from None
        except (ValueError, OverflowError, UnicodeError) as e:
            raise CellError(f"not an equation: {e}") from None

    def _too_many_digits(self, lineno: int | None) -> CellError:
        """Python's parser refuses an integer literal of more digits than
        sys.get_int_max_str_digits() and says so at column 0 with advice for Python
        programmers; name the number and where it is instead."""
        limit = sys.get_int_max_str_digits()
        text = self.line_text(lineno) if lineno and 1 <= lineno <= len(self.starts) else ""
        m = next((m for m in re.finditer(r"(?<![\w.])\d[\d_]*", text)
                  if len(m.group().replace("_", "")) > limit), None)
        col = m.start() + 1 if m else 1
        n = len(m.group().replace("_", "")) if m else None
        return CellError(f"the number {_short(m.group()) if m else ''} has {n or 'too many'} "
                         f"digits, more than the {limit:,} Python reads as an integer (and far "
                         f"beyond a float's largest, about 1.8e308)", lineno, col)

    def _longest_statement(self) -> int | None:
        """The first line of the statement with the most tokens (tokenize is iterative)."""
        best, best_n, start, n = None, -1, None, 0
        try:
            for tok in tokenize.generate_tokens(io.StringIO(self.text).readline):
                if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                    if start is not None and n > best_n:
                        best, best_n = start, n
                    start, n = None, 0
                elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT,
                                      tokenize.DEDENT):
                    start = tok.start[0] if start is None else start
                    n += 1
        except (tokenize.TokenError, SyntaxError, ValueError):
            return None
        return best


def _delay(src: Source, sub: ast.Subscript) -> int:
    s = sub.slice
    if isinstance(s, ast.Name) and s.id == "t":
        return 0
    if (isinstance(s, ast.BinOp) and isinstance(s.left, ast.Name) and s.left.id == "t"
            and isinstance(s.op, (ast.Sub, ast.Add)) and isinstance(s.right, ast.Constant)):
        k = s.right.value
        if not isinstance(k, int) or isinstance(k, bool):
            raise src.err(f"bad delay: the delay in v[t-k] must be an integer, got "
                          f"{_short(repr(k))}", sub)
        k = k if isinstance(s.op, ast.Sub) else -k
        if k < 1:
            raise src.err(f"bad delay: v[t-k] needs k >= 1 (a value from the past), got "
                          f"{_short(src.segment(s))}", sub)
        return k
    raise src.err(f"bad delay: write v[t] or v[t-k] with an integer k >= 1, got "
                  f"'{_short(src.segment(sub))}'", sub)


class _Lower:
    """Lowers one equation's expression, emitting nodes named target.1, target.2, ...

    The walk is post-order, left to right (the exponent of ** first), with an explicit
    stack: no recursion, whatever the depth of the expression."""

    def __init__(self, src: Source, target: str):
        self.src, self.target, self.nodes, self.n = src, target, [], 0

    def emit(self, op, args, node, params=(), out=None):
        if out is None:
            self.n += 1
            out = f"{self.target}.{self.n}"
        self.nodes.append(Node(out, op, tuple(args), tuple(params), node.lineno,
                               self.src.col(node), self.target))
        return Ref(out)

    def expr(self, root):
        todo: list = [(root, None)]  # (node, None): to enter; (node, (kind, n)): to finish
        vals: list = []
        while todo:
            node, done = todo.pop()
            if done is None:
                leaf, kids, kind = self.enter(node)
                if kids is None:
                    vals.append(leaf)
                else:
                    todo.append((node, (kind, len(kids))))
                    todo.extend((k, None) for k in reversed(kids))
            else:
                kind, n = done
                args = vals[len(vals) - n:]
                del vals[len(vals) - n:]
                vals.append(self.finish(node, kind, args))
        return vals[0]

    def enter(self, node):
        """(leaf value, None, None) for a leaf, else (None, children in order, kind)."""
        src = self.src
        if isinstance(node, ast.Constant):
            return self.number(node), None, None
        if isinstance(node, ast.Name):
            if node.id == "t":
                raise src.err("'t' is the time index: use it only inside v[t-k]", node)
            return Ref(node.id), None, None
        if isinstance(node, ast.Subscript):
            if not isinstance(node.value, ast.Name):
                raise src.err("only a name can be read at a time step, as in h[t-1]", node)
            if node.value.id == "t":
                raise src.err("'t' is the time index: it has no past", node)
            return Ref(node.value.id, _delay(src, node)), None, None
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return None, [node.operand], "neg"
            if isinstance(node.op, ast.UAdd):
                return None, [node.operand], "pos"
            raise src.syntax(node, type(node.op))  # ~x, not x
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                return None, [node.right, node.left], "pow"
            op = BINOPS.get(type(node.op))
            if op is None:
                raise src.err(f"unsupported operator {type(node.op).__name__}; use "
                              f"+ - * / @ **", node)
            left = node.left
            if op == "matvec" and isinstance(left, ast.UnaryOp) and isinstance(left.op, ast.USub):
                return None, [left.operand, node.right], "negmatvec"  # -W @ x is -(W @ x)
            return None, [left, node.right], op
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in FUNCS:
                shown = name or _short(src.segment(node.func))
                raise src.err(f"unsupported syntax: call to unknown function '{shown}'; known: "
                              f"{', '.join(sorted(FUNCS))}", node)
            if node.keywords:
                raise src.err(f"{name}() takes no keyword arguments", node)
            if name == "split":
                raise src.err("split(v, n) must be the whole right side: 'a, b = split(v, 2)'",
                              node)
            return None, list(node.args), name
        raise src.syntax(node)

    def number(self, node: ast.Constant) -> float:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.src.err(f"unsupported literal {_short(repr(v))}: only numbers", node)
        try:
            f = float(v)
        except OverflowError:
            raise self.src.err(f"the number {_short(self.src.segment(node))} is too large "
                               f"for a float (the largest is about 1.8e308)", node) from None
        if not math.isfinite(f):
            raise self.src.err(f"the number {_short(self.src.segment(node))} is not finite "
                               f"({f}); write a finite number", node)
        return f

    def fold(self, fn, args, node) -> float:
        """A function of numbers, computed now; an error unless it is a finite float."""
        shown = _short(self.src.segment(node))
        try:
            v = fn(*args)
        except ZeroDivisionError:
            raise self.src.err(f"{shown}: division by zero", node) from None
        except (OverflowError, ValueError):
            raise self.src.err(f"{shown} has no finite value", node) from None
        if isinstance(v, complex):
            raise self.src.err(f"{shown} is not a real number (it gives {v})", node)
        if not math.isfinite(v):
            raise self.src.err(f"{shown} has no finite value (it gives {v})", node)
        return float(v)

    def finish(self, node, kind, args):
        src = self.src
        if kind == "pos":
            return args[0]
        if kind == "neg":
            v = args[0]
            return -v if isinstance(v, float) else self.emit("neg", [v], node)
        if kind == "pow":
            p, base = args
            if not isinstance(p, float):
                raise src.err("the exponent of ** must be a number", node.right)
            if isinstance(base, float):
                return self.fold(operator.pow, (base, p), node)
            return self.emit("pow", [base], node, (("p", p),))
        if kind in ("negmatvec", "matvec"):
            a, b = args
            if not (isinstance(a, Ref) and isinstance(b, Ref)):
                raise src.err("@ takes a parameter matrix on the left and a vector on the "
                              "right, not a number", node)
            out = self.emit("matvec", [a, b], node)
            return out if kind == "matvec" else self.emit("neg", [out], node)
        if kind in FOLD:
            a, b = args
            if isinstance(a, float) and isinstance(b, float):
                return self.fold(FOLD[kind], (a, b), node)
            return self.emit(kind, [a, b], node)
        name = kind  # a call
        if name in UNARY and len(args) != 1:
            raise src.err(f"{name}() takes one argument, got {len(args)}", node)
        if name == "concat" and len(args) < 2:
            raise src.err("concat() takes two or more vectors", node)
        if name in FOLD_CALL and isinstance(args[0], float):  # tanh(0.5): a number
            return self.fold(FOLD_CALL[name], args, node)
        if any(isinstance(a, float) for a in args):
            raise src.err(f"{name}() takes vectors, not number literals", node)
        return self.emit(name, args, node)


def parse_equations(text: str) -> tuple[list[Node], dict[str, str]]:
    """Parse equations into cell nodes (in text order) and each defined variable's
    equation text. Every error is a CellError naming line and column."""
    src = Source(text)
    tree = src.parse()
    nodes: list[Node] = []
    sources: dict[str, str] = {}
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign):
            raise src.syntax(stmt)
        if len(stmt.targets) != 1:
            raise src.err("one '=' per equation", stmt)
        tgt = stmt.targets[0]
        seg = src.segment(stmt)
        if isinstance(tgt, ast.Tuple):
            names = [e.id for e in tgt.elts if isinstance(e, ast.Name)]
            call = stmt.value
            if (len(names) != len(tgt.elts) or not isinstance(call, ast.Call)
                    or not isinstance(call.func, ast.Name) or call.func.id != "split"):
                raise src.err("several names on the left need 'a, b, ... = split(v, n)'", stmt)
            if call.keywords:
                raise src.err("split() takes no keyword arguments", call)
            n = call.args[1].value if len(call.args) == 2 and isinstance(
                call.args[1], ast.Constant) else None
            if isinstance(n, bool) or not isinstance(n, (int, float)) or n != len(names):
                raise src.err(f"split(v, n) here needs n = {len(names)}, the number of names "
                              f"on the left", call)
            for e in tgt.elts:
                if e.id == "t":
                    raise src.err("'t' is the time index: it cannot be defined", e)
            low = _Lower(src, names[0])
            val = low.expr(call.args[0])
            if not isinstance(val, Ref):
                raise src.err("split() of a number literal", call)
            nodes += low.nodes
            for i, nm in enumerate(names):
                nodes.append(Node(nm, "split", (val,), (("n", len(names)), ("i", i)),
                                  tgt.elts[i].lineno, src.col(tgt.elts[i]), nm))
                sources[nm] = seg
            continue
        if isinstance(tgt, ast.Subscript):
            raise src.err("define a variable at time t without an index: 'h = ...', not "
                          "'h[t] = ...'", tgt)
        if not isinstance(tgt, ast.Name):
            raise src.syntax(tgt)
        if tgt.id == "t":
            raise src.err("'t' is the time index: it cannot be defined", tgt)
        low = _Lower(src, tgt.id)
        v = low.expr(stmt.value)
        if isinstance(v, float) or low.nodes == [] or low.nodes[-1].out != v.name:
            low.emit("copy", [v], stmt.value, out=tgt.id)  # h = x, h = 1.0: a plain copy
        else:
            last = low.nodes.pop()
            low.nodes.append(Node(tgt.id, last.op, last.args, last.params, last.line, last.col,
                                  tgt.id))
        nodes += low.nodes
        sources[tgt.id] = seg
    return nodes, sources


def parse(text: str) -> list[Node]:
    """Parse equations into cell nodes (in text order). Errors name line and column."""
    return parse_equations(text)[0]
