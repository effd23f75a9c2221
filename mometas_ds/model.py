"""A BERT encoder with one head per objective: ``model(batch, objective) -> {"loss": ...}``."""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel

from mometas_ds.config.choices import MODEL_PRESETS
from mometas_ds.errors import ConfigError, read_json_object
from mometas_ds.model_config_check import transformer_dir
from mometas_ds.objectives import Objective

logger = logging.getLogger(__name__)

# The mlm head's weights under the names of HF's BertForMaskedLM (its decoder is tied to the embeddings).
HF_MLM_HEAD_KEYS = {
    "heads.mlm.dense.weight": "cls.predictions.transform.dense.weight",
    "heads.mlm.dense.bias": "cls.predictions.transform.dense.bias",
    "heads.mlm.layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "heads.mlm.layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "heads.mlm.bias": "cls.predictions.bias",
}


# BERT's pooler (dense + tanh on [CLS]) under HF's names, and where a run keeps it: the cse head when the run
# has one (its head starts from the checkpoint's pooler), else KeptPooler's fp32 buffers (unchanged).
HF_POOLER_KEYS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias")
KEPT_POOLER_KEYS = ("kept_pooler.weight", "kept_pooler.bias")
CSE_POOLER_KEYS = ("heads.cse.dense.weight", "heads.cse.dense.bias")


