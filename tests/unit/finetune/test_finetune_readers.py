"""mometas-finetune without training: GLUE readers and their quirks, metrics against hand-worked values and
the reference libraries, the summary's learning-rate choice and GLUE score, and bad input."""
import json
import os

import pytest

from mometas_ds.config import ConfigError, DataError
from mometas_ds.finetune import metrics, synthetic
from mometas_ds.cli.finetune import main
from mometas_ds.finetune.readers import read_glue_tsv, read_saved_dataset, read_task_file
from mometas_ds.finetune.summary import glue_score, per_task, write_summary
from mometas_ds.finetune.tasks import GLUE_TASKS, TASKS, parse_task_names


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


# --------------------------------------------------------------------------- readers
def test_cola_has_no_header_and_the_first_line_is_data(tmp_path):
    path = _write(tmp_path / "CoLA/train.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                                               "gj04\t0\t*\tThe more does Bill smoke.\n")
    examples, skipped = read_glue_tsv(TASKS["cola"], path)
    assert [(e["text_a"], e["label"]) for e in examples] == [
        ("The sailors rode the breeze clear of the rocks.", "1"), ("The more does Bill smoke.", "0")]
    assert examples[0]["where"].endswith("train.tsv:1") and not skipped


def test_mnli_stray_quotes_do_not_swallow_lines_and_both_dev_files_are_read(tmp_path):
    synthetic.write_glue(str(tmp_path), ["mnli"], n_train=20, n_dev=15)
    examples, _ = read_glue_tsv(TASKS["mnli"], str(tmp_path / "MNLI/train.tsv"))
    assert len(examples) == 20  # csv's default quoting would merge the lines after each stray quote
    assert sum(e["text_a"].endswith('"') for e in examples) == 4
    assert {e["label"] for e in examples} <= set(TASKS["mnli"].labels)
    for name in ("dev_matched", "dev_mismatched"):
        assert len(read_glue_tsv(TASKS["mnli"], str(tmp_path / f"MNLI/{name}.tsv"))[0]) == 15


def test_qqp_short_lines_are_skipped_and_counted_and_quotes_kept(tmp_path):
    path = _write(tmp_path / "QQP/train.tsv",
                  "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                  '1\t1\t2\tWhat is "x?\tWhy is y?\t0\n'
                  "2\t3\t4\tbroken line without the rest\n"
                  "3\t5\t6\tHow?\tWhat?\t1\n")
    examples, skipped = read_glue_tsv(TASKS["qqp"], path)
    assert [e["text_a"] for e in examples] == ['What is "x?', "How?"]
    assert skipped == {"too few tab-separated fields": 1}


def test_stsb_labels_are_floats_and_a_bad_score_names_the_line(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = _write(tmp_path / "STS-B/dev.tsv", header + "0\tg\tf\t2012\t1\tn\tn\tA man.\tA person.\t3.800\n")
    examples, _ = read_glue_tsv(TASKS["stsb"], path)
    assert examples[0]["label"] == pytest.approx(3.8) and isinstance(examples[0]["label"], float)
    bad = _write(tmp_path / "STS-B/train.tsv", header + "0\tg\tf\t2012\t1\tn\tn\tA\tB\t3.8\n"
                                                         "1\tg\tf\t2012\t1\tn\tn\tA\tB\thigh\n")
    with pytest.raises(DataError, match=r"train.tsv:3: label 'high' is not a number"):
        read_glue_tsv(TASKS["stsb"], bad)


def test_missing_column_label_outside_the_set_and_empty_split_name_file_and_line(tmp_path):
    path = _write(tmp_path / "RTE/train.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataError, match=r"RTE/train.tsv:1: missing column 'sentence2'"):
        read_glue_tsv(TASKS["rte"], path)
    path = _write(tmp_path / "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                            "1\ta\tb\tcontradiction\n")
    with pytest.raises(DataError, match=r"RTE/dev.tsv:3: label 'contradiction' is not in the task's label set"):
        read_glue_tsv(TASKS["rte"], path)
    path = _write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match=r"SST-2/dev.tsv: no examples \(empty split\)"):
        read_glue_tsv(TASKS["sst2"], path)


def test_save_to_disk_glue_layout_maps_classlabel_ids_to_the_registry_labels(tmp_path):
    import datasets

    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(TASKS["mnli"].labels))})
    split = datasets.Dataset.from_dict({"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"],
                                        "label": [0, 1, 2]}, features=features)
    datasets.DatasetDict({"train": split, "validation_matched": split, "validation_mismatched": split}
                         ).save_to_disk(str(tmp_path / "mnli"))
    examples, _ = read_saved_dataset(TASKS["mnli"], str(tmp_path / "mnli"), "validation_matched")
    assert [e["label"] for e in examples] == ["entailment", "neutral", "contradiction"]
    with pytest.raises(DataError, match="no split 'validation'"):
        read_saved_dataset(TASKS["mnli"], str(tmp_path / "mnli"), "validation")


