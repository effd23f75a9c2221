"""mometas-bench: a very small real run writes every figure, and the figures agree with each other.

No timing assertions: the numbers depend on the machine; what is checked is that each one is
there, is a finite number, and is computed from the others as documented.
"""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest

from tests.pretrain_helpers import REPO_ROOT, subprocess_env

TINY_RUN = [
    "--model", "tiny", "--seq_len", "16", "--micro_batch", "2", "--vocab_size", "1000",
    "--interval", "2", "--block_steps", "4", "--meta_batch_size", "4", "--rounds", "3",
    "--warmup_steps", "1", "--probe_reps", "1", "--objectives", "mlm,atd,cse",
]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "mometas_ds.cli.bench", *TINY_RUN, "--json", str(path)],
                          env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MOMETAS overhead vs uniform" in proc.stdout  # the printed table
    assert "sampler update (1 rank: no all-reduce)" in proc.stdout  # one rank runs no collective
    return json.loads(path.read_text())


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.integration
def test_json_has_every_field(result):
    for key in ("benchmark", "date", "command", "machine", "config", "arms", "overhead_pct", "overhead_pct_rounds",
                "raw_overhead_pct", "draw_agreement", "train_step_s", "breakdown", "num_objectives",
                "meta_sequences_per_rank", "forward_s_per_meta_sequence", "forward_s_per_sequence_by_objective",
                "predicted_overhead_pct", "predicted_overhead_pct_at_ranks", "probe_rows_per_forward",
                "skipped_micro_steps", "elapsed_s",
                "method"):
        assert key in result, key
    machine = result["machine"]
    for key in ("device", "device_name", "ranks", "torch", "deepspeed"):
        assert machine[key] not in (None, ""), key
    assert machine["device"] == "cpu" and machine["ranks"] == 1
    config = result["config"]
    assert config["model"] == "tiny" and config["seq_len"] == 16 and config["micro_batch"] == 2
    assert config["objectives"] == ["mlm", "atd", "cse"] and config["interval"] == 2
    assert result["command"].startswith("mometas-bench ") and "--interval 2" in result["command"]
    for arm in ("single", "uniform", "mometas"):
        for key in ("samples_per_s", "tokens_per_s", "step_s", "samples_per_s_rounds", "draws",
                    "micro_step_s_by_objective", "train_corrupt_s_per_step", "sampler_updates"):
            assert key in result["arms"][arm], (arm, key)
    for key in ("meta_forward_s_per_update", "meta_corrupt_s_per_update", "sampler_update_s_per_update",
                "meta_forward_pct", "meta_corrupt_pct", "sampler_update_pct", "direct_overhead_pct", "rest_pct"):
        assert _finite(result["breakdown"][key]), key


@pytest.mark.integration
def test_overhead_figures_are_finite_numbers(result):
    for key in ("overhead_pct", "raw_overhead_pct", "predicted_overhead_pct", "train_step_s",
                "forward_s_per_meta_sequence", "draw_agreement"):
        assert _finite(result[key]), key
    assert result["train_step_s"] > 0 and result["forward_s_per_meta_sequence"] > 0
    assert all(_finite(v) for v in result["overhead_pct_rounds"])
    assert all(_finite(v) and v > 0 for v in result["predicted_overhead_pct_at_ranks"].values())
    for arm in result["arms"].values():
        assert _finite(arm["samples_per_s"]) and arm["samples_per_s"] > 0


