"""Small generated tasks with a learnable rule, in the layouts the readers take (GLUE TSV, a task file),
and a tiny random BERT directory: for the tests, the demo and the benchmark (no download).

Rules: a single sentence's label is its sentiment word (good -> 1, bad -> 0); a pair is positive when its
second sentence holds a good word (a tiny model learns a cue word in a few steps; a topic match it does not);
MNLI's label is the hypothesis's cue word; STS-B's score is high for a good word in the second sentence.
The texts carry GLUE's quirks: stray quote characters (MNLI, QQP), no header (CoLA), float scores (STS-B).
"""
from __future__ import annotations

import csv
import json
import os
import random
from typing import List, Optional, Tuple

import torch
from transformers import BertConfig, BertForMaskedLM

from mometas_ds.data.demo_corpus import FIRST_NAMES, LAST_NAMES, PLACES, TOPICS
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

from mometas_ds.finetune.tasks import TASKS

GOOD = ["wonderful", "great", "excellent", "delightful", "superb"]
BAD = ["terrible", "awful", "boring", "dreadful", "poor"]
NLI_CUES = {"entailment": "indeed", "neutral": "perhaps", "contradiction": "never"}


def sentence(rng: random.Random, topic: str, extra: str = "") -> str:
    words = TOPICS[topic]
    parts = [rng.choice(words["groups"]), rng.choice(words["verbs"]), "the", rng.choice(words["adjectives"]),
             rng.choice(words["nouns"]), "in", rng.choice(PLACES)]
    if extra:
        parts.insert(rng.randint(0, len(parts)), extra)
    return " ".join(parts) + "."


def _topics(rng, same: bool) -> Tuple[str, str]:
    names = sorted(TOPICS)
    a = rng.choice(names)
    b = a if same else rng.choice([n for n in names if n != a])
    return a, b


def sentiment_examples(n: int, seed: int) -> List[Tuple[str, str]]:
    """(sentence, "0"/"1"): 1 when the sentence holds a good word, 0 for a bad one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        out.append((sentence(rng, rng.choice(sorted(TOPICS)), rng.choice(GOOD if label else BAD)), str(label)))
    return out


def pair_examples(n: int, seed: int, quote: bool = False) -> List[Tuple[str, str, int]]:
    """(sentence1, sentence2, 1 if sentence2 holds a good word else 0); ``quote`` puts stray quotes in some texts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        same = rng.random() < 0.5
        a, b = _topics(rng, rng.random() < 0.5)
        s1, s2 = sentence(rng, a), sentence(rng, b, rng.choice(GOOD if same else BAD))
        if quote and i % 7 == 0:
            s1 = '"' + s1  # an unbalanced quote, as in MNLI's and QQP's files
        out.append((s1, s2, int(same)))
    return out


def _write_tsv(path: str, header: Optional[List[str]], rows: List[List[str]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if header is not None:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(x) for x in row) + "\n")