def test_task_file_formats_and_a_dev_label_outside_the_training_labels(tmp_path):
    for ext in ("csv", "tsv", "jsonl"):
        path = synthetic.write_task_file(str(tmp_path / f"t.{ext}"), 12, seed=1)
        examples, skipped = read_task_file(path, "text", None, "label", regression=False)
        assert len(examples) == 12 and {e["label"] for e in examples} <= {"positive", "negative"}
    path = _write(tmp_path / "dev.csv", 'text,label\n"a, quoted, text",positive\nb,maybe\n')
    with pytest.raises(DataError, match=r"dev.csv:3: label 'maybe' is not in the task's label set"):
        read_task_file(path, "text", None, "label", regression=False, labels=["negative", "positive"])
    with pytest.raises(DataError, match=r"dev.csv:1: missing column 'sentence'"):
        read_task_file(path, "sentence", None, "label", regression=False)
    path = _write(tmp_path / "x.jsonl",
                  '{"text": "a", "label": "1"}\n{"text": "b", "lab\n{"text": "c", "label": "0"}\n')
    examples, skipped = read_task_file(path, "text", None, "label", regression=False)
    assert [e["text_a"] for e in examples] == ["a", "c"] and skipped == {"invalid JSON line": 1}


def test_task_names():
    assert parse_task_names("glue") == list(GLUE_TASKS) and "wnli" not in GLUE_TASKS
    assert parse_task_names("SST-2,squad2,rte,rte") == ["sst2", "squad_v2", "rte"]
    with pytest.raises(ConfigError, match="unknown task 'mnli-mm'"):
        parse_task_names("mnli-mm")


# --------------------------------------------------------------------------- metrics
def test_metrics_against_hand_worked_values_and_the_reference_libraries():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    y = ["1", "1", "0", "0", "1", "0"]
    p = ["1", "0", "0", "1", "1", "0"]
    # tp=2 fp=1 fn=1 tn=2: F1 = 2*2/(2*2+1+1) = 2/3, accuracy 4/6, MCC = (2*2-1*1)/sqrt(3*3*3*3) = 1/3
    m = metrics.classification_metrics("mrpc", p, y)
    assert m["f1"] == pytest.approx(200 / 3) and m["accuracy"] == pytest.approx(400 / 6)
    assert m["f1_acc"] == pytest.approx((200 / 3 + 400 / 6) / 2)
    assert m["f1"] == pytest.approx(100 * f1_score(y, p, pos_label="1"))
    cola = metrics.classification_metrics("cola", p, y)
    assert cola["mcc"] == pytest.approx(100 / 3) == pytest.approx(100 * matthews_corrcoef(y, p))
    pred, gold = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    s = metrics.classification_metrics("stsb", pred, gold)
    assert s["pearson"] == pytest.approx(80.0) == pytest.approx(100 * pearsonr(pred, gold)[0])  # r = 4/5
    assert s["spearman"] == pytest.approx(80.0) == pytest.approx(100 * spearmanr(pred, gold)[0])
    assert s["pearson_spearman"] == pytest.approx(80.0)
    assert metrics.classification_metrics("stsb", [2.0] * 4, gold) == {"pearson": 0.0, "spearman": 0.0,
                                                                       "pearson_spearman": 0.0}
    assert metrics.classification_metrics("qnli", ["a", "b"], ["a", "a"]) == {"accuracy": 50.0}
    assert metrics.majority_baseline(["1", "1", "0"], ["1", "0", "0", "0"]) == 25.0


# --------------------------------------------------------------------------- summary
def _result(task, lr, seed, value, main, **more):
    return {"task": task, "seed": seed, "learning_rate": lr, "main_metric": main,
            "metrics": {main: value, **more}, "split": "dev", "train_examples": 10, "wall_s": 1.0}


