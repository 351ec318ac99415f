"""Hypothesis strategies shared by the tests."""

import numpy as np
from hypothesis import strategies as st

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)


@st.composite
def broadcastable_pair(draw):
    """Two shapes that numpy broadcasts: drop leading dims or set some to 1."""
    full = draw(st.lists(dims, min_size=1, max_size=3).map(tuple))
    def variant():
        cut = draw(st.integers(0, len(full)))
        return tuple(1 if draw(st.booleans()) else d for d in full[cut:])
    return variant(), variant()


def arrays(shape, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


# ---------------------------------------------------------------- cells (tests/fuzz)
# Random cells that check and run (mostly), and mutations of their text that mostly do
# not: the fuzzing of tests/test_fuzz.py and tests/fuzz/run.py (make fuzz).

FUNCS_1 = ["tanh", "sigmoid", "relu", "softplus", "softmax"]


@st.composite
def random_cells(draw, max_depth=3):
    """A random valid-ish cell: {"text", "inputs", "states", "sizes"}. Up to three
    equations before ``h``, delays 1 to 3 on states and inputs, a second state c, split,
    concat, sum, mean, softmax, literals and parameters shared between places."""
    names = iter(range(10 ** 6))
    nx_, hid = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    two_states = draw(st.booleans())
    defined: list[str] = []

    def param(prefix):  # a fresh name, or one already used (shared weights)
        return f"{prefix}{draw(st.integers(0, 2)) if draw(st.booleans()) else next(names)}"

    def leaf():
        opts = [f"({param('W')} @ x)", f"({param('U')} @ h[t-1])", "h[t-1]", param("b"),
                f"({param('V')} @ x[t-{draw(st.integers(1, 2))}])",
                f"h[t-{draw(st.integers(2, 3))}]"]
        opts += defined + (["c[t-1]", f"({param('C')} @ c[t-2])"] if two_states else [])
        return draw(st.sampled_from(opts))

    def expr(d):
        kind = draw(st.sampled_from(["leaf"] * 2 + (["unary", "binary", "binary", "special"]
                                                    if d > 0 else [])))
        if kind == "leaf":
            return leaf()
        if kind == "unary":
            f = draw(st.sampled_from(FUNCS_1 + ["-", "exp(-softplus", "log(1.5 + sigmoid"]))
            inner = expr(d - 1)
            return {"-": f"(-{inner})", "exp(-softplus": f"exp(-softplus({inner}))",
                    "log(1.5 + sigmoid": f"log(1.5 + sigmoid({inner}))"}.get(f, f"{f}({inner})")
        if kind == "binary":
            a, b = expr(d - 1), expr(d - 1)
            op = draw(st.sampled_from(["+", "-", "*", "/", "**", "lit"]))
            if op == "/":
                return f"({a} / (1.5 + sigmoid({b})))"
            if op == "**":
                return f"(sigmoid({a}) ** {draw(st.sampled_from(['2.0', '3', '0.5', '-1.0']))})"
            if op == "lit":
                lit = draw(st.sampled_from(["0.5", "2", "-1.0", "1e-3", "(1 - 0.25)", "tanh(0.5)"]))
                return f"({lit} * {a} + {b})"
            return f"({a} {op} {b})"
        special = draw(st.sampled_from(["sum", "mean", "concat", "alpha"]))
        a, b = f"({expr(d - 1)} + h[t-1])", expr(d - 1)  # a reduction of data, not weights
        if special in ("sum", "mean"):
            return f"({special}({a}) * {b})"
        if special == "concat":
            return f"({param('M')} @ concat({a}, {b}))"
        return f"({param('alpha')} * sum({a}) + {b})"

    lines = []
    for v in ["a", "p", "g"][:draw(st.integers(0, 3))]:
        if v == "p" and draw(st.booleans()):
            lines.append(f"p, q = split({param('Z')} @ concat(h[t-1], x), 2)")
            defined += ["p", "q"]
            continue
        lines.append(f"{v} = {expr(max_depth - 1)}")
        defined.append(v)
    if two_states:
        lines.append(f"c = sigmoid({expr(1)}) * c[t-1] + tanh({expr(1)})")
        defined.append("c")
    out = draw(st.sampled_from(["tanh", "sigmoid", ""]))
    lines.append(f"h = {out}({expr(max_depth)} + {param('W')} @ x)")
    states = {"h": hid}
    if two_states:
        states["c"] = hid
    sizes = {v: hid for v in defined if v != "c"}
    return {"text": "\n".join(lines), "inputs": {"x": nx_}, "states": states, "sizes": sizes}


# pieces that mutations put into a cell's text: every token of the language, wrong ones,
# literals at and past float range, deep nesting, unicode, lone surrogates and controls
TOKENS = (["+", "-", "*", "/", "@", "**", "%", "//", "~", "<", "==", " and ", " not ", "|",
           "(", ")", "[", "]", "{", "}", ",", "=", ":", ";", ".", "...", "'", '"', "#", "\\",
           "\n", "\r\n", "\r", "\t", "  ", "\x0c", "\0", " if x else ", "lambda: ", ":="]
          + ["x", "h", "c", "t", "W", "U", "b", "q", "p", "a", "g", "y", "alpha", "weight_ih",
             "__import__", "os", "print", "foo", "self", "None", "True", "False"]
          + ["tanh", "sigmoid", "relu", "exp", "log", "softplus", "softmax", "split", "concat",
             "sum", "mean", "layernorm", "split(h, 2)", "concat(x, x)", "layernorm(h)",
             "sum(x)", "mean(h[t-1])", "softmax(sum(x))"]
          + ["[t]", "[t-1]", "[t-2]", "[t-0]", "[t+1]", "[t-1.5]", "[t-True]", "[t-2**70]",
             "[t-" + "9" * 30 + "]", "[1]", "[t-1][t-1]", "[t-1, 2]", "[:]", "[t-(1)]", "[t--1]"]
          + ["0", "1", "2", "0.5", "-0.0", "1e309", "-1e309", "1e308", "1.8e308", "5e-324",
             "9" * 400, "1" + "0" * 5000, "0x10", "0b1", "1_000", "1j", "nan", "inf",
             "1e-400", "(1 / 0)", "(0.0 ** -1)", "(2.0 ** 2000)", "exp(1000.0)", "log(0.0)",
             "sigmoid(-1000.0)", "softplus(-1000.0)", "softplus(1e308)", "tanh(1e308)",
             "(-8.0) ** 0.5", "'s'", "b'x'", "f'{x}'", "[]", "{}", "()"]
          + ["\u0127", "\u03a9", "\uff48", "\u210e", "\u00a0", "\u2028", "\ufeff",
             "\U0001f600", "\u0301", "\u200b", "\x85", "\ud800", "\udfff", "\udc80"])
WRAPS = ["tanh", "sigmoid", "relu", "exp", "log", "softplus", "softmax", "sum", "mean",
         "layernorm", "concat", "split", "-", "+", "foo", "(", "[", "W @ "]


def _tokens(text: str) -> list[str]:
    import re
    return re.findall(r"\w+|\s+|\*\*|//|\[t-\d+\]|.", text, flags=re.S) or [""]


@st.composite
def mutated_text(draw, text: str):
    """``text`` with one to four mutations: a token inserted, deleted, replaced or
    duplicated, a span wrapped in a call or in deep brackets, lines swapped or repeated."""
    toks = _tokens(text)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(toks) - 1))
        j = draw(st.integers(i, min(len(toks), i + 12)))
        op = draw(st.sampled_from(["ins", "ins", "del", "rep", "rep", "dup", "wrap", "deep",
                                   "lines", "chars", "number"]))
        if op == "ins":
            toks.insert(i, draw(st.sampled_from(TOKENS)))
        elif op == "del":
            del toks[i:j]
        elif op == "rep":
            toks[i] = draw(st.sampled_from(TOKENS))
        elif op == "dup":
            toks[i:i] = toks[i:j]
        elif op == "wrap":
            f = draw(st.sampled_from(WRAPS))
            close = {"(": ")", "[": "]", "W @ ": ""}.get(f, ")")
            opening = f if f in ("(", "[", "W @ ") else f + "("
            extra = draw(st.sampled_from(["", "", ", 2", ", x", ", h[t-1]"]))
            toks[i:j] = [opening, *toks[i:j], extra, close]
        elif op == "deep":
            n = draw(st.sampled_from([2, 50, 199, 200, 201, 1000, 3000]))
            kind = draw(st.sampled_from(["(", "-", "tanh(", "[t]"]))
            if kind == "[t]":
                toks[j:j] = ["[t]"] * n
            else:
                toks[i:j] = [kind * n, *toks[i:j], ")" * n if kind != "-" else ""]
        elif op == "lines":
            lines = "".join(toks).split("\n")
            k = draw(st.integers(0, len(lines) - 1))
            how = draw(st.sampled_from(["repeat", "drop", "swap", "semicolons", "many"]))
            if how == "repeat":
                lines.insert(k, lines[k])
            elif how == "drop" and len(lines) > 1:
                del lines[k]
            elif how == "swap":
                lines[0], lines[k] = lines[k], lines[0]
            elif how == "many":
                lines = lines * draw(st.sampled_from([2, 10, 200]))
            text2 = "; ".join(lines) if how == "semicolons" else "\n".join(lines)
            toks = _tokens(text2)
        elif op == "chars":
            toks[i] = draw(st.text(max_size=4))
        else:
            toks[i] = draw(st.one_of(st.floats().map(repr), st.integers().map(str),
                                     st.integers(-10 ** 400, 10 ** 400).map(str)))
    return "".join(toks)


