"""``unroll bench``: the harness, end to end on toy workloads; no timed assertions."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import bench
from tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
TOY = {"toy-lstm": bench.Workload("lstm", 2, 4, 2, 5, reference=True),
       "toy-mgu": bench.Workload("mgu", 3, 4, 2, 5, reference=True)}


def toy_run(names, **kw):
    return bench.run(names, budget=0.01, workloads=TOY, **kw)


def test_ratio_is_unroll_over_the_fastest_peer():
    times = {"unroll": 3.0, "unroll-reference": 0.5, "torch-fused": 2.0, "jax-scan": 1.5}
    assert bench.best_peer(times) == (2.0, "jax-scan")  # the reference is not a peer
    assert bench.best_peer({"unroll": 1.0, "unroll-reference": 2.0}) == (None, None)
    assert bench.best_peer({"torch-fused": 1.0}) == (None, None)


def test_gemm_flops_count_three_times_the_forward_matmuls():
    I, H, B, T = 3, 5, 2, 7
    fwd = 2 * B * T * H * (I + H)  # one H x (I + H) block per step and row of the batch
    assert bench.gemm_flops(bench.Workload("elman", I, H, B, T)) == 3 * fwd
    assert bench.gemm_flops(bench.Workload("lstm", I, H, B, T)) == 3 * 4 * fwd
    assert bench.gemm_flops(bench.Workload("gru", I, H, B, T)) == 3 * 3 * fwd
    # the MGU's four matrices: Wf, Wn (H x I) and Uf, Un (H x H)
    mgu = 3 * 2 * B * T * (2 * H * I + 2 * H * H)
    assert bench.gemm_flops(bench.Workload("mgu", I, H, B, T)) == mgu


def test_bench_without_peer_libraries_skips_them_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "jax", None)
    res = toy_run(["toy-mgu"], json_path=tmp_path / "b.json")
    out = capsys.readouterr().out
    wl = res["workloads"]["toy-mgu"]
    assert set(wl["contenders"]) == {"unroll", "unroll-reference"}
    assert "is not installed" in wl["skipped"]["torch-loop"]
    assert "is not installed" in wl["skipped"]["jax-scan"]
    assert "torch-loop        skipped: torch is not installed" in out
    assert "unroll / best peer: n/a" in out and wl["unroll_over_best_peer"] is None
    assert json.loads((tmp_path / "b.json").read_text())["workloads"]["toy-mgu"]["contenders"]


@pytest.fixture
def one_torch_thread():
    """torch at one thread while a test runs: its default two spin against each other on
    a loaded 2-core machine (a toy step then takes 100s of ms instead of 1)."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_bench_with_the_peers_that_are_installed(capsys, one_torch_thread):
    res = toy_run(["toy-lstm", "toy-mgu"])
    out = capsys.readouterr().out
    assert "GEMM peak: numpy float32 1024x1024 matmul" in out and res["gemm_peak_gflops"] > 0
    peers = bench.load_peers()
    for name, wl in res["workloads"].items():
        for p in peers.PEERS:  # every peer ran, or says in one line why not
            assert p in wl["contenders"] or wl["skipped"][p], (name, p)
            assert "failed" not in wl["skipped"].get(p, ""), wl["skipped"][p]
        row = wl["contenders"]["unroll"]
        assert row["runs"] >= 3 and row["median_ms"] > 0 and row["pct_peak"] > 0
        ran = [p for p in peers.PEERS if p in wl["contenders"]]
        if ran:
            best = min(ran, key=lambda p: wl["contenders"][p]["median_ms"])
            assert wl["best_peer"] == best
            assert wl["unroll_over_best_peer"] == pytest.approx(
                row["median_ms"] / wl["contenders"][best]["median_ms"])
            turns = wl["contenders"][best]["turn_medians_ms"]  # and turn by turn
            assert len(row["turn_medians_ms"]) == len(turns) == bench.ROUNDS
            assert wl["unroll_over_best_peer_by_turn"] == pytest.approx(
                [a / b for a, b in zip(row["turn_medians_ms"], turns)])
            assert f"{name:12s} unroll / best peer: {wl['unroll_over_best_peer']:.2f} (turn " \
                   f"by turn {wl['unroll_over_best_peer_by_turn'][0]:.2f}, " in out
    why = res["workloads"]["toy-mgu"]["skipped"]["torch-fused"]  # there is no nn.MGU
    assert why == "torch has no fused module for mgu" or "is not installed" in why


def test_dtype_other_than_float32_or_64_is_a_one_line_error():
    out = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "--dtype", "float16"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert "float16" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="float32 or float64"):
        bench.main(dtype="float16")


