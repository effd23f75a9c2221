"""What every part of mometas-study shares: its constants, its error type and the sampler specs."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

PROG = "mometas-study"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OBJECTIVES = ["mlm", "dtd", "atd", "noisy_mlm", "coin_flip"]
DEFAULT_BAD = ["noisy_mlm", "coin_flip"]
DEFAULT_SAMPLERS = ["uniform", "mometas", "exp3", "mometas_credit"]
EXAMPLE_OBJECTIVES = os.path.join(REPO_ROOT, "examples", "study_objectives.py")
RESULT_FILE = "study_result.json"
logger = logging.getLogger("mometas_ds.study")


class StudyError(ValueError):
    """A bad flag or input of the study: reported as ``mometas-study: error: ...``, exit 2."""


@dataclass
class SamplerSpec:
    label: str
    name: str
    args: dict = field(default_factory=dict)  # --sampler_args
    meta_fixed_set: str = "auto"  # --meta_fixed_set: the spec's JSON may hold it too ("meta_fixed_set": "on")


def parse_sampler_spec(text: str) -> SamplerSpec:
    """``LABEL=NAME[:JSON]`` or ``NAME[:JSON]``."""
    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = "", text
    name, colon, args_text = rest.partition(":")
    name = name.strip()
    label = label.strip() or name
    if not name or not label.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise StudyError(f"--samplers: {text!r} is not LABEL=NAME[:JSON] (label: letters, digits, _-.)")
    args = {}
    if colon:
        try:
            args = json.loads(args_text)
        except json.JSONDecodeError as exc:
            raise StudyError(f"--samplers: {text!r}: the options after ':' are not JSON ({exc})") from None
        if not isinstance(args, dict):
            raise StudyError(f"--samplers: {text!r}: the options after ':' must be a JSON object")
    fixed = args.pop("meta_fixed_set", "auto")
    fixed = {True: "on", False: "off"}.get(fixed, fixed) if isinstance(fixed, bool) else fixed
    if fixed not in ("auto", "on", "off"):
        raise StudyError(f"--samplers: {text!r}: meta_fixed_set must be auto, on or off (or true/false)")
    return SamplerSpec(label, name, args, fixed)