BUILTIN_TEXTS = [
    "h = tanh(weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh)",
    "z = weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh\ni, f, g, o = split(z, 4)\n"
    "c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)\nh = sigmoid(o) * tanh(c)",
    "gi = weight_ih @ x + bias_ih\ngh = weight_hh @ h[t-1] + bias_hh\ni_r, i_z, i_n = split(gi, 3)"
    "\nh_r, h_z, h_n = split(gh, 3)\nr = sigmoid(i_r + h_r)\nz = sigmoid(i_z + h_z)\n"
    "n = tanh(i_n + r * h_n)\nh = (1 - z) * n + z * h[t-1]",
]


@st.composite
def cell_cases(draw):
    """A case for the equation parser: a random cell (a third), its text mutated (about
    60%), or any text at all; small sizes, sometimes wrong."""
    r = draw(st.integers(0, 99))
    if r < 5:
        return {"text": draw(st.text(max_size=60)), "inputs": {"x": 2}, "states": {"h": 2},
                "sizes": {}}
    case = draw(random_cells())
    if r < 12:
        case["text"] = draw(st.sampled_from(BUILTIN_TEXTS))
        case["states"] = {"h": 4} if "split(z, 4)" not in case["text"] else {"h": 2, "c": 2}
        case["states"] = {"h": 3} if "split(gi, 3)" in case["text"] else case["states"]
    if r >= 40:
        case["text"] = draw(mutated_text(case["text"]))
    if draw(st.integers(0, 19)) == 0:  # sizes: wrong names, wrong values
        weird = st.sampled_from([0, -1, 1, 2, 3, True, 2.0, "3", None, 7])
        key = st.sampled_from(["h", "c", "a", "p", "x", "zz", "W0", "t"])
        case[draw(st.sampled_from(["states", "sizes"]))] = draw(st.dictionaries(key, weird,
                                                                               max_size=3))
    return case


