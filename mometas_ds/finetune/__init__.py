"""Downstream evaluation: ``mometas-finetune`` (``python -m mometas_ds.finetune``). See docs/finetuning.md."""


def main(argv=None) -> int:
    from .cli import main as cli_main  # not at the top: `python -m mometas_ds.finetune.cli` would import cli twice

    return cli_main(argv)
