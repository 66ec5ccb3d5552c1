"""``python -m bench [NAME ...] [--quick] [--out DIR]``: run benchmarks, print, save, plot.

Full runs write ``bench/results/NAME.json`` and the plots there; ``--quick`` runs tiny sizes
(seconds, for tests) and writes to ``--out`` (default: a new temporary folder).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench import ACCELERATOR_BENCHMARKS, BENCHMARKS
from bench.common import RESULTS_DIR, torch_threads, write_json


def run_one(name: str, quick: bool, out_dir: Path) -> dict:
    """Run ``bench.<name>``, write its JSON and plots into ``out_dir``, print its table."""
    module = importlib.import_module(f"bench.{name}")
    start = time.perf_counter()
    with torch_threads(1 if quick else torch.get_num_threads()):
        result = module.run(quick)
    result["quick"], result["wall_s"] = quick, time.perf_counter() - start
    write_json(result, out_dir / f"{name}.json")
    plots = module.plot(result, out_dir) if hasattr(module, "plot") else []
    print(f"\n== {name} ({result['wall_s']:.0f} s) ==", flush=True)
    if hasattr(module, "report"):
        print(module.report(result))
    else:  # a benchmark without a table of its own: its JSON, less the machine
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    for path in plots:
        print(f"plot: {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS, *ACCELERATOR_BENCHMARKS],
                        metavar="NAME",
                        help=f"benchmarks to run (default: the CPU ones, in order: "
                             f"{', '.join(BENCHMARKS)}; on a CUDA machine also: "
                             f"{', '.join(ACCELERATOR_BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: bench/results, or a temporary one with --quick)")
    args = parser.parse_args(argv)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="bench-")) if args.quick else RESULTS_DIR)
    every = BENCHMARKS + ACCELERATOR_BENCHMARKS
    names = [n for n in every if n in args.names] if args.names else BENCHMARKS
    for name in names:
        run_one(name, args.quick, out_dir)
    print(f"\nresults in {out_dir}")
    return 0


if __name__ == "__main__":  # data_prep's spawned workers import this module: run only as main
    sys.exit(main())
