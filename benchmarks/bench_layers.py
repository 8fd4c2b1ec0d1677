"""Record `sepconv bench` (all suites) at 1 and 2 threads into benchmarks/results/.

    python benchmarks/bench_layers.py            # about 2 minutes on a 2-core CPU

Run it on a quiet machine: with other processes busy, 2-thread timings of small
operators suffer from OpenMP oversubscription (seen here: up to 10x slower, in
multiples of the scheduler's time slice). The load average is recorded with
each result (`machine.loadavg_1_5_15`). Results are summarized by hand in
benchmarks/README.md.
"""

import sys
from pathlib import Path

from sepconv.cli import main

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for threads, name in ((1, "cpu-1thread"), (2, "cpu-2threads")):
        code = main(["bench", "--threads", str(threads), "--out", str(HERE / "results" / name)])
        if code:
            sys.exit(code)
