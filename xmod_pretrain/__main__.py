"""``python -m xmod_pretrain [+exp=NAME] [overrides...]``: pre-train with Hydra's config."""

from xmod_pretrain.cli import train_main

if __name__ == "__main__":
    train_main()