@pytest.mark.integration
def test_predicted_overhead_follows_from_the_measured_costs(result):
    c = result["config"]
    assert result["meta_sequences_per_rank"] == c["meta_batch_size"] // c["ranks"] == 4
    assert result["num_objectives"] == 3
    forward = result["forward_s_per_sequence_by_objective"]
    assert set(forward) == {"mlm", "atd", "cse"}
    assert result["forward_s_per_meta_sequence"] == pytest.approx(statistics.fmean(forward.values()), rel=1e-9)
    per_interval = c["interval"] * result["train_step_s"]
    predicted = (100 * result["num_objectives"] * result["meta_sequences_per_rank"]
                 * result["forward_s_per_meta_sequence"] / per_interval)
    assert result["predicted_overhead_pct"] == pytest.approx(predicted, rel=1e-9)
    assert result["predicted_overhead_pct_at_ranks"]["1"] == pytest.approx(predicted, rel=1e-9)
    assert result["predicted_overhead_pct_at_ranks"]["2"] == pytest.approx(predicted / 2, rel=1e-9)
    # 4 ranks would leave one meta-validation row per rank, and cse needs 2: no such run exists to predict.
    assert set(result["predicted_overhead_pct_at_ranks"]) == {"1", "2"}
    b = result["breakdown"]
    for part in ("meta_forward", "meta_corrupt", "sampler_update"):
        assert b[f"{part}_pct"] == pytest.approx(100 * b[f"{part}_s_per_update"] / per_interval, rel=1e-9)
    assert b["direct_overhead_pct"] == pytest.approx(
        b["meta_forward_pct"] + b["meta_corrupt_pct"] + b["sampler_update_pct"], rel=1e-9)
    assert b["rest_pct"] == pytest.approx(result["overhead_pct"] - b["direct_overhead_pct"], rel=1e-9, abs=1e-12)
    assert b["meta_forward_s_per_update"] > 0 and b["meta_corrupt_s_per_update"] > 0
    # the probe's forwards take as many rows as a chunk of the meta-validation: min(micro-batch, meta rows per rank)
    assert result["probe_rows_per_forward"] == min(c["micro_batch"], result["meta_sequences_per_rank"]) == 2


@pytest.mark.integration
def test_arms_ran_what_they_claim(result):
    c = result["config"]
    steps = c["rounds"] * c["block_steps"]
    arms = result["arms"]
    assert arms["single"]["objective"] == "mlm"
    assert arms["single"]["draws"] == {"mlm": steps, "atd": 0, "cse": 0}
    for arm in ("single", "uniform", "mometas"):
        assert sum(arm_draws for arm_draws in arms[arm]["draws"].values()) == steps + result["skipped_micro_steps"][arm]
        assert len(arms[arm]["samples_per_s_rounds"]) == c["rounds"]
        # tokens/s is samples/s times the sequence length, round by round, so their medians agree too
        assert arms[arm]["tokens_per_s"] == pytest.approx(arms[arm]["samples_per_s"] * c["seq_len"], rel=1e-9)
        assert arms[arm]["sampler_updates"] == steps // c["interval"]  # every sampler is called at the interval
    assert set(arms["uniform"]["micro_step_s_by_objective"]) <= {"mlm", "atd", "cse"}
    assert result["overhead_pct"] == pytest.approx(statistics.median(result["overhead_pct_rounds"]), rel=1e-9)
    assert len(result["overhead_pct_rounds"]) == c["rounds"]
    assert 0.0 <= result["draw_agreement"] <= 1.0


@pytest.mark.parametrize("flags, field", [
    (["--interval", "4", "--block_steps", "6"], "--block_steps"),
    (["--objectives", "mlm,atd", "--single_objective", "cse"], "--single_objective"),
    (["--objectives", "mlm,nope"], "--objectives"),
    (["--seq_len", "4"], "--seq_len"),
    (["--turn_steps", "0"], "--turn_steps"),
    (["--deepspeed_config", "/nonexistent/ds.json"], "--deepspeed_config"),
])
def test_bad_flags_stop_with_a_message_naming_the_flag(flags, field, capsys):
    from mometas_ds.cli.bench import main

    assert main(flags) == 2
    assert field in capsys.readouterr().err


def test_an_unwritable_json_path_stops_before_the_benchmark_runs(tmp_path, capsys, monkeypatch):
    import mometas_ds.cli.bench as command

    def no_bench(cfg):
        raise AssertionError("the benchmark started although --json cannot be written")

    monkeypatch.setattr(command, "Bench", no_bench)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for path in (blocker / "bench.json", tmp_path):  # a directory below a file; a directory itself
        assert command.main([*TINY_RUN, "--json", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mometas-bench: error: --json: cannot write ") and str(path) in err
    good = tmp_path / "new" / "bench.json"
    monkeypatch.setattr(command, "Bench", lambda cfg: (_ for _ in ()).throw(command.BenchError("--ranks: stop here")))
    assert command.main([*TINY_RUN, "--json", str(good)]) == 2  # got past the check to the benchmark's set-up
    assert "--ranks: stop here" in capsys.readouterr().err and not good.exists()
