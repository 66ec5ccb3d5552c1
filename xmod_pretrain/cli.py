"""Command line: ``xmod_pretrain COMMAND ...``.

``train`` (the default: ``xmod_pretrain +exp=demo``) is the same Hydra app as
``python -m xmod_pretrain +exp=demo``, and ``add-language`` is that app with ``+exp=add_language``;
``prepare`` turns raw text into a tokenizer and shards; ``export`` writes a transformers folder;
``evaluate`` and ``report`` show a run; ``save-language``, ``load-language`` and
``remove-language`` move one language's modules between runs of the same base model.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xmod_core.errors import Aborted, UserError, error_line
from xmod_core.languages import check_language_code
from xmod_core.outputs import check_not_inside_run, closest_folders
from xmod_pretrain.config import CONF_DIR, quoted, register_configs, to_config
from xmod_pretrain.overrides import hydra_errors_as_config_errors

# Commands that read a run and write a module file or a derived run (runs/language_modules.py).
LANGUAGE_COMMANDS = ("save-language", "load-language", "remove-language")


def _train(cfg: DictConfig) -> None:
    with user_errors_exit():
        config = to_config(cfg)  # before the heavy imports: a bad value fails in about a second
        from xmod_pretrain.data.shards import check_first_use
        from xmod_pretrain.runs.launch import run

        # As typed: read through the ListConfig, an override's ${...} would be resolved.
        check_first_use(config, OmegaConf.to_container(HydraConfig.get().overrides.task))
        run(config)


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """The CLI boundary: a UserError becomes one line on stderr and exit status 1, no traceback;
    a second Ctrl-C during training (or one before it starts) one line and exit status 130.
    A process group the command joined is left (``_leave_process_group``); one it found (a
    caller's, in this process) stays."""
    found_a_group = _in_a_process_group()
    succeeded = False
    try:
        yield
        succeeded = True
    except SystemExit as done:  # a tool's own exit status
        succeeded = not done.code
        raise
    except UserError as err:
        print(error_line(err), file=sys.stderr, flush=True)
        sys.exit(1)
    except Aborted as err:
        print(err, file=sys.stderr, flush=True)
        sys.exit(Aborted.exit_status)
    except KeyboardInterrupt:
        print("interrupted by Ctrl-C", file=sys.stderr, flush=True)
        sys.exit(Aborted.exit_status)
    finally:
        if not found_a_group:
            _leave_process_group(succeeded)


def _in_a_process_group() -> bool:
    """Whether this process is in a torch process group (torch is not imported to tell)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _leave_process_group(succeeded: bool) -> None:
    """Only commands that trained joined a group. It is left after a success, and after a
    failure when the process was alone in it: with peers, one may be gone, and leaving would
    wait for it."""
    if _in_a_process_group():
        import torch.distributed as dist

        from xmod_pretrain.training.distributed import finish_process

        if succeeded or dist.get_world_size() == 1:
            finish_process()


def train_main() -> None:
    """The Hydra app; any Hydra override may follow (``+exp=base train.max_steps=10``)."""
    register_configs()
    app = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_train)
    with hydra_errors_as_config_errors():  # a bad override or group option: one line
        app()


def add_language_overrides(argv: list[str]) -> list[str]:
    """``add-language`` options as Hydra overrides of ``+exp=add_language``; what argparse does
    not know (``optim.lr=...``, ``deepspeed=zero3``) passes through as Hydra overrides."""
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain add-language",
        description="Add languages to a trained run: freeze every shared weight and train only "
                    "the new languages' modules, into a new run directory.")
    parser.add_argument("--lang", action="append", required=True,
                        help="language to add, xx_YY or xxx_Xxxx (repeat for several)")
    parser.add_argument("--from", dest="source",
                        help="run to grow (read only; default: the demo's, runs/demo)")
    parser.add_argument("--out", help="new run directory (default: SOURCE+LANG..., and "
                                      "+vocabN with --extend-vocab N)")
    parser.add_argument("--text", help="raw text: a file (one language), a folder of <xx_YY>.txt, "
                                       "or a JSON manifest (default: the bundled UDHR)")
    parser.add_argument("--init", default="random", help="random | copy:LANG | avg:LANG1+LANG2")
    parser.add_argument("--extend-vocab", type=int, metavar="N",
                        help="learn up to N new SentencePiece pieces from the language's text "
                             "and append them to the vocabulary (old ids and old text unchanged)")
    parser.add_argument("--init-vocab", choices=("mean", "random"),
                        help="new rows: mean of the old pieces spelling each new piece (default), "
                             "or random")
    parser.add_argument("--steps", type=int, help="training steps (default 200)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain a language the run already has")
    args, hydra_overrides = parser.parse_known_args(argv)
    for lang in args.lang:  # before any DeepSpeed start: a typo fails in a second
        check_language_code(lang, "--lang")
    if args.source is None:
        from xmod_pretrain.runs.records import default_source_run

        args.source = default_source_run()
    check_source_exists(args.source)
    out = args.out or default_added_run(args.source, args.lang, args.extend_vocab, args.init_vocab)
    check_not_inside_run(out, "--out")
    overrides = ["+exp=add_language", f"run_dir={quoted(out)}",
                 f"add_language.source_run={quoted(args.source)}",
                 f"add_language.languages=[{','.join(args.lang)}]", f"add_language.init={args.init}"]
    if args.text:
        overrides.append(f"add_language.text={quoted(args.text)}")
    if args.steps is not None:  # the experiment's warmup is a share of the steps
        overrides.append(f"train.max_steps={args.steps}")
    if args.overwrite:
        overrides.append("add_language.overwrite=true")
    if args.extend_vocab is not None:
        overrides.append(f"add_language.extend_vocab={args.extend_vocab}")
    if args.init_vocab is not None:
        overrides.append(f"add_language.init_vocab={args.init_vocab}")
    return overrides + hydra_overrides


def check_source_exists(source: str) -> None:
    """``--from`` names a folder; else one line, with the closest sibling names."""
    if not Path(source).is_dir():
        raise UserError(f"--from {source} does not exist{closest_folders(source)}")


def default_added_run(source: str, languages: list[str], extend_vocab: int | None,
                      init_vocab: str | None) -> str:
    """``SOURCE+LANG...``, and ``+vocabN`` (``+vocabN-random``) for a grown vocabulary: the
    README's add-language commands, run in turn, write runs of their own."""
    out = f"{str(source).rstrip('/')}+{'+'.join(languages)}"
    if extend_vocab is not None:
        out += f"+vocab{extend_vocab}" + ("-random" if init_vocab == "random" else "")
    return out


# Subcommands with an argparse ``main(argv) -> int`` of their own, imported only when used.
TOOLS = {
    "prepare": "data_prep.prepare",
    "export": "xmod_pretrain.interop.export",
    "evaluate": "xmod_pretrain.evaluation.masked_lm",
    "report": "xmod_pretrain.evaluation.report",
    "transfer": "xmod_pretrain.recipes.transfer.command",
    "curse": "xmod_pretrain.experiments.curse",
}


# The usage listing, one line a command, in the order printed; ``train`` is what runs without one.
COMMANDS = {
    "train": "pre-train (the default): xmod_pretrain [train] [+exp=NAME] [Hydra overrides]",
    "add-language": "train new languages' modules on a trained run, into a new run",
    "prepare": "raw text -> SentencePiece tokenizer + token shards",
    "export": "write a run's checkpoint as a transformers X-MOD folder",
    "evaluate": "per-language masked-LM loss and perplexity of a run's checkpoint",
    "report": "training curves and the latest evaluation of a run: PNGs and one HTML page",
    "transfer": "fine-tune on one language, evaluate zero-shot on the others (frozen modules)",
    "curse": "the curse of multilinguality: X-MOD against a shared model as languages are added",
    "save-language": "save one language's modules of a run as a file",
    "load-language": "write a new run: a run plus one saved language module",
    "remove-language": "write a new run: a run without one language's modules",
}
HELP_WORDS = ("-h", "--help", "help")


def usage() -> str:
    width = max(map(len, COMMANDS))
    listing = [f"  {name:<{width}}  {line}" for name, line in COMMANDS.items()]
    return "\n".join([
        "usage: xmod_pretrain [COMMAND] [ARGS...]   (python -m xmod_pretrain is the same)",
        "",
        "commands:",
        *listing,
        "",
        "xmod_pretrain COMMAND --help (or xmod_pretrain help COMMAND) shows a command's own help;",
        "for train that is its config groups and config. xmod_pretrain train --hydra-help shows",
        "Hydra's help (--config-dir, --cfg job, --multirun, ...).",
    ])


def main(argv: list[str] | None = None) -> None:
    with user_errors_exit():
        _dispatch(list(sys.argv[1:] if argv is None else argv))


def _dispatch(argv: list[str]) -> None:
    if argv and argv[0] in HELP_WORDS:
        if argv[0] == "help" and len(argv) > 1:
            return _dispatch([argv[1], "--help"])
        print(usage())
        return
    # Anything that reads as a Hydra override or option (+exp=demo, --config-dir) trains.
    command = argv[0] if argv and not argv[0].startswith(("+", "-")) and "=" not in argv[0] else "train"
    if command not in COMMANDS:
        sys.exit(f"xmod_pretrain: unknown command {command!r} (commands: {', '.join(COMMANDS)})")
    if command in TOOLS:
        sys.exit(importlib.import_module(TOOLS[command]).main(argv[1:]))
    if command in LANGUAGE_COMMANDS:
        from xmod_pretrain.runs.language_modules import main as language_main

        sys.exit(language_main(argv[1:], command))
    if command == "add-language":
        argv = ["train", *add_language_overrides(argv[1:])]
    if argv and argv[0] == "train":
        argv = argv[1:]
    sys.argv = [f"{sys.argv[0]} train", *argv]
    train_main()


if __name__ == "__main__":
    main()