def write_glue(data_dir: str, tasks: List[str], n_train: int = 300, n_dev: int = 100, seed: int = 0) -> str:
    """GLUE's download layout under ``data_dir`` for ``tasks`` (registry names), generated; returns data_dir."""
    for t_index, task in enumerate(tasks):
        for split, n in (("train", n_train), ("dev", n_dev)):
            s = seed * 1000 + t_index * 10 + (0 if split == "train" else 1)
            if task == "cola":
                rows = [[f"src{i % 17}", label, "", text] for i, (text, label) in enumerate(sentiment_examples(n, s))]
                _write_tsv(os.path.join(data_dir, "CoLA", f"{split}.tsv"), None, rows)
            elif task == "sst2":
                _write_tsv(os.path.join(data_dir, "SST-2", f"{split}.tsv"), ["sentence", "label"],
                           [[text, label] for text, label in sentiment_examples(n, s)])
            elif task == "mrpc":
                _write_tsv(os.path.join(data_dir, "MRPC", f"{split}.tsv"),
                           ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                           [[y, 1000 + i, 2000 + i, a, b] for i, (a, b, y) in enumerate(pair_examples(n, s))])
            elif task == "stsb":
                rng = random.Random(s)
                rows = []
                for i, (a, b, y) in enumerate(pair_examples(n, s)):
                    score = rng.uniform(3.5, 5.0) if y else rng.uniform(0.0, 1.5)
                    rows.append(["main-news", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, f"{score:.3f}"])
                _write_tsv(os.path.join(data_dir, "STS-B", f"{split}.tsv"),
                           ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                            "sentence2", "score"], [[i] + r[:-1] + [r[-1]] for i, r in enumerate(rows)])
            elif task == "qqp":
                _write_tsv(os.path.join(data_dir, "QQP", f"{split}.tsv"),
                           ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                           [[i, 2 * i, 2 * i + 1, a, b, y] for i, (a, b, y) in enumerate(pair_examples(n, s, True))])
            elif task == "mnli":
                rng = random.Random(s)
                header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                          "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
                names = ["dev_matched", "dev_mismatched"] if split == "dev" else ["train"]
                for k, name in enumerate(names):
                    rows = []
                    for i in range(n):
                        label = rng.choice(sorted(NLI_CUES))
                        topic = rng.choice(sorted(TOPICS))
                        premise = sentence(rng, topic)
                        hypothesis = sentence(rng, topic, NLI_CUES[label])
                        if i % 5 == 0:
                            premise = premise + ' "'  # stray quote: csv's default quoting would eat the file
                        rows.append([i, i, f"{i}n", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", premise,
                                     hypothesis, label, label])
                    _write_tsv(os.path.join(data_dir, "MNLI", f"{name}.tsv"), header, rows)
            elif task in ("qnli", "rte", "wnli"):
                directory = {"qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}[task]
                header = ["index", "question", "sentence", "label"] if task == "qnli" else \
                    ["index", "sentence1", "sentence2", "label"]
                rows = []
                for i, (a, b, y) in enumerate(pair_examples(n, s)):
                    label = str(y) if task == "wnli" else ("entailment" if y else "not_entailment")
                    rows.append([i, a, b, label])
                _write_tsv(os.path.join(data_dir, directory, f"{split}.tsv"), header, rows)
            else:
                raise ValueError(f"no generator for GLUE task {task!r}")
    return data_dir


def write_task_file(path: str, n: int, seed: int, regression: bool = False) -> str:
    """A user's own task as .csv / .tsv / .jsonl (by extension): columns text, label (sentiment rule);
    ``regression``: label is a float, high for a good word."""
    rng = random.Random(seed + 7)
    rows = []
    for text, label in sentiment_examples(n, seed):
        value = (rng.uniform(0.7, 1.0) if label == "1" else rng.uniform(0.0, 0.3)) if regression else \
            ("positive" if label == "1" else "negative")
        rows.append({"text": text, "label": f"{value:.3f}" if regression else value})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ext = os.path.splitext(path)[1]
    with open(path, "w", encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            for row in rows:
                f.write(json.dumps(row) + "\n")
        else:
            writer = csv.writer(f, delimiter="\t" if ext == ".tsv" else ",")
            writer.writerow(["text", "label"])
            writer.writerows([[r["text"], r["label"]] for r in rows])
    return path


def all_texts(seed: int = 0, n: int = 400) -> List[str]:
    """Texts covering every word the generators use, to train a tokenizer on."""
    rng = random.Random(seed)
    texts = [sentence(rng, t, rng.choice(GOOD + BAD + list(NLI_CUES.values()))) for t in sorted(TOPICS)
             for _ in range(n // len(TOPICS))]
    return texts + [" ".join(GOOD + BAD + list(NLI_CUES.values()))] * 5


def write_tiny_bert(out_dir: str, seed: int = 0, texts: Optional[List[str]] = None, vocab_size: int = 300,
                    hidden: int = 64, layers: int = 2) -> str:
    """A randomly initialised tiny BertForMaskedLM with a WordPiece tokenizer trained on ``texts``
    (default: the generators' vocabulary), saved as a Hugging Face directory; returns out_dir."""
    tokenizer = train_wordpiece_tokenizer(texts or all_texts_with_names(seed), vocab_size, out_dir, min_frequency=1)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=4 * hidden, max_position_embeddings=256,
                        # Without dropout a tiny random model learns the rules above in a few epochs for every
                        # seed tried; with BERT's 0.1 some seeds stayed at the majority class.
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForMaskedLM(config).save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- the other kinds' formats
def write_squad(path: str, n: int, seed: int, version_2: bool = False) -> str:
    """SQuAD-format JSON: the question asks who is mentioned; the answer is the one person's name in the
    context. ``version_2``: a third of the questions have no person in their context (is_impossible)."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        topic = rng.choice(sorted(TOPICS))
        impossible = version_2 and i % 3 == 0
        before, after = sentence(rng, topic), sentence(rng, topic)
        person = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        middle = sentence(rng, topic) if impossible else f"{person} {rng.choice(TOPICS[topic]['verbs'])} it."
        context = f"{before} {middle} {after}"
        qa = {"id": f"q{seed}_{i}", "question": "who is mentioned?", "answers": []}
        if impossible:
            qa["is_impossible"] = True
            qa["plausible_answers"] = []
        else:
            qa["answers"] = [{"text": person, "answer_start": len(before) + 1}]
            if version_2:
                qa["is_impossible"] = False
        paragraphs.append({"context": context, "qas": [qa]})
    data = {"version": "v2.0" if version_2 else "1.1", "data": [{"title": "generated", "paragraphs": paragraphs}]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def _choice_examples(n: int, seed: int, k: int = 4):
    """(context, endings, label): the right ending holds a good word, the others bad ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        label = rng.randrange(k)
        endings = [f"then {rng.choice(GOOD if j == label else BAD)} {rng.choice(TOPICS[topic]['nouns'])}."
                   for j in range(k)]
        out.append((sentence(rng, topic), endings, label))
    return out


def write_swag(path: str, n: int, seed: int) -> str:
    """SWAG's csv columns (video-id, fold-ind, startphrase, sent1, sent2, gold-source, ending0..3, label)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                         "ending0", "ending1", "ending2", "ending3", "label"])
        for i, (context, endings, label) in enumerate(_choice_examples(n, seed)):
            writer.writerow([i, f"v{i}", i, f"{context} and", context, "and", "gen"] + endings + [label])
    return path


def write_hellaswag(path: str, n: int, seed: int) -> str:
    """HellaSwag jsonl lines (ind, ctx_a, ctx_b, ctx, endings, label)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, (context, endings, label) in enumerate(_choice_examples(n, seed)):
            f.write(json.dumps({"ind": i, "ctx_a": context, "ctx_b": "and", "ctx": f"{context} and",
                                "endings": endings, "label": label, "split": "train"}) + "\n")
    return path


def write_conll(path: str, n: int, seed: int) -> str:
    """CoNLL-2003 columns (word POS chunk NER): people B-PER/I-PER, places B-LOC, the rest O."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        topic = TOPICS[rng.choice(sorted(TOPICS))]
        words = [(rng.choice(FIRST_NAMES), "B-PER"), (rng.choice(LAST_NAMES), "I-PER"),
                 (rng.choice(topic["verbs"]), "O"), ("the", "O"), (rng.choice(topic["nouns"]), "O"),
                 ("in", "O"), (rng.choice(PLACES), "B-LOC"), (".", "O")]
        if rng.random() < 0.5:
            words = words[4:6] + words[6:7] + [(",", "O")] + words[:4] + words[7:]
        lines += [f"{w} NN I-NP {t}" for w, t in words] + [""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_other_tasks(data_dir: str, n_train: int = 200, n_dev: int = 60, seed: int = 0) -> str:
    """squad/, swag/, hellaswag/, conll2003/ under ``data_dir`` at the paths the registry expects."""
    for k, (name, write) in enumerate([("squad", write_squad), ("squad_v2", None), ("swag", write_swag),
                                       ("hellaswag", write_hellaswag), ("conll2003", write_conll)]):
        spec = TASKS[name]
        for split, n in (("train", n_train), ("dev", n_dev)):
            path = os.path.join(data_dir, spec.train_path if split == "train" else spec.dev_path)
            s = seed * 1000 + 10 * k + (split == "dev")
            if name == "squad_v2":
                write_squad(path, n, s, version_2=True)
            else:
                write(path, n, s)
    return data_dir


def all_texts_with_names(seed: int = 0) -> List[str]:
    return all_texts(seed) + [" ".join(FIRST_NAMES + LAST_NAMES + PLACES + ["who is mentioned then"])] * 5