def test_unknown_workload_is_a_one_line_error(capsys):
    assert main(["bench", "--only", "tiny-lstm,huge-lstm"]) == 2
    err = capsys.readouterr().err
    assert "huge-lstm" in err and len(err.strip().splitlines()) == 1
    assert bench.select(quick=True) == list(bench.QUICK)
    assert bench.select(only="long-elman, tiny-lstm") == ["long-elman", "tiny-lstm"]


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a reaper that is not us."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_busy_runs_again_and_kills_its_process(monkeypatch, capsys):
    seen = []
    real = bench.busy_process

    @contextlib.contextmanager
    def spy():
        with real() as proc:
            seen.append((proc, proc.poll()))  # running while the busy pass runs
            yield proc

    monkeypatch.setattr(bench, "busy_process", spy)
    res = toy_run(["toy-mgu"], busy=True, peers=None)
    (proc, during), = seen
    assert during is None and proc.returncode is not None and gone(proc.pid)
    assert res["busy_pid"] == proc.pid
    wl = res["workloads"]["toy-mgu"]
    assert set(wl["busy"]) == set(wl["slowdown"]) == {"unroll", "unroll-reference"}
    assert wl["slowdown"]["unroll"] == pytest.approx(
        wl["busy"]["unroll"]["median_ms"] / wl["contenders"]["unroll"]["median_ms"])
    assert "slowdown with one core busy" in capsys.readouterr().out


def test_busy_process_is_killed_on_ctrl_c():
    with pytest.raises(KeyboardInterrupt):
        with bench.busy_process() as proc:
            assert proc.poll() is None
            raise KeyboardInterrupt
    assert proc.returncode is not None and gone(proc.pid)


SCRIPT = ("import os, sys, time\n"
          "from tools.bench import busy_process\n"
          "with busy_process() as p:\n"
          "    print(p.pid, flush=True)\n"
          "    if sys.argv[1] == 'die':\n"
          "        os._exit(9)  # no cleanup at all: the busy process must notice alone\n"
          "    time.sleep(60)\n")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, "die"])
def test_busy_process_does_not_outlive_the_bench(how):
    bench_proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(how)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pid = int(bench_proc.stdout.readline())
        assert not gone(pid)
        if how != "die":
            bench_proc.send_signal(how)
        bench_proc.wait(timeout=30)
        end = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert gone(pid)
    finally:
        bench_proc.kill()
        bench_proc.wait()
        if "pid" in locals() and not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_contenders_are_timed_in_turns_taken_in_rotation(capsys):
    """A spell of outside load falls on every contender: each is timed in ROUNDS turns,
    one contender after the other; a peer that fails in a later turn is dropped."""
    calls, turn = [], {}

    def step(name, fail_in=None):
        def f():
            if not calls or calls[-1] != name:
                turn[name] = turn.get(name, 0) + 1
            calls.append(name)
            if turn[name] == fail_in:
                raise RuntimeError("broke")
        return f

    skipped = {}
    steps = [("unroll", step("unroll")), ("torch-fused", step("torch-fused")),
             ("jax-scan", step("jax-scan", fail_in=2))]
    rows = bench._time_all("toy", TOY["toy-lstm"], steps, 1.0, 0.003, 1, skipped)
    turns = [c for k, c in enumerate(calls) if k == 0 or calls[k - 1] != c]
    assert turns[:6] == ["unroll", "torch-fused", "jax-scan"] * 2  # it broke in its 2nd
    assert turns.count("unroll") == turns.count("torch-fused") == bench.ROUNDS
    assert set(rows) == {"unroll", "torch-fused"} and "broke" in skipped["jax-scan"]
    assert all(r["runs"] >= bench.ROUNDS for r in rows.values())
    assert "jax-scan          skipped: failed: RuntimeError: broke" in capsys.readouterr().out


def test_a_slow_contender_stops_at_the_hard_cap():
    """A step slower than 3 x the budget (torch-loop beside a busy process: 72 s a run)
    is run once after its warm-up, not once in every turn."""
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.02)

    steps = [("unroll", lambda: calls.append("unroll")), ("torch-loop", slow)]
    rows = bench._time_all("toy", TOY["toy-lstm"], steps, 1.0, 0.003, 1, {})
    assert calls.count("slow") == 2 and rows["torch-loop"]["runs"] == 1
    assert rows["unroll"]["runs"] >= bench.ROUNDS
    assert calls[-1] == "unroll"  # its later turns went on without the slow one