# ---------------------------------------------------------------- model files (tests/fuzz)
# A model-file case is a base file (by index) and mutations at three levels, applied by
# tests/fuzz/targets.py: of the model (metadata, spec, cell text, arrays, written by
# safetensors itself, with the checksum recomputed or not), of the header JSON (dtypes,
# shapes, offsets, names twice, padding, the length prefix), and of the bytes.

JSON_VALUES = [0, -1, 1, 2, 3, 4, 7, 1024, 1025, 30000, 10 ** 9, 10 ** 12, 2 ** 63, 2 ** 64,
               -(2 ** 63), 1.5, 1e400, -1e400, True, False, None, "", "x", "h", "float16", "f16",
               "float32", "float64", "complex128", "V8", "object", "O", [], {}, [1], ["h"],
               ["h", "h"], ["zz"], ["x"], [[1]], {"x": 3}, {"x": 0}, {"x": 10 ** 9},
               {"x": 3, "u": 2}, {"h": 30000}, {"h": 4}, {"h": 4, "c": 4}, {"zz": 4},
               {"h": "4"}, {"h": -1}, {"h": 2.0}, {"h": None}, {"x": [3]}]
SPEC_FIELDS = ["inputs", "states", "outputs", "sizes", "layers", "head", "dtype",
               "learn_initial", "extra"]
META_KEYS = ["format", "version", "sha256", "cell", "spec", "info", "extra"]
META_VALUES = ["", "unroll.model", "unroll.checkpoint", "1", "2", "1.0", " 1", "0" * 64,
               "{}", "[]", "null", "[" * 5000 + "]" * 5000, '{"a": 1, "a": 2}',
               "1" * 5000, "NaN", "h = tanh(x)", "h = __import__('os').system('true')",
               "\ud800", "\0", "\u0127 = tanh(W @ x)"]
HEADER_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32",
                 "U64", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "F4", "Q99", "", "f64", 5, None,
                 ["F64"]]
HEADER_SHAPES = [[], [0], [1], [-1], [2], [4], [16], [4, 4], [2 ** 63], [2 ** 64],
                 [2 ** 40, 2 ** 40], [2 ** 32, 2 ** 32, 2], [1.5], ["3"], None, [[1]], 3,
                 [1] * 100, [0, 2 ** 62]]
HEADER_OFFSETS = [[0, 0], [0, 8], [8, 0], [-1, 8], [0, 2 ** 64], [0, 2 ** 63], [0, 10 ** 9],
                  None, [0], [0, 8, 16], ["0", "8"], [0.0, 8.0], "shift+1", "shift-1",
                  "shift+8", "swap", "grow", "shrink"]
