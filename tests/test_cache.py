"""The kernel cache: a private per-user folder; a corrupt entry is rebuilt."""

import os
import stat
import subprocess
import sys

import numba
import pytest

from rnn.program import cache

RUN = ("import numpy as np, rnn\n"
       "m = rnn.Model(rnn.cells.elman(1, 3), seed=0)\n"
       "print(rnn.bptt(m, np.ones((2, 3, 1)), np.zeros((2, 3, 3))).loss)")


def test_cache_folder_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE", str(tmp_path / "c"))
    path = cache.cache_dir()
    assert path == tmp_path / "c" / "kernels"
    st = path.stat()
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_a_folder_others_can_write_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "kernels").mkdir(parents=True)
    (shared / "kernels").chmod(0o777)
    monkeypatch.setenv("UNROLL_CACHE", str(shared))
    with pytest.warns(RuntimeWarning, match="not caching"):
        path = cache.cache_dir()
    assert shared not in path.parents
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert cache.load("X = 1\n", "probe").X == 1  # and it works from there


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no Numba cache without the JIT")
def test_a_corrupt_numba_index_is_rebuilt(tmp_path):
    env = dict(os.environ, UNROLL_CACHE=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    index = list(tmp_path.glob("kernels/__pycache__/*.nbi"))
    assert index, "Numba wrote no cache index"
    for f in index:
        f.write_bytes(b"\x80\x04K" + os.urandom(40))  # a damaged pickle
    again = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
