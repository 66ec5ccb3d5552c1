"""``python -m xmod_pretrain [COMMAND] [ARGS...]``: the console script ``xmod_pretrain``; without a
command, pre-train with Hydra's config (``python -m xmod_pretrain +exp=demo``)."""

from xmod_pretrain.cli import main

if __name__ == "__main__":
    main()