class KeptPooler(nn.Module):
    """A checkpoint's pretrained pooler, carried through the run unchanged so that the export holds it.

    Buffers, not parameters: no objective trains it (a parameter without gradients would still be decayed by
    AdamW). They stay fp32 when DeepSpeed casts the module to bf16/fp16 (only device moves are followed), so
    the exported pooler equals the checkpoint's bit for bit; they are saved in every checkpoint (ZeRO's
    consolidation returns buffers too)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def _apply(self, fn, recurse=True):
        for name, buffer in self._buffers.items():
            if buffer is not None:
                device = fn(torch.empty(0, dtype=torch.float32, device=buffer.device)).device
                self._buffers[name] = buffer.to(device=device, dtype=torch.float32)
        return self

    def forward(self, *args, **kwargs):  # never called: nn.Module wants one
        raise RuntimeError("KeptPooler only carries the checkpoint's pooler to the export")


def position_embeddings(model_config: Optional[str], seq_len: int) -> Optional[int]:
    """The position embeddings a model built from ``model_config`` at ``seq_len`` gets, or None when they do
    not follow --seq_len (a checkpoint's config, or a --model_config JSON that sets them). The one place of
    the rule: from scratch, max(512, seq_len), as BERT's own checkpoints."""
    if model_config is None:
        return None
    if model_config not in MODEL_PRESETS:
        fields = read_json_object(model_config, "--model_config")
        if "max_position_embeddings" in fields:
            return None
    elif "max_position_embeddings" in MODEL_PRESETS[model_config]:
        return None
    return max(512, seq_len)


def build_bert_config(model_config: str, vocab_size: int, seq_len: int = 512) -> BertConfig:
    """A BertConfig from a preset name or a JSON file of BertConfig fields; vocab_size from the tokenizer
    unless the JSON sets it, position embeddings by ``position_embeddings``."""
    if model_config in MODEL_PRESETS:
        fields = dict(MODEL_PRESETS[model_config])
    elif os.path.isfile(model_config):
        fields = read_json_object(model_config, "--model_config", ValueError)
    else:
        raise ValueError(
            f"--model_config {model_config!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a JSON file"
        )
    fields.setdefault("vocab_size", vocab_size)
    fields.setdefault("max_position_embeddings", max(512, seq_len))
    if fields["vocab_size"] < vocab_size:
        raise ValueError(f"--model_config vocab_size={fields['vocab_size']} < tokenizer vocabulary {vocab_size}")
    return BertConfig(**fields)


class MultiObjectiveBert(nn.Module):
    """transformers' BertModel (SDPA attention) plus the heads of the given objectives.

    Objectives sharing a ``head_name`` (mlm, gmlm) share one head. Each head's forward
    computes its own loss so that ZeRO-3 gathers the head's parameters when it runs.
    """

    def __init__(self, encoder: BertModel, objectives: Mapping[str, Objective]):
        super().__init__()
        if not objectives:
            raise ValueError("MultiObjectiveBert needs at least one objective")
        self.bert = encoder
        self.objectives = dict(objectives)
        self.heads = nn.ModuleDict()
        word_embeddings = self.bert.get_input_embeddings()
        for objective in self.objectives.values():
            if objective.head_name not in self.heads:
                head = objective.build_head(self.bert.config, word_embeddings)
                self.heads[objective.head_name] = head
                tied = getattr(head, "tied_weight", None)
                if tied is not None:
                    # The head reads the embedding matrix outside the embedding's own forward:
                    # under ZeRO-3 DeepSpeed must gather it for the head too (a no-op otherwise). Imported
                    # here: DeepSpeed takes seconds to import, and `mometas-pretrain --help` reads this module.
                    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

                    register_external_parameter(head, tied)

    @classmethod
    def from_config(cls, config: BertConfig, objectives: Mapping[str, Objective]) -> "MultiObjectiveBert":
        config._attn_implementation = "sdpa"
        return cls(BertModel(config, add_pooling_layer=False), objectives)

    @classmethod
    def from_pretrained(cls, path: str, objectives: Mapping[str, Objective]) -> "MultiObjectiveBert":
        """Continual pre-training from a local HF checkpoint: the encoder, the mlm head when the checkpoint has
        one (a BertForMaskedLM / BertForPreTraining one, e.g. bert-large-uncased), and the pooler when it has
        one (BertForPreTraining, a bare BertModel, most sentence-transformers models): it becomes the cse
        head's starting point when the run has cse, else it is kept unchanged (KeptPooler) for the export.
        Other heads start fresh; one log line says which heads were loaded and which start fresh."""
        if not os.path.isdir(path):
            raise ValueError(f"--model_name_or_path {path}: not a local directory (no model hub here)")
        path = transformer_dir(path)  # an older sentence-transformers directory: its 0_Transformer/
        # BertForPreTraining loads every layout (BertForMaskedLM, bare BertModel with or without pooler),
        # reporting what the checkpoint lacks (cls.*, bert.pooler.*) as missing.
        pretraining, info = BertForPreTraining.from_pretrained(path, attn_implementation="sdpa",
                                                               output_loading_info=True)
        missing = set(info["missing_keys"])
        missing_encoder = sorted(key for key in missing if key.startswith("bert.") and key not in HF_POOLER_KEYS)
        if missing_encoder:
            raise ConfigError(
                f"--model_name_or_path {path}: {len(missing_encoder)} encoder weight(s) are not in the checkpoint "
                f"(e.g. {missing_encoder[0]}), so they would start random; is it a BERT checkpoint with HF's names?"
            )
        # A checkpoint saved in bf16/fp16 loads in that dtype (transformers' dtype="auto"), beside fp32 heads;
        # the engine casts the whole model to the DeepSpeed config's precision later.
        pretraining.float()
        encoder = pretraining.bert
        pooler = encoder.pooler
        encoder.pooler = None  # our forward reads last_hidden_state only: no pooler in the graph
        hf = pretraining.state_dict()
        model = cls(encoder, objectives)
        loaded, fresh = ["encoder"], []
        has_pooler = pooler is not None and not missing & set(HF_POOLER_KEYS)
        if has_pooler:
            weight, bias = pooler.dense.weight, pooler.dense.bias
            if "cse" in model.heads:
                model.heads["cse"].dense.load_state_dict({"weight": weight, "bias": bias})
                loaded.append("pooler (as the cse head's start)")
            else:
                model.kept_pooler = KeptPooler(weight, bias)
                loaded.append("pooler (kept unchanged for the export)")
        for name in model.heads:
            if name == "cse" and has_pooler:
                continue
            if name == "mlm":
                hf_head = {key: hf[key] for key in HF_MLM_HEAD_KEYS.values() if key in hf}
                if not missing & set(HF_MLM_HEAD_KEYS.values()) and len(hf_head) == len(HF_MLM_HEAD_KEYS):
                    ours = {key[len("heads.mlm."):]: hf_head[hf_key] for key, hf_key in HF_MLM_HEAD_KEYS.items()}
                    model.heads["mlm"].load_state_dict(ours)
                    loaded.append("mlm head")
                    continue
            fresh.append(f"{name} head")
        logger.info("loaded from %s: %s; starting fresh: %s%s", path, ", ".join(loaded), ", ".join(fresh) or "nothing",
                    "" if has_pooler else "; the checkpoint has no pooler (the export will have none without cse)")
        if "mlm" in model.heads and "mlm head" in fresh:
            logger.warning("%s has no MLM head (cls.predictions.*: a bare BertModel or sentence-transformers "
                           "checkpoint): the mlm head starts RANDOM, so the first steps' mlm loss is high; "
                           "transformers' 'checkpoint seem corrupted' lines above are about this head", path)
        return model

    def forward(self, batch: Mapping[str, torch.Tensor], objective: str) -> Dict[str, torch.Tensor]:
        if objective not in self.objectives:
            raise ValueError(f"unknown objective {objective!r}; this model has {', '.join(self.objectives)}")
        hidden = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self.heads[self.objectives[objective].head_name](hidden, batch)

    def save_hf(self, out_dir: str, tokenizer=None, state_dict: Optional[dict] = None) -> None:
        """Write the model in HF format, fp32. With an mlm head it is a BertForMaskedLM checkpoint
        (``pipeline("fill-mask", out_dir)`` works), and ``AutoModel.from_pretrained(out_dir)`` loads the encoder.

        ``state_dict`` (e.g. consolidated from a ZeRO checkpoint) overrides the module's own weights.
        """
        full = state_dict if state_dict is not None else self.state_dict()
        weights = {k: v for k, v in full.items() if k.startswith("bert.")}
        # BERT's pooler is dense + tanh on [CLS], the cse head's layout: the cse head is exported as the pooler
        # (it started from the checkpoint's pooler, if any); without cse, the checkpoint's pooler kept unchanged;
        # from scratch without cse there is none.
        for source in (CSE_POOLER_KEYS, KEPT_POOLER_KEYS):
            if all(key in full for key in source):
                weights.update(dict(zip(HF_POOLER_KEYS, (full[key] for key in source))))
                break
        has_mlm = all(key in full for key in HF_MLM_HEAD_KEYS)
        if has_mlm:
            weights.update({hf: full[key] for key, hf in HF_MLM_HEAD_KEYS.items()})
        weights = {k: v.detach().float().contiguous() for k, v in weights.items()}
        # DeepSpeed casts the module to bf16/fp16 in place; the weights written are fp32, so is the config.
        config = BertConfig.from_dict(self.bert.config.to_dict())
        config.dtype = torch.float32
        if has_mlm:
            with torch.device("meta"):  # only for save_pretrained's bookkeeping: no memory for weights
                hf_model = BertForMaskedLM(config)
        else:
            weights = {k[len("bert."):]: v for k, v in weights.items()}
            with torch.device("meta"):
                hf_model = BertModel(config, add_pooling_layer="pooler.dense.weight" in weights)
        hf_model.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
