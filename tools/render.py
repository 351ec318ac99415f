"""Pictures of cells with graphviz: the folded cell, the unrolled graph, gradient flow.

Every function returns a ``graphviz.Digraph`` (it shows inline in Jupyter); ``save``
writes it as SVG, PNG or DOT. Layout needs Graphviz's ``dot``: the system one when it
is on PATH, otherwise the dot-compatible binary of the ``graphviz-pure`` wheel that
unroll depends on (see ``ensure_dot``).
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import graphviz
import numpy as np

from engine.errors import UnrollError

OP_LABEL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "neg": "-", "matvec": "@",
            "pow": "^", "slice": "split", "copy": "=", "stop_gradient": "cut", "concat": "concat",
            "stack": "stack", "sum": "sum", "mean": "mean"}
COLORS = {"input": "#d9f2d9", "param": "#fff5cc", "state": "#cfe2ff", "var": "#eeeeee",
          "init": "#e8e0f5", "loss": "#ffd6d6", "op": "white"}
FONT = "Helvetica"

# Layout time grows much faster than the graph (graphviz-pure, one core: an unrolled GRU of
# 26 nodes x 12 steps = 312 takes 1 s, x 16 steps = 416 takes 35 s, a 3-layer LSTM over 12
# steps ran 14 minutes). So a drawing of one node per operation, the folded cell or the full
# unrolled graph, has at most MAX_FULL_NODES nodes (a cell's nodes x steps); past it the
# unrolled graph is drawn compact (one box per step and layer), which lays out in
# seconds up to MAX_COMPACT_NODES boxes (steps x layers x directions); past that it is
# refused.
MAX_FULL_NODES = 360
MAX_COMPACT_NODES = 2000
LAYOUT_TIMEOUT_S = 120  # a layout that still runs after this is stopped, with a hint
PROGRESS_NODES = 150  # save(progress=True): a line on stderr before laying out this many
PROGRESS_EVERY_S = 10  # ... and another this often while dot runs
FORMATS = ("svg", "png", "pdf")  # laid out by dot (when the binary has them), and dot/gv


class RenderError(UnrollError, RuntimeError):
    """No way to lay out a graph, or an unknown output format."""


class GraphTooLarge(RenderError, ValueError):
    """A drawing with more nodes than its layout can take in reasonable time."""


class RenderWarning(UserWarning):
    """A large unrolled graph was drawn compact instead of in full."""


# ------------------------------------------------------------------ finding dot
def _trusted(path: Path) -> bool:
    """A file we may execute: it and its folder belong to us or root and nobody else can
    write them (a folder others can write, like /tmp, could have a planted ``dot``)."""
    try:
        for p in (path, path.parent):
            st = p.stat()
            if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o002:
                return False
            if st.st_mode & 0o020 and st.st_gid != os.getgid():  # a group of others
                return False
    except OSError:
        return False
    return os.access(path, os.X_OK) and path.is_file()


def find_dot() -> Path | None:
    """Absolute path of the Graphviz binary: the system's ``dot`` on PATH, else the
    ``graphviz-pure`` binary of the environment unroll runs in. Nothing is linked or put
    on PATH; candidates in folders other users can write are passed over."""
    here = Path(sys.executable).parent
    candidates = [shutil.which("dot"), shutil.which("graphviz-pure"),
                  os.path.join(sysconfig.get_path("scripts"), "graphviz-pure"),
                  here / "graphviz-pure"]
    for c in candidates:
        if c and _trusted(Path(c).resolve()):
            return Path(c).resolve()
    return None


def ensure_dot() -> Path:
    """The Graphviz binary, by absolute path, set as the one the ``graphviz`` package
    runs (so a Digraph shows inline in Jupyter from the first cell). RenderError if none."""
    found = find_dot()
    if found is None:
        raise RenderError("Graphviz 'dot' was not found: `pip install graphviz-pure` (a "
                          "dot-compatible binary) or `apt-get install graphviz`")
    graphviz.backend.dot_command.DOT_BINARY = found
    return found


try:  # at import, so that a Digraph shows inline in Jupyter from the first cell
    ensure_dot()
except RenderError:
    pass  # save() says so when it needs dot


@functools.cache
def dot_formats(dot: Path) -> frozenset[str]:
    """The output formats of the Graphviz binary ``dot``, as ``dot -T?`` lists them
    (graphviz-pure has svg and png but no pdf); empty if it does not say."""
    try:
        out = subprocess.run([str(dot), "-T?"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    listed = re.search(r"Use one of:(.*)", out.stderr + out.stdout)
    return frozenset(f.split(":")[0] for f in listed.group(1).split()) if listed else frozenset()


def _one_of(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def supported_suffixes() -> list[str]:
    """The file suffixes ``save`` can write here: those laid out by the dot found, and .dot."""
    found = find_dot()
    known = dot_formats(found) if found else frozenset()
    return [f".{f}" for f in FORMATS if f in known or (found and not known and f != "pdf")] + [
        ".dot"]


def graph_size(graph: graphviz.Digraph) -> tuple[int, int]:
    """(nodes, edges) of a Digraph, counted from its DOT statements."""
    nodes = edges = 0
    for line in graph.body:
        stmt = line.strip()
        if " -> " in stmt:
            edges += 1
        elif "[" in stmt and not stmt.startswith(("graph ", "node ", "edge ")):
            nodes += 1
    return nodes, edges


def why_not_writable(path: str | os.PathLike) -> str | None:
    """Why the file ``path`` cannot be written, found before any work is done (a folder
    there, a file where a folder should be, no permission); None if it may be written."""
    path = Path(path)
    if path.is_dir():
        return f"'{path}' is a folder; give a file name such as {path / 'graph.svg'}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"'{folder}' is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to write in '{folder}'"
    return None


def check_output(path: str | os.PathLike) -> str:
    """The format ``save`` writes ``path`` in ('svg', 'png', 'dot', ...), or RenderError
    saying why it cannot: an unknown suffix, a format the Graphviz found lacks (pdf for
    graphviz-pure), a folder in the way. Cheap: call it before long work."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("dot", "gv", *FORMATS):
        raise RenderError(f"cannot write '{path.name}': use a "
                          f"{_one_of(supported_suffixes())} file")
    if fmt not in ("dot", "gv"):
        dot = ensure_dot()
        known = dot_formats(dot)
        if known and fmt not in known:
            raise RenderError(f"cannot write '{path.name}': the Graphviz here ({dot.name}) has "
                              f"no {fmt.upper()} output; use a {_one_of(supported_suffixes())} "
                              f"file (or install Graphviz, whose dot writes .{fmt})")
    why = why_not_writable(path)
    if why:
        raise RenderError(f"cannot write '{path}': {why}")
    return fmt


