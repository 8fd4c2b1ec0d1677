"""Record `sepconv bench` (all suites) at 1 and 2 threads into benchmarks/results/.

    python benchmarks/bench_layers.py [--suffix NAME]   # about 8 minutes on a 2-core CPU

--suffix names the machine: records go into `results/layers-NAME-1thread/` etc. (default NAME:
`cpu`; the committed records are named by machine, e.g. `--suffix zen4-avx512`).

The last two records (`layers-NAME-1thread-keepmem`, `layers-NAME-2thread-keepmem`) are taken after
`sepconv.keep_freed_memory()`: without it, a candidate timed right after another can pay
for fresh pages (seen on Zen 4 with 2 threads: the fused 64 -> 64 @32 layer took 4.3 ms
for its first two calls after a standard convolution, then 1.6-1.7 ms: its 8 MiB output on
newly mapped pages).

Run it on a quiet machine: with other processes busy, 2-thread timings of small
operators suffer from OpenMP oversubscription (seen here: up to 10x slower, in
multiples of the scheduler's time slice). The load average is recorded with
each result (`machine.loadavg_1_5_15`). Results are summarized by hand in
benchmarks/README.md.
"""

import argparse
import sys
from pathlib import Path

from sepconv.cli import main

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suffix", default="", help="machine: results/layers-SUFFIX-<N>thread[-keepmem]/")
    args = parser.parse_args()
    if args.suffix and not args.suffix.replace("-", "").isalnum():
        parser.error(f"--suffix must be letters, digits and '-', got {args.suffix!r}")
    machine = args.suffix or "cpu"
    # the --keep-freed-memory run last: sepconv.keep_freed_memory() cannot be undone within the process
    for threads, name, extra in ((1, "layers-{}-1thread", []), (2, "layers-{}-2thread", []),
                                 (1, "layers-{}-1thread-keepmem", ["--keep-freed-memory"]),
                                 (2, "layers-{}-2thread-keepmem", ["--keep-freed-memory"])):
        code = main(["bench", "--threads", str(threads), *extra, "--out", str(HERE / "results" / name.format(machine))])
        if code:
            sys.exit(code)
