"""Downstream evaluation: the tasks, their readers and metrics, the runner behind ``mometas-finetune``
(mometas_ds.cli.finetune; ``python -m mometas_ds.finetune``). See docs/finetuning.md."""
