"""Pictures: what the graphviz source says, and that it lays out to SVG."""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnn
from tools import render


def test_folded_cell_has_dashed_delay_edges():
    src = render.cell(rnn.cells.lstm(1, 4)).source
    assert src.count('label="t-1"') == 2  # h[t-1] and c[t-1]
    assert "style=dashed" in src and "weight_hh" in src and "[16,4]" in src


def test_long_delay_is_labelled():
    c = rnn.Cell.from_equations("h = tanh(W @ x + U @ h[t-3])", inputs={"x": 1},
                                states={"h": 2})
    assert 'label="t-3"' in render.cell(c).source


def test_unrolled_has_one_cluster_per_step_and_parameters_once():
    g = render.unrolled(rnn.cells.elman(1, 3), steps=4)
    src = g.source
    assert all(f"cluster_{t}" in src for t in range(4)) and "cluster_4" not in src
    # the textbook layout (it was one shared node with 4 long edges): listed once in the
    # key of parameters, and a small reference of it inside every step
    assert src.count("<TD ALIGN=\"LEFT\">weight_hh</TD>") == 1  # drawn once ...
    assert all(src.count(f'"weight_hh#{t}" -> ') == 1 for t in range(4))  # ... tied in each
    assert "h@init" in src and "loss" in src


def test_compact_mode_for_long_unrolls_and_grid_for_layers():
    src = render.unrolled(rnn.cells.gru(1, 3), steps=200).source
    assert "s199_0" in src and "cluster_" not in src
    model = rnn.Model(rnn.cells.lstm(1, 3), layers=3)
    grid = render.unrolled(model, steps=5, compact=True).source
    assert "s4_2" in grid and "s4_1 -> s4_2" in grid
    full = render.unrolled(model, steps=2).source
    assert "cluster_1_l2" in full and 'label="layer 2"' in full


def test_gradient_flow_marks_cuts_and_fading():
    m = rnn.Model(rnn.cells.elman(1, 4), head=1, seed=0)
    xs = np.random.default_rng(0).standard_normal((2, 30, 1))
    src = render.gradients(m, xs, np.zeros((2, 30, 1)), truncate=10).source
    assert src.count('label=cut') == 2  # at steps 10 and 20
    full = render.gradients(m, xs[:, :4], np.zeros((2, 4, 1)), compact=False).source
    assert "penwidth" in full and "e-0" in full  # norms shown


