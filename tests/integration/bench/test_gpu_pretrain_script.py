"""benchmarks/gpu_pretrain.sh in its CPU smoke mode: every step of the GPU run works before a GPU is lent."""
import json
import subprocess
import sys

import pytest

from tests.pretrain_helpers import REPO_ROOT, read_jsonl, subprocess_env


@pytest.mark.integration
def test_the_gpu_pretrain_script_runs_every_step_in_smoke_mode_and_writes_the_report(tmp_path):
    out = tmp_path / "gpu"
    env = {**subprocess_env(), "OUT": str(out), "PYTHON": sys.executable, "SMOKE": "1"}
    result = subprocess.run(["bash", "benchmarks/gpu_pretrain.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "0 step(s) failed" in result.stdout
    ours, peer = read_jsonl(out / "ours.jsonl"), read_jsonl(out / "peer.jsonl")
    # A fixed micro-batch and the largest that fits (the search doubles 4 -> 8 on the CPU), for both steps.
    assert [r["micro_batch"] for r in ours] == [4, 8] and [r["micro_batch"] for r in peer] == [4, 8]
    for row in ours + peer:
        assert row["median_s"] > 0 and row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * row["seq_len"])
        assert row["model_flops_per_step"] > 0 and row["mfu"] is None  # no peak FLOP/s known for a CPU
    assert ours[0]["profile"]["top"] and ours[0]["profile"]["wall_ms_per_step"] > 0
    overhead = json.loads((out / "overhead.json").read_text())
    assert overhead["config"]["objectives"] == ["mlm", "atd"]
    report = (out / "report.md").read_text()
    ratio_rows = [line for line in report.splitlines() if line.startswith("| tiny | 32 |")]
    assert len(ratio_rows) == 2 and all(not line.rstrip(" |").endswith("-") for line in ratio_rows)
    assert "## MOMETAS against uniform" in report and "## Vocabulary head: fused against sparse" in report
    assert "### Profile: ours" in report
