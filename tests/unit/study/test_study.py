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


# ------------------------------------------------------------------------------------------------ suites (issue 30)


@pytest.mark.integration
def test_suite_with_oracle_gain_and_downstream(tmp_path, capsys):
    """A suite runs into OUTPUT_DIR/SUITE with its oracle runs; study.md has the captured gain and the downstream
    table; --downstream fine-tunes every run (a tiny config: nothing here says which sampler is better)."""
    out = tmp_path / "study"
    args = [
        "--output_dir", str(out), "--suite", "test_all_useful", "--samplers", "uniform", "--seeds", "1",
        "--num_docs", "150", "--vocab_size", "300", "--max_steps", "12", "--meta_interval", "4",
        "--meta_batch_size", "8", "--seq_len", "32", "--eval_sequences", "16", "--jobs", "2",
        "--downstream", "--downstream_seeds", "1", "2", "--downstream_examples", "32", "--downstream_epochs", "1",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    suite_dir = out / "test_all_useful"
    study = json.loads((suite_dir / "study.json").read_text())
    assert study["settings"]["suite"] == "test_all_useful" and study["settings"]["suite_split"] == "test"
    assert study["settings"]["objectives"] == ["mlm", "dtd", "atd"] and study["settings"]["bad"] == []
    assert sorted(r["label"] for r in study["runs"]) == ["oracle_mlm2", "uniform"]
    oracle = next(r for r in study["runs"] if r["label"] == "oracle_mlm2")
    assert oracle["sampler"] == "fixed" and oracle["final_probs"]["mlm"] == pytest.approx(0.5)
    assert study["captured_gain"]["oracle"] == "oracle_mlm2"
    assert set(study["captured_gain"]["per_seed"]) == {"uniform", "oracle_mlm2"}
    assert study["captured_gain"]["relative"]["uniform"] == {"1": 0.0}
    table = (suite_dir / "study.md").read_text()
    assert "**Captured gain**" in table and "**Goal checks**" in table and "**Downstream**" in table
    assert (out / "data" / "train.jsonl").is_file()  # the corpus is shared by the suites
    downstream = study["downstream"]
    assert downstream["models"] == ["uniform", "oracle_mlm2"] and {"sst2", "mrpc"} <= set(downstream["tasks"])
    for task in ("sst2", "mrpc"):
        assert downstream["cells"][task]["uniform"]["n"] == 2  # pre-training seed 1 x fine-tuning seeds 1, 2
        assert set(downstream["cells"][task]["uniform"]["seeds"]) == {"1001", "1002"}
        assert downstream["tests"][task]["oracle_mlm2"]["n"] == 2
    assert (suite_dir / "downstream" / "compare" / "compare.md").is_file()


def test_list_suites_names_dev_and_test(capsys):
    assert main(["--list_suites"]) == 0
    out = capsys.readouterr().out
    from mometas_ds.study.suites import SUITES

    assert {s.split for s in SUITES.values()} == {"dev", "test"}
    for name in SUITES:
        assert f"| {name} |" in out


def test_suites_know_their_objectives_and_oracles():
    from mometas_ds.samplers import build_sampler
    from mometas_ds.study.suites import SUITES

    bad_kinds = set()
    for suite in SUITES.values():
        assert set(suite.bad) < set(suite.objectives)
        bad_kinds |= set(suite.bad)
        for spec in suite.oracle_specs():
            assert spec.name == "fixed" and len(spec.args["weights"]) == len(suite.objectives)
            build_sampler("fixed", len(suite.objectives), **spec.args)
        if suite.bad:
            useful_only = suite.oracle_specs()[0].args["weights"]
            assert [w > 0 for w in useful_only] == [o not in suite.bad for o in suite.objectives]
    assert len(bad_kinds) >= 4  # four kinds of harmful/useless objective
    # the test suites' harmful/useless objectives are never in a dev suite
    dev_bad = {b for s in SUITES.values() if s.split == "dev" for b in s.bad}
    test_bad = {b for s in SUITES.values() if s.split == "test" for b in s.bad}
    assert not dev_bad & test_bad
    assert any(s.split == "test" and not s.bad for s in SUITES.values())  # every objective useful


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--suite", "test_all_useful", "--downstream", "--downstream_tasks", "squad"], "--downstream_tasks"),
        (["--samplers", 'x=fixed:{"weights": [1, 1]}'], "one weight per objective"),
    ],
)
def test_suite_flags_exit_2(tmp_path, capsys, args, message):
    assert main(["--output_dir", str(tmp_path / "o")] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mometas-study: error:") and message in err


def _grun(label, seed, useful, draws=(20, 20, 20, 20, 20), probs=(0.2,) * 5):
    return {**_run(label, seed, list(draws), list(probs), useful), "steps": sum(draws)}


def test_captured_gain_against_the_best_oracle():
    from mometas_ds.study.report import captured_gain, goal_checks

    runs = [
        _grun("uniform", 1, 2.0), _grun("uniform", 2, 2.2),
        _grun("oracle_a", 1, 1.8), _grun("oracle_a", 2, 2.0),  # mean 1.9
        _grun("oracle_b", 1, 1.6), _grun("oracle_b", 2, 2.3),  # mean 1.95: not the best, though better in seed 1
        _grun("s", 1, 1.9, (30, 30, 30, 5, 5), (0.3, 0.3, 0.3, 0.05, 0.05)),
        _grun("s", 2, 2.3, (30, 30, 30, 4, 6), (0.3, 0.3, 0.3, 0.05, 0.05)),
    ]  # fmt: skip
    gains = captured_gain(runs, ["oracle_a", "oracle_b"])
    assert gains["oracle"] == "oracle_a"
    assert gains["per_seed"]["s"] == {1: pytest.approx(0.5), 2: pytest.approx(-0.5)}
    assert gains["per_seed"]["uniform"] == {1: 0.0, 2: 0.0}
    assert gains["relative"]["s"][2] == pytest.approx(2.3 / 2.2 - 1)
    goals = goal_checks(runs, OBJECTIVES, ["noisy_mlm", "coin_flip"], gains)
    assert goals["s"]["bad_least_drawn"] == 2 and goals["s"]["bad_below_half"] == 2
    assert goals["s"]["gain_mean"] == pytest.approx(0.0) and goals["s"]["gain_min"] == pytest.approx(-0.5)
    assert goals["s"]["within_1pct"] == 1  # seed 2 is 4.5% worse than uniform
    assert goals["uniform"]["bad_least_drawn"] == 0
    # an oracle no better than uniform, or better by less than 1%, leaves nothing to capture
    flat = captured_gain([_grun("uniform", 1, 2.0), _grun("oracle_a", 1, 2.1), _grun("s", 1, 1.9)], ["oracle_a"])
    assert flat["per_seed"]["s"] == {1: None}
    small = captured_gain([_grun("uniform", 1, 2.0), _grun("oracle_a", 1, 1.99), _grun("s", 1, 2.03)], ["oracle_a"])
    assert small["per_seed"]["s"] == {1: None} and small["relative"]["s"][1] == pytest.approx(0.015)
