"""Speed of one BPTT training step against the peers: ``python benchmarks/bench_bptt.py``.

Same as ``unroll bench``; numbers go in the issue notes, never in tests.
"""

import sys

from tools.bench import main

if __name__ == "__main__":
    main(quick="--quick" in sys.argv, dtype="float64" if "--float64" in sys.argv else "float32")
