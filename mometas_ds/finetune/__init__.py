"""Downstream fine-tuning of a pre-trained encoder (mometas-finetune)."""