NP_DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool",
             "complex64"]


def _pos():
    return st.integers(0, 2 ** 20)


_model_op = st.one_of(
    st.tuples(st.just("meta"), st.sampled_from(META_KEYS),
              st.one_of(st.none(), st.sampled_from(META_VALUES), st.text(max_size=8))),
    st.tuples(st.just("spec"), st.sampled_from(SPEC_FIELDS),
              st.one_of(st.just("DELETE"), st.sampled_from(JSON_VALUES))),
    st.tuples(st.just("spec"), st.sampled_from(SPEC_FIELDS),
              st.one_of(st.just("DELETE"), st.sampled_from(JSON_VALUES))),
    st.tuples(st.just("retype"), _pos(), st.sampled_from(NP_DTYPES)),
    st.tuples(st.just("reshape"), _pos(), st.sampled_from(
        ["()", "(0,)", "(1,)", "T", "+1", "-1", "(2, n)", "(300, 300)", "flat"])),
    st.tuples(st.just("values"), _pos(), st.sampled_from(
        ["nan", "inf", "-inf", "zeros", "big", "tiny", "random"])),
    st.tuples(st.just("rename"), _pos(), st.sampled_from(
        ["", "x", "W", "weight_ih_l9", "init_h_l0", "head_weight", "bias_ih_l0 ", "\u0127",
         "__metadata__", "a" * 300])),
    st.tuples(st.just("drop"), _pos()),
    st.tuples(st.just("add"), st.sampled_from(["extra", "weight_ih_l1", "head_bias"]),
              st.sampled_from(NP_DTYPES[:3]), st.sampled_from([(), (0,), (3,), (4, 3)])),
)
_header_op = st.one_of(
    st.tuples(st.just("h_dtype"), _pos(), st.sampled_from(HEADER_DTYPES)),
    st.tuples(st.just("h_shape"), _pos(), st.sampled_from(HEADER_SHAPES)),
    st.tuples(st.just("h_offsets"), _pos(), st.sampled_from(HEADER_OFFSETS)),
    st.tuples(st.just("h_meta"), st.sampled_from(META_KEYS + ["__all__"]),
              st.sampled_from([None, 1, [], {}, "x", "DELETE"])),
    st.tuples(st.just("h_dup"), _pos()),
    st.tuples(st.just("h_extra"), st.sampled_from(["__foo__", "x", "", "__metadata__"]),
              st.sampled_from([{}, 5, None, "s", {"dtype": "F64", "shape": [0],
                                                   "data_offsets": [0, 0]}])),
    st.tuples(st.just("h_pad"), st.integers(0, 20), st.sampled_from([" ", "\n", "\t", "\0", "x"])),
    st.tuples(st.just("h_len"), st.sampled_from(
        [-8, -1, 1, 8, 0, 2 ** 63, 2 ** 64 - 1, 16 << 20, (16 << 20) + 1, "file"])),
)
_byte_op = st.one_of(
    st.tuples(st.just("flip"), _pos(), st.integers(0, 7)),
    st.tuples(st.just("flip_head"), _pos(), st.integers(0, 7)),
    st.tuples(st.just("trunc"), _pos()),
    st.tuples(st.just("append"), st.binary(max_size=16)),
    st.tuples(st.just("insert"), _pos(), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _pos(), st.integers(1, 16)),
)


@st.composite
def file_cases(draw, cell_texts: list[str]):
    """A model-file case: {"base": i, "model": [...], "rehash": bool, "cell": text or None,
    "header": [...], "bytes": [...]} or {"random": bytes}. ``cell_texts`` are the base
    files' cells: a case may replace one by a mutation of it or by a random cell."""
    r = draw(st.integers(0, 99))
    if r < 3:
        return {"random": draw(st.binary(max_size=300))}
    case = {"base": draw(st.integers(0, len(cell_texts) - 1)), "model": [], "rehash": False,
            "cell": None, "header": [], "bytes": []}
    kinds = draw(st.sets(st.sampled_from(["model", "model", "cell", "header", "bytes"]),
                         min_size=1, max_size=3))
    if "model" in kinds:
        case["model"] = draw(st.lists(_model_op, min_size=1, max_size=3))
        case["rehash"] = draw(st.integers(0, 3)) > 0
    if "cell" in kinds:
        text = cell_texts[case["base"]]
        case["cell"] = draw(st.one_of(mutated_text(text), mutated_text(text),
                                      random_cells().map(lambda c: c["text"])))
    if "header" in kinds:
        case["header"] = draw(st.lists(_header_op, min_size=1, max_size=3))
    if "bytes" in kinds:
        case["bytes"] = draw(st.lists(_byte_op, min_size=1, max_size=3))
    return case
