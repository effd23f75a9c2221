"""Checks of a --model_config BertConfig JSON before any work.

Hand-written because BertConfig takes any value and any key without a word: a string
max_position_embeddings fails later in a comparison (a traceback), heads that do not divide the
hidden size fail only when the model is built, and a misspelt field is kept as an unused attribute.
The valid names and their types come from transformers' own BertConfig (its fields and defaults).
"""
from __future__ import annotations

import functools
import json
import os
import inspect
from typing import Dict

from transformers import BertConfig

from mometas_ds.config.choices import MODEL_PRESETS
from mometas_ds.config.settings import PretrainConfig
from mometas_ds.errors import ConfigError, read_json_object
from mometas_ds.config.fields import (
    BOOL, NON_NEGATIVE, NUMBER, POSITIVE_INT, STRING, Check, is_int, is_number, suggestion,
)

# Fields the model is built from, with stricter checks than their defaults' types give.
_DROPOUT: Check = (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
_OPTIONAL_DROPOUT: Check = (lambda v: v is None or (is_number(v) and 0 <= v < 1), "null or a number in [0, 1)")
_OPTIONAL_INT: Check = (lambda v: v is None or (is_int(v) and v >= 0), "null or a whole number >= 0")
_NON_NEGATIVE_INT: Check = (lambda v: is_int(v) and v >= 0, "a whole number >= 0")
_POSITIVE: Check = (lambda v: is_number(v) and v > 0, "a finite number > 0")
_EXPLICIT: Dict[str, Check] = {
    "vocab_size": POSITIVE_INT, "hidden_size": POSITIVE_INT, "num_hidden_layers": POSITIVE_INT,
    "num_attention_heads": POSITIVE_INT, "intermediate_size": POSITIVE_INT, "max_position_embeddings": POSITIVE_INT,
    "type_vocab_size": POSITIVE_INT, "hidden_dropout_prob": _DROPOUT, "attention_probs_dropout_prob": _DROPOUT,
    "classifier_dropout": _OPTIONAL_DROPOUT, "initializer_range": NON_NEGATIVE, "layer_norm_eps": _POSITIVE,
    "pad_token_id": _OPTIONAL_INT, "bos_token_id": _OPTIONAL_INT, "eos_token_id": _OPTIONAL_INT,
    "hidden_act": STRING, "model_type": STRING, "chunk_size_feed_forward": _NON_NEGATIVE_INT,
}
# Names older transformers versions wrote into config.json (a copied config may hold them).
_LEGACY = ("torch_dtype", "position_embedding_type", "gradient_checkpointing", "num_labels", "finetuning_task",
           "output_past", "_attn_implementation")


@functools.lru_cache(maxsize=1)
def bert_config_fields() -> Dict[str, Check]:
    """Every name BertConfig knows, with the check its default's type implies (or a stricter one)."""
    table: Dict[str, Check] = {}
    defaults = BertConfig().to_dict()
    names = set(defaults) | set(inspect.signature(BertConfig.__init__).parameters) - {"self", "kwargs"}
    for name in names:
        default = defaults.get(name)
        if isinstance(default, bool):
            table[name] = BOOL
        elif isinstance(default, int):
            table[name] = _NON_NEGATIVE_INT
        elif isinstance(default, float):
            table[name] = NUMBER
        elif isinstance(default, str):
            table[name] = STRING
        else:
            table[name] = (lambda v: True, "anything")
    table.update(_EXPLICIT)
    for name in _LEGACY:
        table.setdefault(name, (lambda v: True, "anything"))
    return table


def check_model_config_fields(fields: dict, path: str) -> None:
    """ConfigError naming --model_config, the file and the field for a mistyped or unknown field."""
    table = bert_config_fields()
    for key, value in fields.items():
        if key not in table:
            raise ConfigError(f"--model_config: {path}: BertConfig has no field {key!r}{suggestion(key, table)}; "
                              "it would be ignored without a word")
        ok, must_be = table[key]
        if not ok(value):
            raise ConfigError(f"--model_config: {path}: {key} must be {must_be}, got {value!r}")
    defaults = BertConfig()  # what build_bert_config falls back to for a field the file leaves out
    hidden = fields.get("hidden_size", defaults.hidden_size)
    heads = fields.get("num_attention_heads", defaults.num_attention_heads)
    if hidden % heads:
        raise ConfigError(f"--model_config: {path}: hidden_size {hidden} is not a multiple of num_attention_heads "
                          f"{heads}; each head takes hidden_size / num_attention_heads dimensions")


def read_model_config(model_dir: str) -> dict:
    """The config.json of a local HF checkpoint, as a dict; ConfigError naming the flag if unreadable."""
    return read_json_object(os.path.join(model_dir, "config.json"), "--model_name_or_path")


def check_tokenizer_fits_model(cfg: PretrainConfig, num_tokens: int) -> None:
    """The tokenizer must not have ids beyond the embedding rows (of the checkpoint, or of a
    --model_config JSON that sets vocab_size); checked before the corpus is tokenized."""
    if cfg.model_name_or_path is not None:
        vocab_size = read_model_config(cfg.model_name_or_path).get("vocab_size")
        flag, source = ("--tokenizer" if cfg.tokenizer else "--model_name_or_path"), cfg.model_name_or_path
    elif cfg.model_config not in MODEL_PRESETS:
        vocab_size = read_json_object(cfg.model_config, "--model_config").get("vocab_size")
        flag, source = "--model_config", cfg.model_config
    else:
        return  # a preset takes its vocab_size from the tokenizer
    if vocab_size is not None and num_tokens > vocab_size:
        raise ConfigError(
            f"{flag}: the tokenizer has {num_tokens} tokens but the embeddings of {source} hold {vocab_size}")


def transformer_dir(path: str) -> str:
    """``path``, or its sentence-transformers Transformer module's folder when ``path`` has no config.json but a
    modules.json naming such a folder that has one."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    try:
        with open(os.path.join(path, "modules.json"), encoding="utf-8-sig") as f:
            modules = json.load(f)
    except (OSError, ValueError):
        return path
    if not isinstance(modules, list):
        return path
    for module in modules:
        if (isinstance(module, dict) and str(module.get("type", "")).endswith("models.Transformer")
                and isinstance(module.get("path"), str) and module["path"]):
            inner = os.path.join(path, module["path"])
            if os.path.isfile(os.path.join(inner, "config.json")):
                return inner
    return path
