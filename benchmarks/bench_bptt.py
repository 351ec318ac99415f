"""Speed of one BPTT training step against the peers: ``python benchmarks/bench_bptt.py``.

Same as ``unroll bench`` and takes the same options (--quick, --only, --dtype, --busy,
--json); numbers go in the issue notes, never in tests.
"""

import sys

from tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
