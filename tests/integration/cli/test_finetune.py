"""mometas-finetune end to end on the CPU: a tiny random BERT fine-tuned on generated tasks with a
learnable rule, in every format, beats the majority-class baseline; results and predictions agree;
a repeated or resumed run with the same seed gives the same scores."""
import json
import os
from collections import Counter

import pytest

from mometas_ds.finetune import metrics, synthetic
from mometas_ds.cli.finetune import main

FAST = ["--epochs", "5", "--batch_size", "8", "--max_seq_len", "48", "--learning_rates", "1e-3", "--seeds", "1",
        "--log_level", "error"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return synthetic.write_tiny_bert(str(tmp_path_factory.mktemp("tiny") / "bert"), vocab_size=400)


@pytest.fixture(scope="module")
def glue_run(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    data = synthetic.write_glue(str(root / "data"), ["sst2", "mnli"], n_train=240, n_dev=80)
    out = str(root / "eval")
    assert main(["--model_name_or_path", model_dir, "--data_dir", data, "--tasks", "sst2,mnli",
                 "--output_dir", out] + FAST) == 0
    return data, out


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.integration
def test_glue_tasks_beat_the_majority_baseline_and_predictions_recompute_the_scores(glue_run):
    data, out = glue_run
    results = {r["task"]: r for r in _jsonl(os.path.join(out, "results.jsonl"))}
    assert set(results) == {"sst2", "mnli"}
    for task, r in results.items():
        assert {"task", "seed", "learning_rate", "metrics", "split", "train_examples", "wall_s"} <= set(r)
        rows = _jsonl(os.path.join(out, "predictions", f"{task}_lr0.001_seed1.jsonl"))
        assert len(rows) == r["dev_examples"]
        if task == "mnli":
            assert r["split"] == "dev_matched+dev_mismatched"
            for split, suffix in (("dev_matched", "m"), ("dev_mismatched", "mm")):
                mine = [x for x in rows if x["split"] == split]
                acc = metrics.accuracy([x["prediction"] for x in mine], [x["label"] for x in mine])
                assert r["metrics"][f"accuracy_{suffix}"] == pytest.approx(acc)
        else:
            acc = metrics.accuracy([x["prediction"] for x in rows], [x["label"] for x in rows])
            assert r["metrics"]["accuracy"] == pytest.approx(acc)
        majority = Counter(x["label"] for x in rows).most_common(1)[0][1] / len(rows) * 100
        main_value = r["metrics"][r["main_metric"]]
        assert main_value > majority + 10, (task, main_value, majority)
    summary = open(os.path.join(out, "summary.md")).read()
    assert "| sst2 | accuracy | 0.001 | 1 |" in summary and "GLUE score" in summary
    assert os.path.isfile(os.path.join(out, "summary.csv")) and not os.path.exists(os.path.join(out, "trainer"))


@pytest.mark.integration
def test_a_repeated_run_and_a_resumed_run_give_the_same_scores(glue_run, model_dir, tmp_path, capsys):
    data, out = glue_run
    first = {r["task"]: r["metrics"] for r in _jsonl(os.path.join(out, "results.jsonl"))}
    # Same seed, fresh output dir: the same scores.
    again = str(tmp_path / "again")
    assert main(["--model_name_or_path", model_dir, "--data_dir", data, "--tasks", "sst2", "--output_dir", again]
                + FAST) == 0
    assert _jsonl(os.path.join(again, "results.jsonl"))[0]["metrics"] == first["sst2"]
    # Resume: the run already in results.jsonl is not redone; a missing one is, with the same score.
    lines = _jsonl(os.path.join(again, "results.jsonl"))
    capsys.readouterr()
    assert main(["--model_name_or_path", model_dir, "--data_dir", data, "--tasks", "sst2", "--output_dir", again]
                + FAST) == 0
    assert "sst2 lr 0.001 seed 1" not in capsys.readouterr().out
    assert _jsonl(os.path.join(again, "results.jsonl")) == lines
    # Changed settings are refused instead of being mixed into the same table.
    code = main(["--model_name_or_path", model_dir, "--data_dir", data, "--tasks", "sst2", "--output_dir", again]
                + FAST + ["--epochs", "1"])
    assert code == 2 and "holds runs with other settings (epochs" in capsys.readouterr().err


@pytest.mark.integration
def test_own_task_file_beats_the_majority_baseline(model_dir, tmp_path):
    train = synthetic.write_task_file(str(tmp_path / "reviews.jsonl"), 240, seed=3)
    dev = synthetic.write_task_file(str(tmp_path / "reviews_dev.jsonl"), 80, seed=4)
    out = str(tmp_path / "eval")
    assert main(["--model_name_or_path", model_dir, "--task_file", train, "--dev_file", dev, "--output_dir", out]
                + FAST) == 0
    (r,) = _jsonl(os.path.join(out, "results.jsonl"))
    assert r["task"] == "reviews" and r["main_metric"] == "accuracy"
    labels = [x["label"] for x in _jsonl(os.path.join(out, "predictions", "reviews_lr0.001_seed1.jsonl"))]
    assert r["metrics"]["accuracy"] > Counter(labels).most_common(1)[0][1] / len(labels) * 100 + 10


@pytest.mark.integration
def test_squad_v2_swag_hellaswag_and_conll_end_to_end(model_dir, tmp_path):
    from mometas_ds.finetune import ner, qa

    data = synthetic.write_other_tasks(str(tmp_path / "data"), n_train=150, n_dev=40)
    out = str(tmp_path / "eval")
    assert main(["--model_name_or_path", model_dir, "--data_dir", data,
                 "--tasks", "squad_v2,swag,hellaswag,conll2003", "--output_dir", out,
                 "--doc_stride", "24", "--max_query_len", "16"] + FAST) == 0
    results = {r["task"]: r for r in _jsonl(os.path.join(out, "results.jsonl"))}
    # Four choices: chance is 25%.
    assert results["swag"]["metrics"]["accuracy"] > 50 and results["hellaswag"]["metrics"]["accuracy"] > 50
    # SQuAD: every number recomputes from the prediction file (id, predicted text, gold texts).
    rows = _jsonl(os.path.join(out, "predictions", "squad_v2_lr0.001_seed1.jsonl"))
    examples = [{"id": x["id"], "answers": {"text": x["label"], "answer_start": [0] * len(x["label"])},
                 "is_impossible": not x["label"]} for x in rows]
    recomputed = qa.squad_metrics({x["id"]: x["prediction"] for x in rows}, examples)
    for key in ("exact", "f1", "HasAns_f1", "NoAns_exact"):
        assert results["squad_v2"]["metrics"][key] == pytest.approx(recomputed[key])
    assert results["squad_v2"]["metrics"]["NoAns_total"] > 0
    # CoNLL: entity F1 from the predicted and gold tag sequences; all-"O" would score 0.
    rows = _jsonl(os.path.join(out, "predictions", "conll2003_lr0.001_seed1.jsonl"))
    f1 = ner.entity_f1([x["label"] for x in rows], [x["prediction"] for x in rows])["f1"]
    assert results["conll2003"]["metrics"]["f1"] == pytest.approx(100 * f1) and f1 > 0.3


def test_the_finetune_deepspeed_config_is_filled_in_by_transformers(tmp_path):
    """ds_configs/finetune.json leaves batch sizes and the optimizer to the Trainer ("auto")."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from tests.pretrain_helpers import REPO_ROOT

    config = HfTrainerDeepSpeedConfig(os.path.join(REPO_ROOT, "ds_configs", "finetune.json"))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                             learning_rate=3e-5, use_cpu=True, report_to=[])
    config.trainer_config_process(args)
    assert config.config["train_micro_batch_size_per_gpu"] == 8
    assert config.config["gradient_accumulation_steps"] == 2
    assert config.config["optimizer"]["params"]["lr"] == 3e-5