def save(graph: graphviz.Digraph, path: str | os.PathLike, progress: bool = False,
         timeout: float = LAYOUT_TIMEOUT_S) -> Path:
    """Write ``graph`` to ``path``; the suffix picks the format (.svg, .png, .dot, .gv, and
    .pdf where the Graphviz found has it). ``progress``: lines on stderr while a large
    layout runs. A layout still running after ``timeout`` seconds is stopped (RenderError).
    """
    path = Path(path)
    fmt = check_output(path)
    if fmt in ("dot", "gv"):
        _write(path, graph.source.encode("utf-8"))
    else:
        _write(path, _layout(graph, ensure_dot(), fmt, progress, timeout))
    return path


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as e:
        raise RenderError(f"cannot write '{path}': {e.strerror or e}") from None


def _layout(graph, dot: Path, fmt: str, progress: bool, timeout: float) -> bytes:
    """Run ``dot -T fmt`` on the graph's source; lines on stderr while it takes long."""
    nodes, edges = graph_size(graph)

    def say(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    if nodes >= PROGRESS_NODES:
        say(f"laying out {nodes} nodes and {edges} edges with {dot.name} ...")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(dot), "-Kdot", f"-T{fmt}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    data = graph.source.encode("utf-8")
    try:
        while True:
            left = timeout - (time.monotonic() - t0)
            try:
                out, err = proc.communicate(data, timeout=max(0.01, min(PROGRESS_EVERY_S, left)))
                break
            except subprocess.TimeoutExpired:
                data = None  # already sent
                took = time.monotonic() - t0
                if took >= timeout:
                    raise RenderError(
                        f"the layout of {nodes} nodes and {edges} edges did not finish in "
                        f"{timeout:.0f} s and was stopped: draw fewer steps, the compact view, "
                        f"or write a .dot file (no layout) and lay it out elsewhere") from None
                say(f"laying out {nodes} nodes and {edges} edges with {dot.name}: "
                    f"{took:.0f} s so far (stopped at {timeout:.0f} s)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0:
        first = (err.decode("utf-8", "replace").strip().splitlines() or ["no message"])[0]
        raise RenderError(f"{dot.name} failed to lay out the graph ({first})")
    return out


def _digraph(name: str, rankdir: str = "LR", **attrs) -> graphviz.Digraph:
    g = graphviz.Digraph(name)
    g.attr(rankdir=rankdir, fontname=FONT, newrank="true", **attrs)
    g.attr("node", fontname=FONT, fontsize="11", style="filled", fillcolor="white")
    g.attr("edge", fontname=FONT, fontsize="9", arrowsize="0.6")
    return g


def _fmt(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def op_label(op: str | None, consts=()) -> str:
    """An op's symbol with the numbers it takes: ``1 -``, ``^2``, ``split 2/4``."""
    sym = OP_LABEL.get(op, op) or ""
    kw = {k: v for k, v in consts if isinstance(k, str)}
    if op == "pow":
        return f"^{kw['p']:g}"
    if op == "split":
        return f"split {kw['i'] + 1}/{kw['n']}"
    for i, v in consts:
        if isinstance(i, int):
            sym = f"{v:g} {sym}" if i == 0 else f"{sym} {v:g}"
    return sym


def _node_style(kind: str, name: str, op: str | None, shape, consts=()) -> dict:
    tip = f"{name} {_fmt(shape)}" + (f" = {op}" if op else "")
    if kind == "input":
        return dict(label=f"{name}\n{_fmt(shape)}", shape="box", style="rounded,filled",
                    fillcolor=COLORS["input"], tooltip=tip)
    if kind == "param":
        return dict(label=f"{name}\n{_fmt(shape)}", shape="box", fillcolor=COLORS["param"],
                    fontsize="10", tooltip=tip)
    if kind in ("state", "var"):
        return dict(label=f"{name}\n{op_label(op, consts)} {_fmt(shape)}", shape="ellipse",
                    fillcolor=COLORS[kind], penwidth="1.5", tooltip=tip)
    label = op_label(op, consts)
    return dict(label=label, shape="circle" if len(label) <= 2 else "ellipse", width="0.3",
                height="0.3", fixedsize="false", margin="0.02", fontsize="10", tooltip=tip)


# ------------------------------------------------------------------ the folded cell
def cell(cell, title: str | None = None) -> graphviz.Digraph:
    """The folded cell: inputs, parameters, operations, states; the recurrent (delay)
    edges dashed red and labelled ``t-1`` (or ``t-k``). Shapes in labels and on hover."""
    cell = getattr(cell, "cell", cell)
    n = cell.graph.number_of_nodes()
    if n > MAX_FULL_NODES:
        raise GraphTooLarge(f"the folded cell has {n} nodes, more than the "
                            f"{MAX_FULL_NODES} (render.MAX_FULL_NODES) whose layout takes "
                            f"seconds, not minutes; its equations are its readable form")
    g = _digraph("cell", rankdir="LR", label=title or "folded cell: A -> A", labelloc="t")
    colors = palette(cell)  # shared with render.unrolled: c here is c@0, c@1, ... there
    for name, data in cell.graph.nodes(data=True):
        style = _node_style(data["kind"], name, data["op"], data["shape"],
                            data.get("consts", ()))
        if data["kind"] in ("state", "var"):
            style["fillcolor"] = colors.get(_base(name), style["fillcolor"])
        if data.get("output"):
            style["peripheries"] = "2"
        g.node(name, **style)
    for u, v, data in cell.graph.edges(data=True):
        k = data["delay"]
        if k:
            g.edge(u, v, label=f"t-{k}", style="dashed", color="crimson", fontcolor="crimson",
                   penwidth="1.6", constraint="false")
        else:
            kind = cell.graph.nodes[u]["kind"]
            g.edge(u, v, color="#b8a000" if kind == "param" else "black")
    _legend(g, ["dashed red: a delay edge, the value from an earlier step",
                "yellow: parameters, green: inputs; each named value keeps its colour "
                "in the unrolled picture"])
    return g


def _legend(g, lines):
    g.node("legend", label="\\l".join(lines) + "\\l", shape="note", fontsize="9",
           fillcolor="#fafafa", color="#999999")


# ------------------------------------------------------------------ the unrolled graph
def _target(model_or_cell):
    from rnn.model import Model

    if isinstance(model_or_cell, Model):
        return model_or_cell, model_or_cell.full, model_or_cell.layers
    return None, getattr(model_or_cell, "full", model_or_cell), 1


LAYER = re.compile(r"_l(\d+)(?:_reverse)?(?=$|[.@#])")  # h_l1, h_l1_reverse.3, x_l1.in
REVERSE = re.compile(r"_reverse(?=$|[.@#])")  # a bidirectional model's reverse direction


def _layer_of(node: str | None) -> int:
    m = LAYER.search(node or "")
    return int(m.group(1)) if m else 0


def _cells(cell_or_model) -> list:
    """The cells drawn: the (stacked) cell, or a bidirectional model's layers."""
    model, full, _ = _target(cell_or_model)
    return model.stages if model is not None and model.bidirectional else [full]


def full_view_nodes(cell_or_model, steps: int) -> int:
    """The size of the full unrolled drawing: the cell's nodes (all layers) x steps."""
    return sum(c.graph.number_of_nodes() for c in _cells(cell_or_model)) * steps


def choose_compact(cell_or_model, steps: int, compact: bool | None = None) -> bool:
    """Whether the unrolled graph is drawn compact: ``compact`` if given, else for steps
    > 12 or more than MAX_FULL_NODES nodes (a RenderWarning says so when only the size
    decides). GraphTooLarge if the drawing asked for would take minutes to lay out."""
    model, _, layers = _target(cell_or_model)
    rows = layers * (model.directions if model is not None else 1)  # boxes in a step
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    size = full_view_nodes(cell_or_model, steps)
    switched = compact is None and steps <= 12 and size > MAX_FULL_NODES
    if compact is None:
        compact = steps > 12 or size > MAX_FULL_NODES
    elif not compact and size > MAX_FULL_NODES:
        raise GraphTooLarge(f"the full unrolled graph would have {size} nodes (cell nodes x "
                            f"steps), more than render.MAX_FULL_NODES = {MAX_FULL_NODES} whose "
                            f"layout takes seconds, not minutes: draw it compact "
                            f"(compact=True), or at most {max(1, MAX_FULL_NODES * steps // size)}"
                            f" steps")
    if compact and steps * rows > MAX_COMPACT_NODES:
        fix = (f"draw at most {MAX_COMPACT_NODES // rows} steps (the picture of a long "
               f"unroll repeats itself)" if rows <= MAX_COMPACT_NODES else
               f"draw at most {MAX_COMPACT_NODES // (rows // layers)} layers")
        raise GraphTooLarge(f"the compact view of {steps} step{'s' if steps > 1 else ''} x "
                            f"{layers} layer{'s' if layers > 1 else ''}"
                            f"{' x 2 directions' if rows > layers else ''} would have "
                            f"{steps * rows} boxes, more than render.MAX_COMPACT_NODES = "
                            f"{MAX_COMPACT_NODES}: {fix}")
    if switched:
        warnings.warn(f"the unrolled graph would have {size} nodes (cell nodes x steps), "
                      f"more than render.MAX_FULL_NODES = {MAX_FULL_NODES}: drawn compact, "
                      f"one box per step and layer", RenderWarning, stacklevel=3)
    return compact


def unrolled(cell_or_model, steps: int = 4, compact: bool | None = None,
             loss: bool = True, title: str | None = None) -> graphviz.Digraph:
    """The unrolled graph, A -> B: one cluster per time step, left to right; parameters
    drawn once with their tied edges into every step; initial states; the loss.

    ``compact`` (default for steps > 12, or when the full drawing would have more than
    MAX_FULL_NODES nodes) draws each step (and layer) as one node, so T = 200 stays
    readable; stacked layers form a time x depth grid. Drawings too large to lay out in
    seconds raise GraphTooLarge (see ``choose_compact``).
    """
    import rnn

    model, full, layers = _target(cell_or_model)
    compact = choose_compact(cell_or_model, steps, compact)
    if compact:
        states = [s for c in _cells(cell_or_model) for s in c.states]
        return _compact(states, steps, layers, loss, None, (), title)
    un = rnn.unroll(full if model is None else model, steps)  # a bidirectional model: in
    prog = un.program  # time order, each layer's reverse direction at t = T-1-s
    if loss:
        from rnn.losses import add_loss

        prog = add_loss(un, "mse", "all")
    return _full(prog, steps, un.kinds, palette(full), None, title)


def _full(prog, steps, kinds, colors, adj_norms, title):
    """The textbook picture: the copies of the cell side by side, x at the bottom of each,
    the state leaving at the top and entering the next copy; each parameter drawn once in a
    key, and in every copy as a small reference of the same colour (the tied weight).
    ``kinds``: {cell node: kind}; ``colors``: the ``palette`` of the cell."""
    var_of = {v.name: v for v in prog.inputs}
    var_of.update({e.out.name: e.out for e in prog.eqns})
    layers = 1 + max((_layer_of(v.node) for v in var_of.values() if v.node), default=0)
    show = _display(layers)
    lines = [title or f"unrolled over {steps} steps: A -> B (one copy of the cell per step, "
             f"weights tied)",
             "each column is the cell at step t (x at the bottom); red: the state carried "
             "to the next step",
             "yellow: the parameters, listed once and used by every step (tied); dL/dW sums "
             "the steps"]
    both = any(REVERSE.search(v.node or "") for v in var_of.values())  # bidirectional
    if both:
        lines.append("bidirectional: in each layer the reverse row (above) carries its state "
                     "right to left, from t to t-1; concat: both directions at t")
    if adj_norms is not None:
        lines.append("numbers: ||dL/d value||; edge colour and width: ||dL/d value|| of the "
                     "value it feeds (log scale)")
    g = _digraph("unrolled", rankdir="BT", compound="true", nodesep="0.12", ranksep="0.22",
                 label="\\n".join(lines), labelloc="t", fontsize="12")
    scale = _scale(adj_norms)
    cut_src = {e.out.name: e.inputs[0].name for e in prog.eqns if e.op == "stop_gradient"}
    loss_vars = {n for n, v in var_of.items() if v.node is None or v.node == "mask"}
    clusters = {t: graphviz.Digraph(f"cluster_{t}") for t in range(steps)}
    for t, c in clusters.items():
        c.attr(label=f"t = {t}", style="rounded", color="#888888", fontsize="12",
               labelloc="b")
    key_rows = []
    ops = {e.out.name: e.op for e in prog.eqns}
    sub: dict[tuple[int, tuple], graphviz.Digraph] = {}
    row = graphviz.Digraph()  # the inputs' row, level
    row.attr(rank="same")
    forward: dict[tuple[int, int], list[str]] = {}  # its forward states, by step and layer
    where_of: dict[str, graphviz.Digraph] = {}

    def norm_line(name):
        if adj_norms is None:
            return None
        n = adj_norms.get(name)
        return "0" if n is None else f"{n:.1e}"  # None: no path to the loss

    for name, v in var_of.items():
        if name in cut_src or name in loss_vars:
            continue
        if v.step is None:
            kind = "param"
        elif v.step == -1:
            kind = "init"
        else:
            kind = kinds.get(v.node, "op")
            if kind in ("state", "var") and name != f"{v.node}@{v.step}":
                kind = "op"  # the masked blend's helpers
        style = _node_style(kind if kind != "init" else "input", name, ops.get(name), v.shape)
        base = _base(v.node) if v.node else name
        if kind == "init":
            style["fillcolor"] = COLORS["init"]
            style["label"] = f"initial\n{show(v.node)}\n{_fmt(v.shape)}"
        elif kind == "input":
            style["label"] = f"{show(name)}\n{_fmt(v.shape)}"
        elif kind in ("state", "var"):
            style["label"] = f"{show(name)}\n{OP_LABEL.get(ops.get(name), ops.get(name))}"
            style["fillcolor"] = colors.get(base, style["fillcolor"])
        elif kind == "param":
            style["label"] = f"{show(name)}\n{_fmt(v.shape)}"
        extra = norm_line(name)
        if extra is not None:
            style["label"] = _with_small_line(style["label"], extra)
        if kind == "param":  # drawn once, as a row of the key
            key_rows.append((show(name), _fmt(v.shape), norm_line(name)))
            continue
        part = _part(v.node, layers, both)
        if kind == "init":  # in the step it enters, at the height of the value that reads it
            where = clusters[steps - 1 if REVERSE.search(v.node) else 0]
        elif part is not None:  # time x depth: a box per layer (and direction) in a step
            where = sub.get((v.step, part))
            if where is None:
                where = sub[v.step, part] = graphviz.Digraph(f"cluster_{v.step}_{part[0]}")
                where.attr(label=part[1], style="dotted", color="#aaaaaa", fontsize="9",
                           labelloc="b")
        elif both and kind == "input":  # below the steps, declared after the edges: a row
            where = row  # outside them orders the steps when the two directions mirror
        else:
            where = clusters[v.step]
        where_of[name] = where
        if both and kind == "state" and not REVERSE.search(v.node):
            forward.setdefault((v.step, _layer_of(v.node)), []).append(name)
        where.node(name, **style)
    top = graphviz.Digraph()  # the top row: the key of parameters, then the loss
    top.attr(rank="same")
    if key_rows:
        top.node("params", label=_key_label(key_rows), shape="plain", tooltip="the "
                 "parameters, one copy each: every step uses the same arrays")
    if loss_vars:
        label = "loss\nL = sum over t\nof loss(y_t, target_t)" if steps > 1 else "loss"
        extra = norm_line("loss")
        top.node("loss", label=label if extra is None else _with_small_line(label, extra),
                 shape="box", style="filled", fillcolor=COLORS["loss"], margin="0.15,0.08")
        if key_rows:
            top.edge("params", "loss", style="invis")
    g.subgraph(top)
    seen, inits_done = set(), set()
    for e in prog.eqns:
        if e.out.name in cut_src:
            continue
        dst = "loss" if e.out.name in loss_vars else e.out.name
        for a in e.inputs:
            if not hasattr(a, "name") or a.name in loss_vars:
                continue
            src, cut = (cut_src[a.name], True) if a.name in cut_src else (a.name, False)
            if (src, dst) in seen:
                continue
            seen.add((src, dst))
            sv, dv = var_of[src], var_of.get(dst)
            attrs = _edge_style(sv, dv, scale,
                                adj_norms.get(dst if dst != "loss" else "loss")
                                if adj_norms else None)
            if sv.step is None:  # a tied parameter: a reference to it inside the step
                ref = f"{src}#{dv.step}"
                if ref not in seen:
                    seen.add(ref)
                    where_of[dst].node(ref, label=show(src), shape="box", fontsize="8",
                                       style="filled,dashed", fillcolor=COLORS["param"],
                                       color="#b8a000", margin="0.04,0.02", height="0.2",
                                       width="0.3", tooltip=f"{src} {_fmt(sv.shape)}: the same "
                                       f"array at every step (tied)")
                g.edge(ref, dst, color="#c9b458", penwidth="0.8", arrowsize="0.4")
                continue
            across = dv is not None and dv.step is not None and sv.step >= 0 \
                and sv.step != dv.step
            if cut:  # a node of its own: its label never lies on another node
                cid = f"cut#{src}#{dst}"
                where_of[dst].node(cid, label="8< cut", shape="box", style="dashed",
                                   color="crimson", fontcolor="crimson", fontsize="9",
                                   margin="0.03,0.01", height="0.2", tooltip="truncated BPTT: "
                                   "no gradient flows back through this edge")
                red = dict(style="dashed", color="crimson", penwidth="1.2", weight="0")
                g.edge(cid, src, dir="back", arrowtail="none", **red)
                g.edge(dst, cid, dir="back", **red)
                continue
            if across:  # the copies stay side by side, in one row: drawn from the state at
                # the top of step t down to step t+1, as an edge that adds no rank on top
                g.edge(dst, src, dir="back", weight="0", **attrs)
                continue
            if sv.step == -1 and src not in inits_done:  # enters from the left, level
                inits_done.add(src)
                level = graphviz.Digraph()
                level.attr(rank="same")
                level.node(src)
                level.node(dst)
                g.subgraph(level)
            elif sv.step == -1:
                attrs["constraint"] = "false"
            elif both and REVERSE.search(dv.node or "") and _part(sv.node, layers, both) is None:
                # the reverse row reads the layer's input above the forward row, not beside it
                for f in forward.get((dv.step, _layer_of(dv.node)), ()):
                    g.edge(f, dst, style="invis", weight="0")
            g.edge(src, dst, **attrs)
    # the row: step t+1 right of step t. An invisible node under the inputs, whose edges
    # keep their order (ordering=out), fixes the order of the columns; a rank=same row
    # keeps their bottoms level
    name = next((v.node for v in prog.inputs if v.step == 0 and kinds.get(v.node) == "input"),
                None)
    if name is not None:
        g.node("time", label="", shape="point", style="invis", ordering="out")
        for t in range(steps):
            row.node(f"{name}@{t}")
            g.edge("time", f"{name}@{t}", style="invis")
            if both and t:  # an edge within a rank puts its tail left of its head
                row.edge(f"{name}@{t - 1}", f"{name}@{t}", style="invis")
        g.subgraph(row)
    for (t, _), c in sub.items():
        clusters[t].subgraph(c)
    for c in clusters.values():  # last: subgraph() copies, so only now are they complete
        g.subgraph(c)
    return g


def _part(node: str | None, layers: int, both: bool) -> tuple[str, str] | None:
    """The box within a step that a node is drawn in, (id, label): its layer in a stack,
    its layer and direction in a bidirectional model; None for the step itself."""
    if not LAYER.search(node or "") or node.endswith(".concat") or layers == 1 and not both:
        return None
    k = _layer_of(node)
    if not both:
        return f"l{k}", f"layer {k}"
    way = "reverse" if REVERSE.search(node) else "forward"
    return f"l{k}_{way}", f"layer {k}, {way}" if layers > 1 else way


def _key_label(rows) -> str:
    """The parameters, one row each (name, shape, and ||dL/dW|| when known): an HTML table."""
    import html

    cells = "".join(
        f'<TR><TD ALIGN="LEFT">{html.escape(n)}</TD><TD ALIGN="LEFT">{html.escape(s)}</TD>'
        + (f'<TD ALIGN="RIGHT"><FONT POINT-SIZE="8">{html.escape(x)}</FONT></TD>' if x else "")
        + "</TR>" for n, s, x in rows)
    span = 3 if any(x for *_, x in rows) else 2
    return (f'<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" '
            f'BGCOLOR="{COLORS["param"]}" COLOR="#b8a000"><TR><TD COLSPAN="{span}"><B>'
            f'parameters</B> (one copy each, used by every step)</TD></TR>{cells}</TABLE>>')


def _base(node: str) -> str:
    """A cell node's name without its layer suffix: c_l1 -> c, c_l1_reverse -> c."""
    return re.sub(r"_l\d+(_reverse)?$", "", node)


def _display(layers: int):
    """Names as the reader knows them: c_l0@2 -> c@2 for one layer (the folded cell's c)."""
    if layers > 1:
        return lambda n: n
    return lambda n: re.sub(r"_l0(?=$|[@.#]|_reverse)", "", n)


def _with_small_line(label: str, line: str) -> str:
    """A node's label with one more line in small type (an HTML label)."""
    import html

    body = "<BR/>".join(html.escape(p) for p in label.split("\n"))
    return f'<{body}<BR/><FONT POINT-SIZE="8">{html.escape(line)}</FONT>>'


# Linked views: a named value has the same fill in the folded cell and in every copy of the
# unrolled one (c, c@0, c@1, ...); states in deeper colours than the other named values.
STATE_FILLS = ["#a9cbff", "#ffc59a", "#c5b3f2", "#9edfd6", "#f6a9c8", "#c9e39a"]
VAR_FILLS = ["#e3d9f7", "#d8f0e0", "#fde3cf", "#dceefa", "#f7dceb", "#e9f3cc", "#e8e2d4",
             "#d9e4f5", "#f4e6c9", "#dff5f2"]


def palette(cell) -> dict[str, str]:
    """{base name: fill} for the states and named values of a cell (or a model's full
    cell, whose c_l0, c_l1 share c's fill): the same for the folded and unrolled views."""
    cell = getattr(cell, "full", cell)
    states = sorted(dict.fromkeys(_base(s) for s in cell.states), key=lambda s: s != "h")
    named = [_base(n) for n, k in cell.graph.nodes(data="kind") if k == "var"]
    named = [n for n in dict.fromkeys(named) if n not in states]
    out = {s: STATE_FILLS[i % len(STATE_FILLS)] for i, s in enumerate(states)}
    out.update({n: VAR_FILLS[i % len(VAR_FILLS)] for i, n in enumerate(named)})
    return out


def _scale(norms):
    if not norms:
        return None
    vals = [v for v in norms.values() if v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.log10(max(vals))


def _heat(norm, top, decades=6.0):
    """(colour, penwidth) for a gradient norm, on a log scale below the largest one."""
    if norm is None or top is None or not norm > 0:
        return "#dddddd", "0.6"
    x = max(0.0, 1 + (math.log10(norm) - top) / decades)  # 1 at the max, 0 six decades below
    red, rest = int(220 * x + 221 * (1 - x)), int(40 * x + 221 * (1 - x))  # grey -> red
    return f"#{red:02x}{rest:02x}{rest:02x}", f"{0.6 + 4.4 * x:.2f}"


def _edge_style(src, dst, top, norm):
    if src.step is None:  # a shared parameter: a tied edge
        return {"color": "#c9b458", "penwidth": "0.7"}
    if top is not None:
        color, width = _heat(norm, top)
        return {"color": color, "penwidth": width}
    if dst is not None and src.step is not None and dst.step is not None and src.step != dst.step:
        return {"color": "crimson", "penwidth": "1.6"}  # the A -> B edge between steps
    return {}


def _compact(states, steps, layers, loss, norms, cut_steps, title):
    """One node per (step, layer), and direction when ``states`` has reverse ones (a
    bidirectional model: the reverse row above its forward row, its state carried right
    to left, t to t-1, both joined per step at a dot, concat, that the layer above and the
    loss read); state edges between steps; wraps long single-layer one-way unrolls into
    rows of 25 steps. ``norms`` and ``cut_steps`` (render.gradients): one-way models."""
    both = any(REVERSE.search(s) for s in states)
    dirs = ("r", "s") if both else ("s",)  # a layer's rows, top down
    row_states = {(k, d): [s for s in states if _layer_of(s) == k
                           and bool(REVERSE.search(s)) == (d == "r")]
                  for k in range(layers) for d in dirs}
    wrap = 25 if len(row_states) == 1 and steps > 25 else steps
    per = (", layer" if both else " and layer") if layers > 1 else ""
    per += " and direction" if both else ""
    lines = [title or f"unrolled over {steps} steps (one node per step{per})"]
    if both:
        lines.append("bidirectional: the reverse row (rev, above) carries its state right to "
                     "left, from t to t-1; dot: both directions at t, concatenated")
    g = _digraph("unrolled", rankdir="TB" if wrap < steps else "LR", nodesep="0.12",
                 ranksep="0.35", label="\\n".join(lines), labelloc="t")
    top = None
    if norms is not None:
        top = _scale({f"{s}@{t}": norms[s][t] for s in states for t in range(steps)})
    names = lambda k, d="s": ", ".join(  # noqa: E731
        REVERSE.sub("", s).rsplit("_l", 1)[0] for s in row_states[k, d])
    g.node("params", label="parameters\n(shared by every step)", shape="box",
           fillcolor=COLORS["param"])
    g.node("init", label=f"initial\n{names(0)}", shape="box", fillcolor=COLORS["init"])
    if both:
        g.node("init_r", label=f"initial\n{names(0, 'r')}\n(reverse)", shape="box",
               fillcolor=COLORS["init"])
    for t in range(steps):
        for k in range(layers):
            for d in dirs:
                label = f"t={t}" + (f"\nl{k}" if layers > 1 else "") + (
                    "\nrev" if d == "r" else "")
                way = ", reverse" if d == "r" else ""
                style = dict(label=label, shape="box", style="rounded,filled",
                             fillcolor=COLORS["state"], fontsize="9", margin="0.04",
                             width="0.3", height="0.3",
                             tooltip=f"step {t}, layer {k}{way}: {names(k, d)}")
                if norms is not None:
                    n = max(norms[s][t] for s in row_states[k, d])
                    style["fillcolor"], _ = _heat(n, top)
                    style["label"] += f"\n{n:.0e}"
                g.node(f"{d}{t}_{k}", **style)
            if both:
                g.node(f"c{t}_{k}", label="", shape="point", width="0.08",
                       tooltip=f"step {t}, layer {k}: both directions, concatenated")
    joined = lambda t, k: f"c{t}_{k}" if both else f"s{t}_{k}"  # noqa: E731
    for t in range(steps):
        column = graphviz.Digraph()  # a step's layers share a rank: the time x depth grid
        column.attr(rank="same")
        if wrap < steps and t % wrap == 0:  # a new row: left-aligned under the previous
            for j in range(t, min(t + wrap, steps)):
                column.node(f"s{j}_0")
            if t > 0:
                g.edge(f"s{t - wrap}_0", f"s{t}_0", style="invis", weight="10")
        elif wrap == steps and len(row_states) > 1:
            for k in range(layers):
                for d in dirs:
                    column.node(f"{d}{t}_{k}")
                if both:
                    column.node(f"c{t}_{k}")
        g.subgraph(column)
        for k in range(layers):
            flat = {} if both else {"constraint": "false"}  # an edge in a column
            # puts its tail above its head: top down rev, forward, concat, the layer below
            for d in dirs if k > 0 else ():
                g.edge(joined(t, k - 1), f"{d}{t}_{k}", color="#555555", **flat)
            if both:
                g.edge(f"r{t}_{k}", f"s{t}_{k}", style="invis")
                for d in dirs:
                    g.edge(f"{d}{t}_{k}", f"c{t}_{k}", color="#555555", arrowsize="0.4")
                if t > 0:  # the reverse state, from step t into t-1, drawn back: the
                    # columns keep their order
                    g.edge(f"r{t - 1}_{k}", f"r{t}_{k}", dir="back", weight="10")
                if t == steps - 1 and k == 0:
                    g.edge(f"r{t}_{k}", "init_r", dir="back", weight="10")
            if t == 0 and k > 0:
                continue
            src = "init" if t == 0 else f"s{t - 1}_{k}"
            attrs = {}
            if norms is not None and t > 0:
                c, w = _heat(max(norms[s][t - 1] for s in row_states[k, "s"]), top)
                attrs = {"color": c, "penwidth": w}
            if t in cut_steps:
                attrs.update(style="dashed", color="#999999", label="cut")
            if wrap < steps and t % wrap == 0 and t > 0:
                attrs["constraint"] = "false"
            g.edge(src, f"s{t}_{k}", weight="10", **attrs)  # heavy: the chain stays straight
        if wrap == steps and len(row_states) == 1:  # a grid leaves them out, as a tangle
            g.edge("params", f"s{t}_0", color="#c9b458", penwidth="0.5", arrowsize="0.3",
                   weight="0")
    if wrap < steps:
        g.edge("params", "s0_0", style="invis")
        g.edge("init", "s0_0", style="invis")
    if loss:
        g.node("loss", label="loss", shape="box", fillcolor=COLORS["loss"])
        label = loss if isinstance(loss, str) else "sum over steps" if steps > 1 else ""
        g.edge(joined(steps - 1, layers - 1), "loss", style="dashed", color="#cc6666",
               label=label)
    return g


# ------------------------------------------------------------------ gradient flow
def gradients(model, xs, targets, loss: str = "mse", at: str = "all", truncate=None,
              mask=None, initial_state=None, compact: bool | None = None,
              title: str | None = None) -> graphviz.Digraph:
    """The unrolled graph after BPTT: colour and width show ||dL/d value|| (log scale),
    so vanishing and exploding gradients are seen; truncation shows as cut edges."""
    import rnn

    T = np.shape(xs)[1] if np.ndim(xs) == 3 else None
    if T is not None:  # before BPTT runs: a drawing too large is refused at once
        compact = choose_compact(model, T, compact)
    res = rnn.bptt(model, xs, targets, loss=loss, at=at, truncate=truncate, mask=mask,
                   initial_state=initial_state, executor="reference", keep_adjoints=True)
    T = np.asarray(xs).shape[1]
    compact = choose_compact(model, T, compact)
    k = truncate if isinstance(truncate, int) else (truncate[0] if truncate else None)
    cuts = tuple(range(k, T, k)) if k else ()
    title = title or (f"gradient flow: ||dL/d state|| per step (loss {res.loss:.3g}"
                      f"{f', truncate={truncate}' if truncate else ''})")
    if compact:
        norms = {}
        for s in model.full.states:
            base, layer = s.rsplit("_l", 1)
            arr = res.step_norms[base]
            norms[s] = arr if model.layers == 1 else arr[int(layer)]
        where = "loss at the last step" if at == "last" else "sum over steps"
        return _compact(list(model.full.states), T, model.layers, where, norms, cuts, title)
    prog, un = model.program(T, loss=loss, at=at, masked=mask is not None,
                             truncate=k if k and k < T else None)
    adj = {n: float(np.linalg.norm(a)) for n, a in res.adjoints.items()}
    return _full(prog, T, un.kinds, palette(un.cell), adj, title)
