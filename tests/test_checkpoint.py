"""fit(checkpoint=..., resume=True): a run killed at any moment and resumed ends bit for
bit where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import rnn
from rnn.io import files

CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import rnn
    import rnn.train.fit as F

    path, out, stateful = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    real = F.run_batch  # fit's bptt of a batch
    F.run_batch = lambda *a, **k: (time.sleep(0.02), real(*a, **k))[1]  # time to be killed
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((40, 10, 2)), rng.standard_normal((40, 10, 4))
    m = rnn.Model(rnn.cells.gru(2, 4), seed=3)
    h = rnn.fit(m, xs, ys, optimizer=rnn.optim.Adam(lr=1e-2), epochs=4, batch_size=8,
                checkpoint=path, checkpoint_every=1, resume=True, progress=False,
                clip_norm=1.0, validation=(xs[:4], ys[:4]), stateful=stateful)
    json.dump({"params": {k: v.tolist() for k, v in m.params.items()},
               "history": [h.losses, h.batch_losses, h.grad_norms, h.val_losses]},
              open(out, "w"))
""")


def _child(tmp_path, name, stateful):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(tmp_path / f"{name}.ckpt"),
            str(tmp_path / f"{name}.json"), "1" if stateful else "0"]


def _updates(path) -> int:
    try:
        return files.load_checkpoint(path)[1]["updates"]
    except (rnn.ModelFileError, OSError):
        return -1


@pytest.mark.parametrize("stateful", [False, True])
def test_a_killed_run_resumed_ends_bit_identical(tmp_path, stateful):
    subprocess.run(_child(tmp_path, "whole", stateful), check=True, timeout=300)
    want = json.loads((tmp_path / "whole.json").read_text())
    for k, at in enumerate((2, 8, 16)):  # of 20 updates (5 batches x 4 epochs)
        cmd = _child(tmp_path, f"cut{k}", stateful)
        proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 120
        while _updates(cmd[2]) < at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not os.path.exists(cmd[3]), "the run finished before it could be killed"
        subprocess.run(cmd, check=True, timeout=300)  # resume
        got = json.loads((tmp_path / f"cut{k}.json").read_text())
        assert got == want  # params and history, exactly


def test_resume_without_a_checkpoint_starts_afresh_and_refuses_another_run(tmp_path):
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((8, 5, 2)), rng.standard_normal((8, 5, 3))
    path = tmp_path / "run.ckpt"
    m = rnn.Model(rnn.cells.elman(2, 3), seed=0)
    h = rnn.fit(m, xs, ys, epochs=2, batch_size=4, checkpoint=path, resume=True,
                progress=False)
    assert len(h.losses) == 2 and path.exists()
    again = rnn.fit(m, xs, ys, epochs=2, batch_size=4, checkpoint=path, resume=True,
                    progress=False)  # finished: nothing more to do
    assert again.losses == h.losses
    with pytest.raises(ValueError, match="another run"):
        rnn.fit(rnn.Model(rnn.cells.elman(2, 3), seed=0), xs, ys + 1, epochs=2,
                batch_size=4, checkpoint=path, resume=True, progress=False)
    with pytest.raises(rnn.ModelFileError, match="unroll.model"):
        rnn.Model.load(path)  # a checkpoint is not a model file
    with pytest.raises(ValueError, match="checkpoint=path"):
        rnn.fit(m, xs, ys, epochs=1, resume=True, progress=False)


def test_optimizer_state_round_trips():
    opt = rnn.optim.Adam(lr=1e-2)
    params = {"w": np.ones(3)}
    opt.step(params, {"w": np.array([0.1, -0.2, 0.3])})
    arrays, numbers = opt.state_dict()
    other = rnn.optim.Adam(lr=1e-2)
    other.load_state_dict(arrays, numbers)
    p1, p2 = {"w": params["w"].copy()}, {"w": params["w"].copy()}
    g = {"w": np.array([0.3, 0.1, -0.5])}
    opt.step(p1, {"w": g["w"].copy()})
    other.step(p2, {"w": g["w"].copy()})
    np.testing.assert_array_equal(p1["w"], p2["w"])
