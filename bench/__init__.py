"""Benchmarks of xmod-pretrain against transformers' X-MOD, run as ``python -m bench``.

Each benchmark is a module ``bench.<name>`` with ``run(quick: bool) -> dict`` (a JSON-serialisable
result); ``report(result) -> str`` and ``plot(result, out_dir) -> list[Path]`` are optional.
"""

BENCHMARKS = ["throughput", "mfu", "languages", "zero3", "memory", "data_prep", "layouts",
              "checkpoint"]
"""The CPU benchmarks, in the order ``python -m bench`` runs them."""

ACCELERATOR_BENCHMARKS = ["gpu"]
"""Run only when named (``python -m bench gpu``): they need a CUDA device (``--quick``: CPU)."""
