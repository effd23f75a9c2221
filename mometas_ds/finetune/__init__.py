"""Downstream evaluation: ``mometas-finetune`` (``python -m mometas_ds.finetune``). See docs/finetuning.md."""


def main(argv=None) -> int:
    from .cli import main as cli_main

    return cli_main(argv)
