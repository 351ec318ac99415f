"""User mistakes on the command line: one line on stderr, exit status 2, no traceback;
large pictures are drawn compact or refused at once, never laid out for minutes."""

import subprocess
import sys
import time

import pytest

from tools import render
from tools.cli import GRADCHECK_MAX_PARAMS, main


def one_line_error(capsys, *args) -> str:
    """Run ``unroll ARGS`` in-process; assert exit 2 and a one-line error; return it."""
    try:
        code = main(list(map(str, args)))
    except SystemExit as e:  # argparse's own errors exit
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("unroll ")
    return err


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tools.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def write_cell(path, body, head="# inputs: x=1\n# states: h=4\n"):
    path.write_text(head + body)
    return path


# ------------------------------------------------------------------ item 1: tracebacks
def test_output_inside_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    err = one_line_error(capsys, "render", "lstm", "-o", tmp_path / "afile" / "x.svg")
    assert "is a file, not a folder" in err
    err = one_line_error(capsys, "render", "lstm", "-o", tmp_path)  # a folder, no suffix
    assert "use a .svg" in err


def test_output_without_permission_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render.os, "access", lambda *a, **k: False)  # root may write anywhere
    err = one_line_error(capsys, "render", "lstm", "-o", tmp_path / "x.dot")
    assert "no permission to write in" in err


def test_a_write_that_fails_late_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(render.Path, "write_bytes", refuse)
    err = one_line_error(capsys, "render", "lstm", "-o", tmp_path / "x.dot")
    assert "Permission denied" in err


def test_pdf_is_refused_with_the_formats_the_renderer_has(tmp_path, capsys):
    dot = render.find_dot()
    if dot is None:
        pytest.skip("no dot and no graphviz-pure here")
    if "pdf" in render.dot_formats(dot):  # a system Graphviz: .pdf works
        assert main(["render", "lstm", "-o", str(tmp_path / "x.pdf")]) == 0
        return
    err = one_line_error(capsys, "render", "lstm", "-o", tmp_path / "x.pdf")
    assert "no PDF output" in err and ".svg, .png or .dot" in err


def test_module_with_a_syntax_error(tmp_path):
    (tmp_path / "broken_cells.py").write_text("def cell(:\n")
    out = run_cli("render", "broken_cells:cell", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "broken_cells.py, line 1" in out.stderr


def test_module_that_raises_on_import_or_call(tmp_path, capsys, monkeypatch):
    (tmp_path / "raising_cells.py").write_text("x = 1 / 0\n")
    (tmp_path / "factory_cells.py").write_text("def cell(i, h):\n    return undefined\n")
    monkeypatch.chdir(tmp_path)
    assert "ZeroDivisionError" in one_line_error(capsys, "render", "raising_cells:cell")
    assert "NameError" in one_line_error(capsys, "render", "factory_cells:cell")


def test_gradcheck_of_infinite_literals_and_overflowing_cells(tmp_path, capsys):
    inf = write_cell(tmp_path / "inf.cell", "h = tanh(W @ x + U @ h[t-1] + 1e999)\n")
    assert "not finite" in one_line_error(capsys, "gradcheck", inf)
    big = write_cell(tmp_path / "big.cell", "h = tanh(W @ x + U @ h[t-1]) * 1e308\n")
    assert "finite loss" in one_line_error(capsys, "gradcheck", big)


def test_scalar_output(tmp_path, capsys):
    f = write_cell(tmp_path / "scalar.cell", "h = sum(x)\n", head="# inputs: x=3\n")
    for cmd in (["gradcheck", f], ["render", f, "--steps", "2", "-o", tmp_path / "s.dot"]):
        assert "single number" in one_line_error(capsys, *cmd)


def test_a_thousand_term_sum(tmp_path, capsys):
    f = write_cell(tmp_path / "deep.cell",
                   "h = tanh(" + " + ".join(["x"] * 1000) + " + U @ h[t-1])\n",
                   head="# inputs: x=4\n# states: h=4\n")
    t0 = time.perf_counter()
    err = one_line_error(capsys, "render", f, "-o", tmp_path / "deep.svg")
    assert "1004 nodes" in err and "MAX_FULL_NODES" in err
    assert main(["render", str(f), "--steps", "3", "-o", str(tmp_path / "deep.dot")]) == 0
    assert "drawn compact" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 60


def test_a_100000_wide_state_is_refused_with_its_bound(tmp_path, capsys):
    f = write_cell(tmp_path / "wide.cell", "h = tanh(W @ x + U @ h[t-1])\n", head="")
    err = one_line_error(capsys, "gradcheck", f, "--states", "h=100000")
    assert "parameter" in err  # the Model's allocation bound or gradcheck's own
    err = one_line_error(capsys, "gradcheck", f, "--states", "h=2000")
    assert f"{GRADCHECK_MAX_PARAMS:,}" in err and "--states h=8" in err


def test_bench_float16(capsys):
    err = one_line_error(capsys, "bench", "--dtype", "float16")
    assert "float16" in err and "float32" in err


# ------------------------------------------------------------------ item 2: files, --steps
def test_cell_file_that_is_not_utf8(tmp_path, capsys):
    f = tmp_path / "latin.cell"
    f.write_bytes(b"# inputs: x=1\n# states: h=4\n# caf\xe9\nh = tanh(W @ x + U @ h[t-1])\n")
    err = one_line_error(capsys, "render", f)
    assert "latin.cell" in err and "not UTF-8" in err and "line 3" in err


def test_cell_file_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "x.cell").mkdir()
    err = one_line_error(capsys, "render", tmp_path / "x.cell")
    assert "is a folder" in err and "does not exist" not in err


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_render_steps_must_be_positive(capsys, steps):
    assert "--steps: must be a positive int" in one_line_error(capsys, "render", "lstm",
                                                               "--steps", steps)


# ------------------------------------------------------------------ item 3: large graphs
def test_a_three_layer_unroll_is_drawn_compact_at_once(tmp_path, capsys):
    t0 = time.perf_counter()
    out = tmp_path / "l3.svg" if render.find_dot() else tmp_path / "l3.dot"
    assert main(["render", "lstm", "--layers", "3", "--steps", "12", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "drawn compact" in err and "MAX_FULL_NODES" in err and len(err.splitlines()) == 1
    assert time.perf_counter() - t0 < 60  # it ran 14 minutes


def test_a_hundred_thousand_steps_are_refused(tmp_path, capsys):
    err = one_line_error(capsys, "render", "lstm", "--steps", "100000", "-o",
                         tmp_path / "x.svg")
    assert "MAX_COMPACT_NODES" in err and f"at most {render.MAX_COMPACT_NODES} steps" in err
    assert not (tmp_path / "x.svg").exists()
    err = one_line_error(capsys, "render", "lstm", "--steps", "100000", "--grad")
    assert "MAX_COMPACT_NODES" in err


def test_the_readme_picture_is_the_full_graph(tmp_path, capsys):
    assert main(["render", "lstm", "--steps", "4", "-o", str(tmp_path / "u.dot")]) == 0
    src = (tmp_path / "u.dot").read_text()
    assert "cluster_3" in src and "weight_hh" in src
    assert capsys.readouterr().err == ""


def test_output_piped_into_head_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "trace", "lstm", "--steps",
                             "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"BPTT trace")
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""
