"""Named suites of objectives with known worth (``mometas-study --suite NAME``), split into dev and test.

A suite fixes the objectives, which of them are harmful or useless (``bad``; the first is "the harmful one"
of the checks) and the oracle runs added to the study: ``fixed`` weights over the useful objectives only
(``oracle_useful``) and a small grid of other fixed mixtures (``oracle_*``). Captured gain is measured
against the best oracle (lowest mean useful held-out loss over the seeds).

**dev** suites may be used to choose a sampler's defaults; **test** suites are for reporting only, and
their harmful/useless objectives work by mechanisms that no dev suite has (docs/sampler_study.md).
The objectives not built in come from examples/study_objectives.py:

  noisy_mlm      harmful: random targets through the shared mlm head             (dev)
  coin_flip      no signal: random 0/1 labels on its own head                    (dev)
  permuted_mlm   harmful: learnable but wrong targets (a fixed permutation of the tokens), shared mlm head (test)
  easy_position  useless: a loss easy to lower (position parity), its own head   (test)
  next_token_mlm the next token as the target at a masked position, through the mlm head: meant as a dev
                 suite's learnable conflict, measured *not* harmful at the study's scale (the useful-only
                 oracle was no better than uniform), so in no suite
  shuffled_mlm   mlm on scrambled rows through the mlm head: measured *not* harmful at the study's scale
                 (a useful-only oracle was no better than uniform), so in no suite
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from mometas_ds.study.common import SamplerSpec, StudyError

DEV, TEST = "dev", "test"


@dataclass(frozen=True)
class Suite:
    name: str
    split: str  # "dev" or "test"
    objectives: Tuple[str, ...]
    bad: Tuple[str, ...]  # harmful or useless; the first is "the harmful one" of the checks
    about: str
    # Further fixed mixtures of the oracle grid: label -> one weight per objective (oracle_useful is added).
    grid: Dict[str, Tuple[float, ...]] = field(default_factory=dict)

    @property
    def useful(self) -> List[str]:
        return [o for o in self.objectives if o not in self.bad]

    def oracle_specs(self) -> List[SamplerSpec]:
        """``fixed`` over the useful objectives only (unless that is uniform), then the grid."""
        specs = []
        if self.bad:
            weights = [0.0 if o in self.bad else 1.0 for o in self.objectives]
            specs.append(SamplerSpec("oracle_useful", "fixed", {"weights": weights}))
        for label, weights in self.grid.items():
            specs.append(SamplerSpec(label, "fixed", {"weights": list(weights)}))
        return specs


SUITES: Dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "dev_two_bad",
            DEV,
            ("mlm", "dtd", "atd", "noisy_mlm", "coin_flip"),
            ("noisy_mlm", "coin_flip"),
            "the issue-16 study: one harmful (noisy_mlm), one without signal (coin_flip)",
            {"oracle_mlm2": (2.0, 1.0, 1.0, 0.0, 0.0)},
        ),
        Suite(
            "dev_one_bad",
            DEV,
            ("mlm", "dtd", "atd", "noisy_mlm"),
            ("noisy_mlm",),
            "one harmful objective (noisy_mlm) among three useful ones",
            {"oracle_mlm2": (2.0, 1.0, 1.0, 0.0)},
        ),
        Suite(
            "dev_all_useful",
            DEV,
            ("mlm", "gmlm", "atd"),
            (),
            "every objective useful (gmlm: span-guided mlm through the mlm head): a sampler must not do worse",
            {"oracle_mlm2": (2.0, 1.0, 1.0)},
        ),
        Suite(
            "test_two_bad",
            TEST,
            ("mlm", "dtd", "atd", "permuted_mlm", "easy_position"),
            ("permuted_mlm", "easy_position"),
            "two unseen mechanisms: learnable wrong targets on the mlm head (harmful), a loss easy to lower (useless)",
            {"oracle_mlm2": (2.0, 1.0, 1.0, 0.0, 0.0)},
        ),
        Suite(
            "test_all_useful",
            TEST,
            ("mlm", "dtd", "atd"),
            (),
            "every objective useful: a sampler must not do worse than uniform",
            {"oracle_mlm2": (2.0, 1.0, 1.0)},
        ),
        Suite(
            "test_dominant",
            TEST,
            ("mlm", "dtd", "permuted_mlm"),
            ("permuted_mlm",),
            "one useful objective (mlm, whose loss is most of the useful mean) matters far more than the "
            "other (dtd, near its floor early); the harmful one (permuted_mlm) attacks the one that matters",
            {"oracle_mlm_only": (1.0, 0.0, 0.0)},
        ),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise StudyError(f"--suite: unknown suite {name!r}; available: {', '.join(SUITES)}")
    return SUITES[name]


def suites_table() -> str:
    lines = ["| suite | split | objectives | harmful/useless | what it checks |", "|---|---|---|---|---|"]
    for s in SUITES.values():
        lines.append(
            f"| {s.name} | {s.split} | {', '.join(s.objectives)} | {', '.join(s.bad) or '-'} | {s.about} |"
        )
    return "\n".join(lines)