def _write_results(eval_dir, rows):
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_summary_chooses_the_learning_rate_on_dev_and_computes_the_glue_score(tmp_path):
    rows = [_result("rte", 1e-5, s, v, "accuracy") for s, v in [(1, 60), (2, 62), (3, 64)]]
    rows += [_result("rte", 3e-5, s, v, "accuracy") for s, v in [(1, 70), (2, 50), (3, 60)]]  # mean 60 < 62
    rows += [_result("mrpc", 2e-5, s, v, "f1_acc", f1=v + 1, accuracy=v - 1) for s, v in [(1, 80), (2, 84)]]
    rows += [_result("squad", 3e-5, 1, 88.0, "f1")]
    _write_results(str(tmp_path), rows)
    tasks = per_task(rows)
    assert tasks["rte"]["learning_rate"] == 1e-5 and tasks["rte"]["mean"] == pytest.approx(62)
    assert tasks["rte"]["std"] == pytest.approx(2.0) and tasks["rte"]["median"] == 62
    assert tasks["mrpc"]["metrics"] == {"accuracy": 81.0, "f1": 83.0, "f1_acc": 82.0}
    score, names, per_seed = glue_score(tasks)
    assert names == ["mrpc", "rte"] and score == pytest.approx(72.0)  # squad is not a GLUE task
    assert per_seed == {1: pytest.approx(70.0), 2: pytest.approx(73.0)}
    md, csv_path = write_summary(str(tmp_path))
    text = open(md).read()
    assert "| rte | accuracy | 1e-05 | 3 | 62.00 ± 2.00 | 62.00 |" in text
    assert "**GLUE score: 72.00** over mrpc, rte (only 2 of the 8 GLUE tasks" in text
    assert "GLUE,glue_score,,,72.0000" in open(csv_path).read()


# --------------------------------------------------------------------------- command line
def test_bad_flags_and_a_model_dir_that_is_not_bert_exit_2(tmp_path, capsys):
    not_bert = tmp_path / "gpt"
    _write(not_bert / "config.json", json.dumps({"model_type": "gpt2"}))
    synthetic.write_glue(str(tmp_path / "glue"), ["sst2"], n_train=5, n_dev=5)
    cases = [
        (["--model_name_or_path", str(not_bert), "--tasks", "sst2"], "has model_type 'gpt2', not 'bert'"),
        (["--model_name_or_path", str(tmp_path / "nowhere"), "--tasks", "sst2"], "not a local directory"),
        (["--model_name_or_path", str(not_bert), "--tasks", "sst3"], "unknown task 'sst3'"),
        (["--model_name_or_path", str(not_bert), "--tasks", "sst2", "--seeds", "1,x"], "--seeds: 'x'"),
        (["--model_name_or_path", str(not_bert), "--tasks", "sst2", "--learning_rates", "-1"], "out of range"),
        (["--model_name_or_path", str(not_bert), "--task_file", str(tmp_path / "glue/SST-2/train.tsv")],
         "--task_file needs --dev_file"),
        (["--model_name_or_path", str(not_bert), "--tasks", "sst2,rte", "--train_file", "x"], "one task"),
    ]
    for extra, message in cases:
        code = main(["--output_dir", str(tmp_path / "out"), "--data_dir", str(tmp_path / "glue")] + extra)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("mometas-finetune: error: ") and message in err, (extra, err)


def test_a_task_kind_missing_from_the_installation_is_reported_as_not_available(monkeypatch):
    from mometas_ds.finetune import base, kinds

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(base.importlib, "import_module", missing)
    with pytest.raises(ConfigError, match="--tasks squad: not available yet"):
        kinds.kind_for(TASKS["squad"])


def test_merge_gathers_a_job_arrays_parts_into_one_summary(tmp_path, capsys):
    for task, seed, value in (("rte", 1, 60.0), ("rte", 2, 64.0), ("sst2", 1, 90.0)):
        part = str(tmp_path / "parts" / f"{task}_seed{seed}")
        _write_results(part, [_result(task, 2e-5, seed, value, "accuracy")])
        _write(os.path.join(part, "predictions", f"{task}_lr2e-05_seed{seed}.jsonl"), '{"prediction": 1}\n')
    out = str(tmp_path / "eval")
    parts = sorted(str(p) for p in (tmp_path / "parts").iterdir())
    assert main(["--output_dir", out, "--merge"] + parts) == 0
    with open(os.path.join(out, "results.jsonl")) as f:
        assert len(f.readlines()) == 3
    assert os.path.isfile(os.path.join(out, "predictions", "rte_lr2e-05_seed2.jsonl"))
    assert "| rte | accuracy | 2e-05 | 2 | 62.00 ± 2.83 | 62.00 |" in open(os.path.join(out, "summary.md")).read()
    assert main(["--output_dir", out, "--merge", str(tmp_path / "nothing")]) == 2
    assert "results.jsonl: not found" in capsys.readouterr().err
