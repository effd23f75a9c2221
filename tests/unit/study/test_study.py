"""mometas-study: a 2-run smoke test of the whole tool (real pre-training runs), its checks and its errors."""

import json
import os

import pytest

from mometas_ds.cli.study import main
from mometas_ds.study import check_criteria, parse_sampler_spec

OBJECTIVES = ["mlm", "dtd", "atd", "noisy_mlm", "coin_flip"]


@pytest.mark.integration
def test_two_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    args = [
        "--output_dir",
        str(out),
        "--samplers",
        "uniform",
        'credit=mometas_credit:{"window": 3}',
        "--seeds",
        "3",
        "--num_docs",
        "150",
        "--vocab_size",
        "300",
        "--max_steps",
        "16",
        "--meta_interval",
        "4",
        "--meta_batch_size",
        "8",
        "--seq_len",
        "32",
        "--eval_sequences",
        "16",
        "--jobs",
        "2",
    ]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert [(r["label"], r["seed"]) for r in study["runs"]] == [("uniform", 3), ("credit", 3)]
    for run in study["runs"]:
        assert sum(run["draws"].values()) == run["steps"] == 16
        assert set(run["heldout"]) == set(OBJECTIVES)
        assert all(0 < loss < 20 for loss in run["heldout"].values())
        assert sum(run["final_probs"].values()) == pytest.approx(1.0)
        assert [row[0] for row in run["trajectory"]][-4:] == [4, 8, 12, 16]  # one row per sampler update
    uniform, credit = study["runs"]
    assert uniform["final_probs"] == {name: pytest.approx(0.2) for name in OBJECTIVES}
    assert (credit["sampler"], credit["sampler_args"]) == ("mometas_credit", {"window": 3})
    with open(out / "runs" / "credit" / "seed3" / "run_config.json") as f:
        assert json.load(f)["sampler_args"] == {"window": 3}  # the spec's options reached mometas-pretrain
    table = (out / "study.md").read_text()
    assert "| credit |" in table and "harmful least drawn" in table
    assert (out / "probs.png").stat().st_size > 0 and (out / "heldout.png").stat().st_size > 0
    # a second call reuses the finished runs (nothing is retrained) and gives the same summary
    before = os.path.getmtime(out / "runs" / "uniform" / "seed3" / "metrics.jsonl")
    assert main(args) == 0
    assert os.path.getmtime(out / "runs" / "uniform" / "seed3" / "metrics.jsonl") == before
    assert json.loads((out / "study.json").read_text())["runs"] == study["runs"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samplers", "nope"], "unknown sampler 'nope'"),
        (["--samplers", "a=mometas_credit:{bad"], "not JSON"),
        (["--samplers", 'a=mometas_credit:{"window": 1}'], "window"),
        (["--samplers", "uniform", "uniform"], "same label"),
        (["--objectives", "mlm,unknown_objective"], "--objectives"),
        (["--bad", "mlm,dtd,atd,noisy_mlm,coin_flip"], "--bad"),
        (["--max_steps", "0"], "--max_steps"),
        (["--user_modules", "/nonexistent/objectives.py"], "--user_modules"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys, args, message):
    assert main(["--output_dir", str(tmp_path / "o")] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mometas-study: error:") and message in err


def test_sampler_spec_parsing():
    assert parse_sampler_spec("exp3").label == "exp3"
    spec = parse_sampler_spec('floor=mometas:{"prob_floor": 0.2}')
    assert (spec.label, spec.name, spec.args) == ("floor", "mometas", {"prob_floor": 0.2})


def _run(label, seed, draws, probs, useful):
    return {
        "label": label,
        "seed": seed,
        "draws": dict(zip(OBJECTIVES, draws)),
        "final_probs": dict(zip(OBJECTIVES, probs)),
        "useful_heldout": useful,
    }


def test_criteria_count_seeds():
    runs = [
        _run("uniform", 1, [20, 20, 20, 20, 20], [0.2] * 5, 2.0),
        _run("uniform", 2, [20, 20, 20, 20, 20], [0.2] * 5, 2.0),
        _run("x", 1, [30, 30, 25, 5, 10], [0.3, 0.3, 0.3, 0.05, 0.05], 1.9),  # passes everything
        _run("x", 2, [30, 30, 25, 12, 3], [0.3, 0.3, 0.2, 0.15, 0.05], 2.1),  # harmful not least, not < 0.1, worse
        _run("y", 1, [30, 30, 25, 5, 10], [0.6, 0.3, 0.04, 0.03, 0.03], 2.0),  # a useful prob under 0.05
    ]
    c = check_criteria(runs, OBJECTIVES, ["noisy_mlm", "coin_flip"])
    assert c["x"] == {
        "seeds": 2,
        "harmful_least_drawn": 1,
        "harmful_below_useful": 2,
        "harmful_below_half": 1,
        "useful_not_worse": 1,
        "paired_seeds": 2,
        "useful_above_quarter": 2,
        "min_useful_prob": 0.2,
    }
    assert c["y"]["useful_above_quarter"] == 0 and c["y"]["useful_not_worse"] == 1  # equal counts as not worse
    assert c["uniform"]["harmful_least_drawn"] == 0  # ties are not "least"
