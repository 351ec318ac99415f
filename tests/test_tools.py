"""The trace, the CLI (as a newcomer runs it), the demo, seq2seq."""

import json
import subprocess
import sys

import numba
import numpy as np
import pytest

import rnn
from tools.cli import main
from tools.gradcheck import check_vjp
from tools.trace import trace


def test_trace_shows_values_adjoints_and_weight_sums():
    m = rnn.Model(rnn.cells.elman(1, 2), head=1)
    xs = np.random.default_rng(0).standard_normal((1, 3, 1))
    text = trace(m, xs, np.zeros((1, 3, 1)))
    assert "adjoint dL/d value" in text and text.count("ok") == len(m.params)
    assert "MISMATCH" not in text


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_has_an_example_for_every_command():
    for cmd in ["demo", "render", "trace", "gradcheck", "train", "bench"]:
        out = run_cli(cmd, "--help")
        assert out.returncode == 0 and "example:" in out.stdout, cmd


@pytest.mark.parametrize("args,msg", [
    (["render", "nope"], "unknown cell 'nope'"),
    (["render", "missing.cell"], "does not exist"),
    (["train", "chess"], "unknown task 'chess'"),
    (["trace", "lstm", "--steps", "0"], "--steps: must be a positive int, got '0'"),
    (["render"], "the following arguments are required: CELL"),
])
def test_user_mistakes_are_one_line_without_traceback(args, msg):
    out = run_cli(*args)
    assert out.returncode == 2
    assert msg in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_cell_file_names_line_and_column(tmp_path, capsys):
    f = tmp_path / "bad.cell"
    f.write_text("# inputs: x=1\n# states: h=4\nh = tanh(W @ x + a)\na = V @ h\n")
    assert main(["gradcheck", str(f)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "h -> a -> h" in err


def test_render_gradcheck_trace_train_from_a_cell_file(tmp_path, capsys):
    f = tmp_path / "mgu.cell"
    f.write_text("# inputs: x=1\n# states: h=4\n"
                 "f = sigmoid(Wf @ x + Uf @ h[t-1] + bf)\n"
                 "n = tanh(Wn @ x + Un @ (f * h[t-1]) + bn)\n"
                 "h = (1 - f) * h[t-1] + f * n\n")
    assert main(["render", str(f), "-o", str(tmp_path / "c.dot")]) == 0
    assert main(["render", str(f), "--steps", "3", "-o", str(tmp_path / "u.dot")]) == 0
    assert main(["render", str(f), "--steps", "20", "--grad", "-o", str(tmp_path / "g.dot")]) == 0
    assert main(["gradcheck", str(f), "--steps", "3"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["trace", str(f), "--steps", "2"]) == 0
    assert main(["train", "sine", "--cell", str(f), "--epochs", "2", "--samples", "32"]) == 0
    assert "final loss" in capsys.readouterr().out


def test_module_attr_cells(tmp_path, monkeypatch, capsys):
    (tmp_path / "mycells.py").write_text(
        "import rnn\n"
        "def tiny(i, h):\n"
        "    return rnn.Cell.from_equations('h = relu(W @ x + U @ h[t-1])', inputs={'x': i},"
        " states={'h': h})\n")
    monkeypatch.chdir(tmp_path)
    assert main(["gradcheck", "mycells:tiny", "--hidden-size", "3"]) == 0


def test_demo_writes_results_and_pictures(tmp_path):
    from tools import demo

    res = demo.run(str(tmp_path), quiet=True)
    data = json.loads((tmp_path / "results.json").read_text())
    names = [m["name"] for m in data["models"]]
    assert names[0].startswith("persistence") and len(names) == 6
    assert abs(data["models"][0]["test_rmse"] - 48.04) < 0.01  # the reference figure
    assert abs(data["models"][1]["test_rmse"] - 41.85) < 0.01
    assert res["models"][-1]["test_rmse"] <= 30
    for f in ["cell.svg", "unrolled.svg", "gradient_flow.svg", "gradient_flow_elman.svg",
              "predictions.png", "jacobians.png"]:
        assert (tmp_path / f).stat().st_size > 1000, f


def test_seq2seq_gradients_cross_the_bridge():
    s2s = rnn.Seq2Seq(rnn.cells.gru(2, 3), rnn.cells.lstm(1, 3), head=2, out_steps=3,
                      bridge={"h": "h"})
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 3, 2))
    names = list(s2s.params)
    saved = dict(s2s._params)  # the private write path (model.params is read-only)

    def run(*arrays):
        s2s._params = dict(zip(names, arrays))
        try:
            return rnn.bptt(s2s, xs, ys)
        finally:
            s2s._params = saved

    check_vjp(lambda *a: np.array(run(*a).loss),
              lambda u, *a: [u * run(*a).grads[n] for n in names],
              [saved[n] for n in names], names, max_per_input=6)
    assert np.abs(rnn.bptt(s2s, xs, ys).grads["encoder.weight_hh_l0"]).sum() > 0


def test_seq2seq_rejects_a_bad_bridge():
    with pytest.raises(ValueError, match="bridge 'q' <- 'h': decoder states are"):
        rnn.Seq2Seq(rnn.cells.gru(2, 3), rnn.cells.lstm(1, 3), head=2, out_steps=3,
                     bridge={"c": "h", "q": "h"})


def test_trace_can_print_the_program_after_each_pass(capsys):
    assert main(["trace", "elman", "--steps", "3", "--hidden-size", "2", "--program",
                 "--truncate", "2"]) == 0
    out = capsys.readouterr().out
    assert "# unrolled" in out and "# after cut_state_edges(k=2)" in out
    assert "h_l0@1|cut:f64[B,2] = stop_gradient h_l0@1" in out


def test_train_saves_the_model_and_resumes_from_a_checkpoint(tmp_path, capsys):
    ckpt, model = tmp_path / "run.ckpt", tmp_path / "m.unroll"
    base = ["train", "adding", "--cell", "gru", "--samples", "64", "--steps", "8"]
    assert main(base + ["--epochs", "1", "--checkpoint", str(ckpt), "--save", str(model)]) == 0
    assert rnn.Model.load(model).cell.states == {"h": 16}
    assert main(base + ["--epochs", "2", "--checkpoint", str(ckpt), "--resume"]) == 0
    resumed = capsys.readouterr().out.splitlines()[-1]
    assert main(base + ["--epochs", "2"]) == 0  # the same two epochs in one go
    assert capsys.readouterr().out.splitlines()[-1].split(";")[0] == resumed.split(";")[0]
    assert main(base + ["--resume"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(base + ["--epochs", "1", "--save", str(tmp_path / "no" / "m.unroll")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


def test_derive_prints_the_backward_recurrence(capsys):
    assert main(["derive", "lstm"]) == 0
    out = capsys.readouterr().out
    assert "dc[t-1] += dc * sigmoid(f)" in out and "dh[t-1] += weight_hh.T @ dz" in out


def test_cell_files_take_the_size_flags_and_default_sizes(tmp_path, capsys):
    f = tmp_path / "e.cell"
    f.write_text("h = relu(W @ x + U @ h[t-1] + b)  # no size header\n")
    assert main(["render", str(f), "-o", str(tmp_path / "e.svg")]) == 0  # h gets 8
    assert main(["train", "adding", "--cell", str(f), "--states", "h=5", "--epochs", "1",
                 "--samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "46 parameters" in out  # W 5x2, U 5x5, b 5, head 6: the flag was used
    assert main(["train", "adding", "--cell", str(f), "--hidden-size", "3", "--epochs", "1",
                 "--samples", "32"]) == 0
    assert "22 parameters" in capsys.readouterr().out  # W 6, U 9, b 3, head 4


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="330,000 characters of plain Python loops")
def test_train_chars_ends_with_the_bits_per_char_line(capsys):
    assert main(["train", "chars", "--cell", "gru", "--hidden-size", "16", "--epochs", "1",
                 "--batch-size", "64"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("bits/char: unigram 4.316, bigram 3.186, gru ")


def test_a_size_hint_speaks_cli(tmp_path, capsys):
    f = tmp_path / "a.cell"
    f.write_text("# states: h=4\nh = tanh(W @ a + U @ h[t-1])\na = V @ x\n")
    assert main(["render", str(f), "-o", str(tmp_path / "a.svg")]) == 2
    err = capsys.readouterr().err
    assert "'# sizes: NAME=N' line" in err and "--states NAME=N" in err
