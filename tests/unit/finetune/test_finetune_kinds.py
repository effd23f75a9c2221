"""A task kind of the user's own (finetune.base.TaskKind + register_kind, finetune.tasks.register_task), given
to mometas-finetune with --user_modules, runs end to end like a built-in one; a bad kind or module is named."""
import json
import os
import textwrap
from collections import Counter

import pytest

from mometas_ds.cli.finetune import main
from mometas_ds.config import ConfigError
from mometas_ds.finetune import synthetic
from mometas_ds.finetune.base import TaskKind, kind_for, register_kind
from mometas_ds.finetune.tasks import TASKS, TaskSpec, register_task

FAST = ["--epochs", "5", "--batch_size", "8", "--max_seq_len", "48", "--learning_rates", "1e-3", "--seeds", "1",
        "--log_level", "error"]

USER_MODULE = textwrap.dedent('''
    """Reviews stored as JSON lines with fields of their own ("review", "stars"): a kind that reads them."""
    import json
    import os

    from mometas_ds.finetune.base import TaskData, data_path, register_kind
    from mometas_ds.finetune.kinds import SequenceClassification
    from mometas_ds.finetune.tasks import TaskSpec, register_task


    def read(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [{"text_a": r["review"], "text_b": None, "label": "positive" if r["stars"] >= 4 else "negative"}
                for r in rows]


    @register_kind("star_reviews", overwrite=True)
    class StarReviews(SequenceClassification):
        def load(self, spec, args):
            files = {split: data_path(args, spec, split) for split in ("train", "dev")}
            return TaskData(train=read(files["train"]), dev={"dev": read(files["dev"])},
                            labels=list(spec.labels), files=files)


    register_task(TaskSpec("stars", "star_reviews", "accuracy", labels=("negative", "positive"),
                           train_path="stars/train.jsonl", dev_path="stars/dev.jsonl"), overwrite=True)
''')


def _write_stars(path, n, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for text, label in synthetic.sentiment_examples(n, seed):
            f.write(json.dumps({"review": text, "stars": 5 if label == "1" else 1}) + "\n")


def test_a_users_kind_and_task_run_end_to_end(tmp_path):
    module = tmp_path / "star_kind.py"
    module.write_text(USER_MODULE)
    data = tmp_path / "data"
    _write_stars(str(data / "stars" / "train.jsonl"), 240, seed=3)
    _write_stars(str(data / "stars" / "dev.jsonl"), 80, seed=4)
    model = synthetic.write_tiny_bert(str(tmp_path / "bert"), vocab_size=400)
    out = str(tmp_path / "eval")
    try:
        assert main(["--model_name_or_path", model, "--user_modules", str(module), "--data_dir", str(data),
                     "--tasks", "stars", "--output_dir", out] + FAST) == 0
    finally:
        TASKS.pop("stars", None)
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        (result,) = [json.loads(line) for line in f]
    assert result["task"] == "stars" and result["main_metric"] == "accuracy"
    with open(os.path.join(out, "predictions", "stars_lr0.001_seed1.jsonl"), encoding="utf-8") as f:
        labels = [json.loads(line)["label"] for line in f]
    assert result["metrics"]["accuracy"] > Counter(labels).most_common(1)[0][1] / len(labels) * 100 + 10


def test_a_task_of_an_unregistered_kind_and_a_broken_module_are_named(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown task kind 'no_such_kind'"):
        kind_for(TaskSpec("orphan", "no_such_kind", "accuracy"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('half written')\n")
    assert main(["--model_name_or_path", str(tmp_path), "--user_modules", str(broken), "--tasks", "sst2",
                 "--output_dir", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "--user_modules" in err and "broken.py" in err and "half written" in err


def test_register_kind_and_register_task_refuse_what_is_not_theirs():
    with pytest.raises(TypeError, match="TaskKind subclass"):
        register_kind("not_a_kind", dict)
    with pytest.raises(TypeError, match="not a TaskSpec"):
        register_task({"name": "x"})
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskSpec("sst2", "classification", "accuracy"))
    assert issubclass(type(kind_for(TASKS["sst2"])), TaskKind)
