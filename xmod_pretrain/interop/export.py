"""``xmod_pretrain export --from RUN_DIR --out DIR``: a run's checkpoint as a transformers X-MOD
folder that ``AutoModelForMaskedLM`` and ``AutoTokenizer`` load (see ``interop/folder.py``)."""

from __future__ import annotations

import argparse
import sys

from xmod_core.errors import UserError
from xmod_pretrain.interop import export_run


def main(argv: list[str] | None = None) -> int:
    """``xmod_pretrain export --from RUN_DIR --out DIR [--step N] [--default-language CODE]``."""
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain export",
        description="Write a run's checkpoint as a transformers X-MOD folder "
                    "(AutoModelForMaskedLM / AutoTokenizer load it).")
    parser.add_argument("--from", dest="run_dir", required=True, metavar="RUN_DIR",
                        help="the run directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: latest)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (never a run or its checkpoints)")
    parser.add_argument("--default-language", metavar="CODE",
                        help="language transformers uses without lang_ids (default: the first)")
    args = parser.parse_args(argv)
    try:
        run = export_run(args.run_dir, args.out, args.step, args.default_language, args.overwrite)
    except (UserError, OSError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) else err  # KeyError quotes its text
        print(f"xmod_pretrain export: error: {message}", file=sys.stderr)
        return 1
    print(f"exported {run.path} ({len(run.languages)} languages: {', '.join(run.languages)}) "
          f"to {args.out}")
    return 0