def test_save_svg_png_dot(tmp_path):
    g = render.cell(rnn.cells.gru(1, 2))
    assert render.save(g, tmp_path / "c.dot").read_text().startswith("digraph")
    try:
        render.ensure_dot()
    except render.RenderError:
        pytest.skip("no dot and no graphviz-pure here")
    assert b"<svg" in render.save(g, tmp_path / "c.svg").read_bytes()
    assert render.save(g, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(render.RenderError, match="use a .svg"):
        render.save(g, tmp_path / "c.jpg")


# ------------------------------------------------------------------ finding dot safely
def _render_in_subprocess(tmp_path, path_dirs, code):
    env = dict(os.environ, PATH=os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"]))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_a_dot_planted_in_a_folder_others_can_write_never_runs(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    marker = tmp_path / "ran"
    (shared / "dot").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (shared / "dot").chmod(0o755)
    code = ("import os, rnn; from tools import render\n"
            "assert render.find_dot() is None or 'shared' not in str(render.find_dot())\n"
            "g = render.cell(rnn.cells.elman(1, 2))\n"
            "try:\n    render.save(g, 'c.svg')\nexcept render.RenderError:\n    pass\n"
            "print(os.environ['PATH'].split(os.pathsep)[0])")
    out = _render_in_subprocess(tmp_path, [shared], code)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    assert out.stdout.strip() == str(shared)  # PATH is left as it was: nothing prepended


def test_a_dangling_dot_link_does_not_break_rendering(tmp_path):
    mine = tmp_path / "bin"
    mine.mkdir()
    (mine / "dot").symlink_to(tmp_path / "deleted-venv" / "bin" / "graphviz-pure")
    code = ("import rnn; from tools import render\n"
            "if render.find_dot() is not None:\n"
            "    render.save(render.cell(rnn.cells.elman(1, 2)), 'c.svg')\n"
            "    print('rendered')")
    out = _render_in_subprocess(tmp_path, [mine], code)
    assert out.returncode == 0, out.stderr
    if render.find_dot() is not None:
        assert out.stdout.strip() == "rendered"


def test_a_digraph_shows_inline_before_any_save(tmp_path):
    if render.find_dot() is None:
        pytest.skip("no dot and no graphviz-pure here")
    code = ("import rnn; from tools import render\n"  # what Jupyter does to show a Digraph
            "b = render.cell(rnn.cells.elman(1, 2))._repr_mimebundle_({'image/svg+xml'})\n"
            "print('<svg' in b['image/svg+xml'])")
    out = _render_in_subprocess(tmp_path, [], code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# ------------------------------------------------------------------ large graphs
def test_large_unrolls_switch_to_compact_with_a_warning_or_are_refused():
    model = rnn.Model(rnn.cells.lstm(1, 3), layers=3)
    assert render.full_view_nodes(model, 12) > render.MAX_FULL_NODES
    with pytest.warns(render.RenderWarning, match="MAX_FULL_NODES"):
        src = render.unrolled(model, steps=12).source
    assert "s11_2" in src and "cluster_" not in src
    with pytest.raises(ValueError, match="compact=True"):  # a GraphTooLarge
        render.unrolled(model, steps=12, compact=False)
    with pytest.raises(render.GraphTooLarge, match="MAX_COMPACT_NODES"):
        render.unrolled(rnn.cells.gru(1, 3), steps=render.MAX_COMPACT_NODES + 1)


def test_gradients_refuse_a_huge_drawing_before_running_bptt(monkeypatch):
    m = rnn.Model(rnn.cells.elman(1, 2), head=1)
    monkeypatch.setattr(rnn, "bptt", lambda *a, **k: pytest.fail("BPTT ran"))
    xs = np.zeros((1, render.MAX_COMPACT_NODES + 1, 1))
    with pytest.raises(render.GraphTooLarge):
        render.gradients(m, xs, np.zeros((1, 1)), at="last")


def test_the_readme_picture_stays_the_full_graph():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = render.unrolled(rnn.cells.lstm(1, 8), steps=4).source
    assert "cluster_3" in src and "s0_0" not in src


def test_layouts_report_progress_and_stop_at_the_timeout(tmp_path, capsys, monkeypatch):
    slow = tmp_path / "slow-dot"  # a dot that never finishes
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(render, "ensure_dot", lambda: slow)
    monkeypatch.setattr(render, "dot_formats", lambda dot: frozenset({"svg"}))
    monkeypatch.setattr(render, "PROGRESS_EVERY_S", 0.2)
    g = render.unrolled(rnn.cells.gru(1, 3), steps=12)
    assert render.graph_size(g)[0] >= render.PROGRESS_NODES
    with pytest.raises(render.RenderError, match="did not finish in 1 s"):
        render.save(g, tmp_path / "g.svg", progress=True, timeout=1)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"laying out {render.graph_size(g)[0]} nodes")
    assert len(err) >= 3 and "s so far" in err[-1]  # a line every PROGRESS_EVERY_S
    assert not (tmp_path / "g.svg").exists()


def test_formats_the_renderer_lacks_are_refused_by_name(tmp_path):
    dot = render.find_dot()
    if dot is None or "pdf" in render.dot_formats(dot):
        pytest.skip("this Graphviz writes PDF")
    with pytest.raises(render.RenderError, match=r"no PDF output; use a \.svg, \.png or \.dot"):
        render.save(render.cell(rnn.cells.elman(1, 2)), tmp_path / "c.pdf")
    assert render.supported_suffixes() == [".svg", ".png", ".dot"]


# ------------------------------------------------------------------ the textbook layout
def _plain(g):
    """{node: (x, y, w, h)} of a laid-out graph, in inches (dot -Tplain)."""
    dot = render.find_dot()
    if dot is None:
        pytest.skip("no dot and no graphviz-pure here")
    out = subprocess.run([str(dot), "-Tplain"], input=g.source.encode(), capture_output=True,
                         timeout=120, check=True).stdout.decode()
    boxes = {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "graph":
            boxes["graph"] = (0.0, 0.0, float(f[2]), float(f[3]))
        if f and f[0] == "node":
            boxes[f[1].strip('"')] = tuple(map(float, f[2:6]))
    return boxes


def test_the_copies_stand_side_by_side_in_one_row_and_fit_a_page():
    g = render.unrolled(rnn.Model(rnn.cells.lstm(1, 4), head=1), steps=3)
    b = _plain(g)
    xs = [b[f"x@{t}"] for t in range(3)]
    assert xs[0][0] < xs[1][0] < xs[2][0]  # time runs left to right
    assert len({round(x[1], 2) for x in xs}) == 1  # ... on one row, not staggered
    hs = [b[f"h_l0@{t}"] for t in range(3)]
    assert len({round(h[1], 2) for h in hs}) == 1
    width, height = b["graph"][2:]
    assert width < 16 and height < 14  # was 59 x 20 inches (4,252 x 1,425 px)
    src = g.source
    assert 'dir=back' in src and "weight=0" in src  # the state edge adds no rank: no stagger


def test_a_stack_is_a_time_by_depth_grid():
    b = _plain(render.unrolled(rnn.Model(rnn.cells.elman(1, 3), layers=2, head=None), steps=3))
    for t in range(3):
        assert b[f"h_l1@{t}"][1] > b[f"h_l0@{t}"][1]  # layer 1 above layer 0
    assert b["h_l0@0"][0] < b["h_l0@1"][0] < b["h_l0@2"][0]
    assert round(b["h_l1@0"][1], 2) == round(b["h_l1@2"][1], 2)


def test_the_folded_and_unrolled_pictures_share_names_and_colours():
    cell = rnn.cells.lstm(1, 4)

    def fill(src, node):
        m = re.search(r'\t"?' + re.escape(node) + r'"? \[(?:[^"\]]|"[^"]*")*?fillcolor="([^"]+)"',
                      src)
        return m.group(1)

    folded = render.cell(cell).source
    unrolled = render.unrolled(rnn.Model(cell, head=1), steps=3).source
    for name in ("c", "h", "f", "o"):
        assert all(fill(unrolled, f"{name}_l0@{t}") == fill(folded, name) for t in range(3))
        assert f'label="{name}@1' in unrolled  # the folded name, without the layer suffix
    assert fill(folded, "c") != fill(folded, "h")


def test_cut_edges_read_as_cuts_and_labels_lie_on_no_node():
    m = rnn.Model(rnn.cells.lstm(1, 3), head=1, seed=0)
    xs = np.random.default_rng(0).standard_normal((2, 4, 1))
    g = render.gradients(m, xs, np.zeros((2, 1)), at="last", truncate=2)
    src = g.source
    assert src.count('label="8< cut"') == 2  # h and c cross the cut at step 2
    assert "xlabel" not in src  # norms sit inside their nodes, never beside them
    b = _plain(g)
    cuts = [n for n in b if n.startswith("cut#")]
    assert len(cuts) == 2
    for c in cuts:
        cx, cy, cw, ch = b[c]
        for n, (x, y, w, h) in b.items():
            if n not in (c, "graph", "time"):
                assert abs(cx - x) * 2 >= cw + w - 1e-6 or abs(cy - y) * 2 >= ch + h - 1e-6, n
    assert b["x@0"][0] < b["x@1"][0] < b["x@2"][0] < b["x@3"][0]


# ------------------------------------------------------------------ bidirectional models
def _bi(cell=rnn.cells.elman, layers=2, head=None):
    return rnn.Model(cell(1, 2), layers=layers, head=head, bidirectional=True, seed=1)


@pytest.mark.parametrize("head", [None, 1])
def test_the_bidirectional_picture_draws_the_program_rnn_unroll_gives(head):
    # that program computes what the model computes: tests/test_bidirectional.py
    m, T = _bi(rnn.cells.gru, layers=2, head=head), 3
    src = render.unrolled(m, steps=T, loss=False).source
    prog = rnn.unroll(m, steps=T).program
    named = [e.out.name for e in prog.eqns if e.out.name == f"{e.out.node}@{e.out.step}"]
    assert len(named) > 2 * 2 * T * 10  # every layer, both ways, every step
    assert all(f'"{n}" [' in src or f"\t{n} [" in src for n in named)


def _arrows(src):
    """(from, to) of every drawn edge, as the arrow points (dir=back: head to tail)."""
    out = []
    for a, b, attrs in re.findall(r'^\t"?([^"\s]+)"? -> "?([^"\s]+)"?(?: \[(.*)\])?$', src,
                                  re.M):
        out.append((b, a) if "dir=back" in attrs else (a, b))
    return out


def _step(node):
    return int(node.rsplit("@", 1)[1]) if re.search(r"@\d+$", node) else None


def test_a_bidirectional_picture_has_every_layer_and_both_directions_in_time_order():
    m, T = _bi(layers=2, head=1), 3
    src = render.unrolled(m, steps=T).source
    for t in range(T):
        for k in range(2):
            for d in ("", "_reverse"):
                assert f'"h_l{k}{d}@{t}" [label=' in src
            assert re.search(rf'"h_l{k}.concat@{t}" \[[^\]]*label=concat', src)
        assert f'"y@{t}" [label=' in src
    assert "x_reverse" not in src and ".in@" not in src  # the executors' plumbing is not drawn
    state = [(a, b) for a, b in _arrows(src) if _step(a) is not None and _step(b) is not None
             and _step(a) != _step(b)]
    fwd = [(a, b) for a, b in state if "_reverse" not in a]
    rev = [(a, b) for a, b in state if "_reverse" in a]
    assert len(fwd) == len(rev) == 2 * (T - 1)  # one state edge per layer between steps
    assert all(_step(b) == _step(a) + 1 for a, b in fwd)  # left to right
    assert all(_step(b) == _step(a) - 1 and a.startswith(("h_l0_reverse@", "h_l1_reverse@"))
               for a, b in rev)  # right to left: from h_reverse@t into step t-1
    assert ("h_l0.concat@1", "h_l1.1@1") in _arrows(src)  # layer 1 reads both of layer 0
    assert ("h_l0.concat@1", "h_l1_reverse.1@1") in _arrows(src)


@pytest.mark.parametrize("cell,layers", [(rnn.cells.elman, 1), (rnn.cells.elman, 2),
                                         (rnn.cells.lstm, 1), (rnn.cells.gru, 2)])
def test_a_bidirectional_picture_is_a_time_by_depth_grid(cell, layers):
    T = 3
    g = render.unrolled(_bi(cell, layers=layers), steps=T)
    b = _plain(g)
    rows = [f"h_l{k}{d}" for k in range(layers) for d in ("", "_reverse")]
    for row in rows:
        assert b[f"{row}@0"][0] < b[f"{row}@1"][0] < b[f"{row}@2"][0], row  # t=0..T-1
        assert len({round(b[f"{row}@{t}"][1], 2) for t in range(T)}) == 1, row  # level
    for t in range(T):
        heights = [b[f"{row}@{t}"][1] for row in rows]
        assert heights == sorted(heights)  # forward, its reverse above it, the next layer
    columns = [[x for n, (x, *_) in b.items() if _step(n) == t and not n.startswith("x@")]
               for t in range(T)]
    assert all(max(columns[t]) < min(columns[t + 1]) for t in range(T - 1))  # no overlap
    assert ' "t = 0"' not in g.source and 'label="t = 0"' in g.source


def _compact_nodes(src):
    return set(re.findall(r'^\t"?([\w@.#]+)"? \[', src, re.M)) - {"node", "edge"}


@pytest.mark.parametrize("layers", [1, 2])
def test_the_compact_bidirectional_picture_has_both_directions_of_every_layer(layers):
    T = 4
    src = render.unrolled(_bi(layers=layers, head=1), steps=T, compact=True).source
    nodes, arrows = _compact_nodes(src), _arrows(src)
    assert {f"{d}{t}_{k}" for d in "src" for t in range(T) for k in range(layers)} <= nodes
    state = [(a, b) for a, b in arrows if a[0] == b[0] and a[0] in "sr"]
    fwd = [(a, b) for a, b in state if a[0] == "s"]
    rev = [(a, b) for a, b in state if a[0] == "r"]
    assert sorted(fwd) == sorted((f"s{t}_{k}", f"s{t + 1}_{k}") for t in range(T - 1)
                                 for k in range(layers))  # left to right
    assert sorted(rev) == sorted((f"r{t + 1}_{k}", f"r{t}_{k}") for t in range(T - 1)
                                 for k in range(layers))  # right to left: t to t-1
    assert ("init", "s0_0") in arrows and (("init_r", f"r{T - 1}_0") in arrows)
    for t in range(T):
        for k in range(layers):
            assert {(f"s{t}_{k}", f"c{t}_{k}"), (f"r{t}_{k}", f"c{t}_{k}")} <= set(arrows)
            if k:  # the layer above reads both directions of the one below, at t
                assert {(f"c{t}_{k - 1}", f"s{t}_{k}"), (f"c{t}_{k - 1}", f"r{t}_{k}")} \
                    <= set(arrows)
    assert (f"c{T - 1}_{layers - 1}", "loss") in arrows
    assert "bidirectional: the reverse row" in src


def test_a_long_bidirectional_unroll_is_drawn_compact_with_both_directions():
    src = render.unrolled(_bi(layers=1), steps=30).source
    assert "cluster_" not in src and {"s29_0", "r29_0", "r0_0", "init_r"} <= _compact_nodes(src)
    with pytest.raises(render.GraphTooLarge, match="x 2 directions would have 2002 boxes"):
        render.unrolled(_bi(layers=1), steps=render.MAX_COMPACT_NODES // 2 + 1)


def test_the_compact_bidirectional_picture_is_a_grid_reverse_rows_above():
    T, layers = 3, 2
    b = _plain(render.unrolled(_bi(layers=layers), steps=T, compact=True))
    rows = [f"{d}{{}}_{k}" for k in range(layers) for d in "rsc"]  # top down
    for row in rows:
        xs = [b[row.format(t)][0] for t in range(T)]
        assert xs == sorted(xs) and len(set(xs)) == T, row  # t = 0..T-1, left to right
        assert len({round(b[row.format(t)][1], 2) for t in range(T)}) == 1, row  # level
    for t in range(T):
        heights = [b[row.format(t)][1] for row in rows]
        assert heights == sorted(heights, reverse=True)  # rev above forward, then layer 1
    assert b["init_r"][0] > b[f"r{T - 1}_0"][0] > b["init"][0]  # enters from the right


def test_the_compact_one_way_picture_has_no_reverse_rows():
    src = render.unrolled(rnn.Model(rnn.cells.gru(1, 2), layers=2), steps=3,
                          compact=True).source
    assert _compact_nodes(src) == {"params", "init", "loss"} | {
        f"s{t}_{k}" for t in range(3) for k in range(2)}
    assert sorted(_arrows(src)) == sorted(
        [("init", "s0_0"), ("s2_1", "loss")]
        + [(f"s{t}_0", f"s{t}_1") for t in range(3)]
        + [(f"s{t}_{k}", f"s{t + 1}_{k}") for t in range(2) for k in range(2)])
    assert "bidirectional" not in src and 'label="unrolled over 3 steps (one node per step ' \
        'and layer)"' in src
