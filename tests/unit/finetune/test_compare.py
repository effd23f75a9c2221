"""mometas-compare on two eval dirs: table, differences, paired test over seeds, chart, exit codes."""
import csv
import json
import os

import pytest

from mometas_ds.cli.compare import main, paired_test


def _eval_dir(path, values):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "results.jsonl"), "w") as f:
        for task, metric, lr, per_seed in values:
            for seed, v in per_seed.items():
                f.write(json.dumps({"task": task, "seed": seed, "learning_rate": lr, "main_metric": metric,
                                    "metrics": {metric: v}, "split": "dev", "train_examples": 1,
                                    "wall_s": 0.1}) + "\n")
    return str(path)


def test_paired_test_matches_scipy_and_handles_degenerate_cases():
    from scipy.stats import ttest_rel

    a, b = {1: 70.0, 2: 72.0, 3: 71.0}, {1: 74.0, 2: 75.0, 3: 73.5, 4: 99.0}
    t = paired_test(a, b)
    assert t["n"] == 3 and t["diff"] == pytest.approx(3.1666666, rel=1e-6)
    assert t["p"] == pytest.approx(ttest_rel([74, 75, 73.5], [70, 72, 71]).pvalue) and t["significant"]
    assert paired_test({1: 1.0}, {1: 2.0})["p"] is None
    assert paired_test({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0}) == {"n": 2, "diff": 0.0, "p": 1.0, "significant": False}


def test_compare_two_eval_dirs(tmp_path, capsys):
    a = _eval_dir(tmp_path / "uniform", [
        ("rte", "accuracy", 2e-5, {1: 60.0, 2: 61.0, 3: 59.0}),
        ("rte", "accuracy", 3e-5, {1: 50.0, 2: 51.0, 3: 49.0}),  # not the chosen learning rate
        ("sst2", "accuracy", 2e-5, {1: 90.0, 2: 91.0, 3: 89.0})])
    b = _eval_dir(tmp_path / "mometas", [
        ("rte", "accuracy", 2e-5, {1: 66.0, 2: 67.5, 3: 65.0}),
        ("sst2", "accuracy", 2e-5, {1: 91.0, 2: 89.0, 3: 90.0})])
    out = tmp_path / "cmp"
    assert main([a, b, "--names", "uniform,mometas", "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "| rte | accuracy | 60.00 ± 1.00 (n=3) | 66.17 ± 1.26 (n=3) | +6.17 (p=" in md
    assert "beyond seed noise" in md.split("| rte |")[1].split("\n")[0]
    assert "| sst2 | accuracy | 90.00 ± 1.00 (n=3) | 90.00 ± 1.00 (n=3) | +0.00 (p=1, within seed noise) |" in md
    assert "| GLUE | glue_score | 75.00 ± 1.00 (n=3) |" in md  # per seed (rte + sst2) / 2 = 75, 76, 74
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert {(r["task"], r["model"]) for r in rows} >= {("rte", "uniform"), ("rte", "mometas"), ("GLUE", "mometas")}
    assert next(r for r in rows if r["task"] == "rte" and r["model"] == "uniform")["learning_rate"] == "2e-05"
    with open(out / "compare.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main([a, "--out", str(out)]) == 2 and "at least two" in capsys.readouterr().err
    assert main([a, str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "results.jsonl: not found" in capsys.readouterr().err
    assert main([a, b, "--names", "x", "--out", str(out)]) == 2
