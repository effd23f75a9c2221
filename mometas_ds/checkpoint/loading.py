"""Loading a chosen tag: DeepSpeed's files through torch.load(weights_only=True) with an allow-list of the few
DeepSpeed types they hold, our client state as plain values."""
from __future__ import annotations

import contextlib
import glob
import importlib
import logging
import os
import pickle
import re
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from mometas_ds.errors import ConfigError
from mometas_ds.checkpoint.layout import CLIENT_STATE_FILE, ResumeRefused, _config_error, _unplain

logger = logging.getLogger(__package__)  # one logger for the package: "mometas_ds.checkpoint", as before the split

# ---------------------------------------------------------------- loading
_DEEPSPEED_TYPES = (  # every non-plain type in DeepSpeed's checkpoint files (checked on 0.19.8, ZeRO 0-3, fp32/bf16)
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    # numpy arrays: the RNG state of checkpoints written before mometas_state.pt held plain values
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
)


def _allowed_types() -> list:
    found = []
    for name in _DEEPSPEED_TYPES:
        module, _, attr = name.rpartition(".")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy.core is deprecated in numpy 2
                found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue  # a DeepSpeed / numpy version without it: its files cannot hold it either
    try:
        found += [type(np.dtype(t)) for t in ("uint32", "int64", "float64")]  # numpy >= 1.25 dtype classes
    except Exception:
        pass
    return found


_allowing = [False]  # weights_only_loads is active


@contextlib.contextmanager
def weights_only_loads():
    """Every torch.load inside, DeepSpeed's own too (its universal converter and loader pass weights_only=False),
    loads with weights_only=True and the allow-list of _DEEPSPEED_TYPES (docs/security.md). Torch >= 2.4."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # torch.load: overrides an explicit weights_only=False
    _allowing[0] = True
    try:
        with torch.serialization.safe_globals(_allowed_types()):
            yield
    finally:
        _allowing[0] = False
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def safe_load(path: str, map_location=None):
    """torch.load(weights_only=True), allowing the DeepSpeed types of _DEEPSPEED_TYPES and nothing else.

    A file holding any other global is refused with ResumeRefused naming it (unpickling it could run
    code). Torch < 2.4 has no allow-list API: there DeepSpeed's own loader (weights_only=False) is kept,
    with a warning (docs/security.md)."""
    serialization = torch.serialization
    try:
        if _allowing[0]:  # inside weights_only_loads: the allow-list is in place (leaving safe_globals drops it)
            return torch.load(path, map_location=map_location, weights_only=True)
        if hasattr(serialization, "safe_globals"):
            with serialization.safe_globals(_allowed_types()):
                return torch.load(path, map_location=map_location, weights_only=True)
        if hasattr(serialization, "add_safe_globals"):
            serialization.add_safe_globals(_allowed_types())
            return torch.load(path, map_location=map_location, weights_only=True)
        logger.warning("torch %s cannot allow-list DeepSpeed's types: loading %s with weights_only=False, which runs "
                       "any code the file holds (upgrade to torch >= 2.4; docs/security.md)", torch.__version__, path)
        return torch.load(path, map_location=map_location, weights_only=False)
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a Python object of type {match.group(1)}" if match else "Python objects"
        raise ResumeRefused(
            f"{path} holds {what}, which no checkpoint of mometas_ds/DeepSpeed holds: loading it could run code, "
            "so it is refused (see docs/security.md)") from None


def _why_not_loaded(tags_dir: str, tag: str) -> str:
    """What a failed load says of the tag: "damaged" only when its manifest could not rule that out."""
    # Here: verify needs torch.distributed, and this module is imported for safe_load alone.
    from mometas_ds.checkpoint.verify import verified

    verdict = verified(tags_dir, tag)
    if verdict is not None and verdict.intact and verdict.level == "full":
        return ("The checkpoint is intact (every file matches the size and checksum its manifest records), so it "
                "does not fit this run: another model (--model_config, --model_name_or_path), tokenizer or "
                "DeepSpeed version wrote it. Resume with the settings that wrote it, or give a new --output_dir "
                "to start afresh")
    checked = ("its files have the sizes its manifest records (checksums not compared: --verify_checkpoint full "
               "compares them)" if verdict is not None and verdict.intact else
               "it has no manifest to check it against" if verdict is None or verdict.intact is None else "")
    return (f"The checkpoint is damaged, or another model, tokenizer or DeepSpeed version wrote it ({checked}): "
            "resume with the settings that wrote it, or from an earlier tag (mometas-checkpoint verify shows which "
            "are intact)")


def load(engine, tags_dir: str, tag: str, load_ds: Optional[Callable] = None) -> dict:
    """engine.load_checkpoint of a chosen tag, its files read by safe_load; returns our client state.

    ``load_ds(engine, tags_dir, tag)``, when given, loads DeepSpeed's state instead (universal.load_universal:
    from the tag's universal copy, converted beforehand on rank 0, for a new ZeRO partitioning); our client
    state is read from the tag itself. Any failure is a ConfigError naming the tag (exit 2), never a traceback
    out of torch.load."""
    tag_dir = os.path.join(tags_dir, tag)
    writer = engine.checkpoint_engine

    def load_safely(path, map_location=None, *args, **kwargs):
        return safe_load(path, map_location=map_location)

    writer.load = load_safely
    try:
        if load_ds is not None:
            load_path, ds_client_state = load_ds(engine, tags_dir, tag)
        else:
            load_path, ds_client_state = engine.load_checkpoint(tags_dir, tag=tag)
        own = os.path.join(tag_dir, CLIENT_STATE_FILE)
        client_state = _unplain(safe_load(own)) if os.path.isfile(own) else ds_client_state
    except ResumeRefused as exc:
        raise _config_error(f"--resume: {exc}") from None
    except Exception as exc:
        raise _config_error(f"--resume: loading checkpoint {tag_dir} failed: {type(exc).__name__}: {exc}. "
                            + _why_not_loaded(tags_dir, tag)) from None
    finally:
        del writer.load  # back to the class's method
    if load_path is None or not isinstance(client_state, dict) or "mometas" not in client_state:
        raise _config_error(f"--resume: checkpoint {tag_dir} holds no mometas_ds training state")
    return client_state


def read_client_state(tag_dir: str) -> Optional[dict]:
    """Our client state in a checkpoint (its own file, or inside DeepSpeed's model-states file in checkpoints
    written before it had one), read with checkpoint.safe_load (no code runs); None if there is neither."""
    ours = os.path.join(tag_dir, CLIENT_STATE_FILE)
    files = [ours] if os.path.isfile(ours) else sorted(glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt")))
    if not files:
        return None
    try:
        state = safe_load(files[0], map_location="cpu")
    except Exception as exc:  # a damaged or unsafe file: name it instead of a traceback
        raise ConfigError(f"--resume: cannot read {files[0]} ({type(exc).__name__}: {exc})") from None
    return {"mometas": (state or {}).get("mometas") or {}}
