"""Every example runs to the end (the vanishing-gradient one on a short sequence)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUNS = {
    "one_to_many.py": [],
    "many_to_one.py": [],
    "many_to_many.py": [],
    "seq2seq_reverse.py": [],
    "vanishing_gradients.py": ["8"],
}


def test_every_example_is_listed():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name, tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *RUNS[name]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()
