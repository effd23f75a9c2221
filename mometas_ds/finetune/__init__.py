"""Downstream evaluation: the tasks, their readers and metrics, the runner behind ``mometas-finetune``
(mometas_ds.cli.finetune; ``python -m mometas_ds.cli.finetune``). See docs/finetuning.md.

A task kind of your own: ``mometas_ds.finetune.base`` (``TaskKind``, ``register_kind``) and
``mometas_ds.finetune.tasks.register_task`` (docs/finetuning-kinds.md). Nothing is imported here, so
``mometas-finetune --help`` loads no transformers.
"""
