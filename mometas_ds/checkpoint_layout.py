"""Where a downloaded checkpoint's BERT weights are: the directory itself (HF's save_pretrained layout, and
sentence-transformers' current layout, whose Transformer module has ``"path": ""`` in modules.json), or the
Transformer module's folder of an older sentence-transformers directory (``0_Transformer/``). Light: no
transformers import."""
from __future__ import annotations

import json
import os


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
