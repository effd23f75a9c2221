"""The values some flags offer that the model, objective and checkpoint code define (the model presets, the
default objectives, the --verify_checkpoint levels), here in a module that imports nothing: building the command
line (``--help``, a bad flag) then imports no torch, transformers or DeepSpeed. Those modules take them from here.
"""
from typing import Dict

# Sizes of the presets; vocab_size and max_position_embeddings come from the tokenizer and seq_len (model.py).
MODEL_PRESETS: Dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

DEFAULT_OBJECTIVES = ("mlm", "gmlm", "atd", "dtd", "cse")  # the built-in objectives, in registration order

# The shortest --seq_len: [CLS] and [SEP] plus room for what the objectives corrupt (one check, in
# train.preflight, mometas-bench and data.cache, which mometas-prepare uses).
MIN_SEQ_LEN = 8

# How --resume checks a checkpoint against its manifest (checkpoint.layout re-exports it).
VERIFY_LEVELS = ("auto", "size", "full")
