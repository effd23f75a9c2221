"""WordPiece training (mometas_ds/data/tokenizer.py): one corpus and vocabulary size give one tokenizer, in any
process."""
import json
import math
import random
import subprocess
import sys
from collections import Counter

import pytest

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from mometas_ds.data.demo_corpus import generate_documents
from mometas_ds.data.tokenizer import (
    SAMPLE_SEED, SPECIAL_TOKENS, TRAINING_RECORD, _selection_sample, train_wordpiece_tokenizer,
)
from tests.pretrain_helpers import REPO_ROOT, subprocess_env

# Accents, capitals, CJK, punctuation glued to words, digits: everything the normalizer and pre-tokenizer touch.
MIXED = ["Éclair café: NAÏVE façade, 東京 and 北京!", "x##y, a-b-c; (parenthesised) 2026-12-04 v1.2.3",
         "İstanbul ﬁne ½ ÀÉÎÕÜ 'quoted' \"double\" tab\there\nnew line"]

_TRAIN_IN_A_FRESH_PROCESS = """
import sys
from mometas_ds.data.demo_corpus import generate_documents
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer
texts = generate_documents(600, seed=0)
for vocab_size in (300, 1000):
    train_wordpiece_tokenizer(texts, vocab_size, f"{sys.argv[1]}/vocab{vocab_size}")
"""


def test_training_in_separate_processes_gives_byte_identical_tokenizers(tmp_path):
    # HF's trainer alone gave a different tokenizer.json in each of 5 processes on the demo corpus (ids of the
    # "##c" pieces in hash order, and a different set of merges where pair counts tie).
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS, str(tmp_path / f"run{seed}")],
                              env={**subprocess_env(), "PYTHONHASHSEED": str(seed)}, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for vocab_size in (300, 1000):
        runs = [(tmp_path / f"run{seed}" / f"vocab{vocab_size}" / "tokenizer.json").read_bytes() for seed in (1, 2)]
        assert runs[0] == runs[1], vocab_size
        assert len(json.loads(runs[0])["model"]["vocab"]) == vocab_size


def test_vocabulary_layout_is_canonical(tmp_path):
    trained = train_wordpiece_tokenizer(generate_documents(200, seed=3) + MIXED, 400, str(tmp_path / "tok"))
    vocab = trained.backend_tokenizer.get_vocab(with_added_tokens=False)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert tuple(tokens[:len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS
    rest = tokens[len(SPECIAL_TOKENS):]
    singles = [t for t in rest if len(t) == 1]
    continuations = [t for t in rest if len(t) == 3 and t.startswith("##")]
    # Then every character, sorted by code point; then each "##c", sorted; then the merged pieces.
    assert rest[:len(singles)] == sorted(singles)
    assert rest[len(singles):len(singles) + len(continuations)] == sorted(continuations)
    merged = rest[len(singles) + len(continuations):]
    assert all(len(t) > 1 and not (len(t) == 3 and t.startswith("##")) for t in merged)
    assert {"e", "東", "北", "!", "##e"} <= set(tokens)  # accents stripped, CJK and punctuation kept whole
    assert "##東" not in tokens and "##!" not in tokens  # never inside a word: no continuation piece
    # Only the five special tokens are added tokens: a "##c" in a document is ordinary text.
    assert [t.content for t in trained.backend_tokenizer.get_added_tokens_decoder().values()] == list(SPECIAL_TOKENS)


def test_words_are_counted_as_the_hf_trainer_counts_them(tmp_path):
    """The tokenizer is HF's WordPiece training, fed word counts instead of the texts: the same trainer with the
    same pieces registered, given the raw texts, learns exactly the same vocabulary."""
    texts = generate_documents(150, seed=5) + MIXED * 3
    trained = train_wordpiece_tokenizer(texts, 350, str(tmp_path / "tok"))
    ours = trained.backend_tokenizer.get_vocab(with_added_tokens=False)
    registered = [t for t, _ in sorted(ours.items(), key=lambda item: item[1])
                  if t in SPECIAL_TOKENS or len(t) == 1 or (len(t) == 3 and t.startswith("##"))]
    reference = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    reference.normalizer = normalizers.BertNormalizer(lowercase=True)
    reference.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    reference.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(
        vocab_size=350, min_frequency=2, special_tokens=registered, continuing_subword_prefix="##",
        show_progress=False))
    assert reference.get_vocab(with_added_tokens=False) == ours
    # Every character of the normalized corpus is in the vocabulary: nothing becomes [UNK].
    assert all(trained.unk_token_id not in ids for ids in trained(texts, add_special_tokens=False)["input_ids"])


def test_a_one_shot_generator_is_read_once(tmp_path):
    read = []

    def corpus():
        for text in generate_documents(50, seed=2):
            read.append(text)
            yield text

    from_generator = train_wordpiece_tokenizer(corpus(), 200, str(tmp_path / "gen"))
    from_list = train_wordpiece_tokenizer(generate_documents(50, seed=2), 200, str(tmp_path / "list"))
    assert len(read) == 50
    assert from_generator.get_vocab() == from_list.get_vocab()


# --- batched input and --tokenizer_sample ------------------------------------------------------------

def _files(tmp_path, per_file=60, marks=("東", "北", "京")):
    """Three corpus files; every document of file k holds the character marks[k] (so a tokenizer trained on a
    sample has marks[k] in its vocabulary only if the sample took a document of file k)."""
    paths = []
    for k, mark in enumerate(marks):
        path = tmp_path / f"part{k}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i, text in enumerate(generate_documents(per_file, seed=10 + k)):
                f.write(json.dumps({"text": f"{text} {mark}{mark}"}) + "\n")
        paths.append(str(path))
    return paths


def _read(out_dir):
    return {name: (out_dir / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")}


def test_batched_input_and_a_sample_of_the_whole_corpus_give_the_unsampled_tokenizer(tmp_path):
    texts = generate_documents(300, seed=4) + MIXED
    train_wordpiece_tokenizer(texts, 500, str(tmp_path / "plain"))
    batches = [texts[i:i + 64] for i in range(0, len(texts), 64)]  # e.g. dataset.iter(batch_size=64)["text"]
    train_wordpiece_tokenizer(batches, 500, str(tmp_path / "batched"))
    train_wordpiece_tokenizer(texts, 500, str(tmp_path / "exact"), sample=len(texts))
    train_wordpiece_tokenizer(lambda: iter(batches), 500, str(tmp_path / "more"), sample=10 * len(texts))
    plain = _read(tmp_path / "plain")
    for other in ("batched", "exact", "more"):
        assert _read(tmp_path / other) == plain, other
    record = json.loads((tmp_path / "more" / TRAINING_RECORD).read_text())
    assert record["tokenizer_sample"] == 10 * len(texts)
    assert record["documents_in_corpus"] == record["documents_trained_on"] == len(texts)
    assert json.loads((tmp_path / "plain" / TRAINING_RECORD).read_text())["tokenizer_sample"] is None


def test_a_sample_is_the_tokenizer_of_exactly_the_sampled_documents(tmp_path):
    texts = [f"{t} unique{i}marker" for i, t in enumerate(generate_documents(400, seed=6))]
    sampled = train_wordpiece_tokenizer(texts, 400, str(tmp_path / "sampled"), sample=40)
    chosen = list(_selection_sample(iter(texts), len(texts), 40, random.Random(SAMPLE_SEED)))
    assert len(chosen) == 40 and len(set(chosen)) == 40
    assert [texts.index(t) for t in chosen] == sorted(texts.index(t) for t in chosen)  # corpus order
    train_wordpiece_tokenizer(chosen, 400, str(tmp_path / "chosen"))
    # Only which documents are read changes: the same training on them, byte for byte.
    assert _read(tmp_path / "sampled") == _read(tmp_path / "chosen")
    whole = train_wordpiece_tokenizer(texts, 400, str(tmp_path / "whole"))
    assert sampled.get_vocab() != whole.get_vocab()
    record = json.loads((tmp_path / "sampled" / TRAINING_RECORD).read_text())
    assert (record["documents_in_corpus"], record["documents_trained_on"], record["tokenizer_sample"]) == (400, 40, 40)


def test_selection_sampling_takes_exactly_n_each_document_equally_often():
    total, wanted, rounds = 50, 10, 4000
    hits = Counter()
    for seed in range(rounds):
        chosen = list(_selection_sample(iter(range(total)), total, wanted, random.Random(seed)))
        assert len(chosen) == wanted and chosen == sorted(set(chosen))
        hits.update(chosen)
    p = wanted / total
    sigma = math.sqrt(rounds * p * (1 - p))
    # First, middle and last documents alike: the sample is spread over the whole corpus, not its head.
    assert all(abs(hits[i] - rounds * p) < 5 * sigma for i in range(total)), hits


def test_a_sample_spreads_over_every_file(tmp_path):
    from mometas_ds.data.readers import CorpusReport, iter_texts

    paths = _files(tmp_path)
    tok = train_wordpiece_tokenizer(lambda: iter_texts(paths, "text", CorpusReport()), 300, str(tmp_path / "t"),
                                    sample=12)
    vocab = tok.get_vocab()
    assert {"東", "北", "京"} <= set(vocab), "the 12 sampled documents come from all three files"
    head = train_wordpiece_tokenizer(list(iter_texts(paths, "text"))[:12], 300, str(tmp_path / "head"))
    assert "北" not in head.get_vocab() and "京" not in head.get_vocab()  # what "the first 12" would have read


_TRAIN_SAMPLED_IN_A_FRESH_PROCESS = """
import sys
from mometas_ds.data.readers import CorpusReport, iter_texts
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer
paths = sys.argv[2:]
train_wordpiece_tokenizer(lambda: iter_texts(paths, "text", CorpusReport()), 400, sys.argv[1], sample=50)
"""


def test_a_sampled_tokenizer_is_byte_identical_in_separate_processes(tmp_path):
    paths = _files(tmp_path, per_file=150)
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_SAMPLED_IN_A_FRESH_PROCESS, str(tmp_path / f"run{seed}"),
                               *paths], env={**subprocess_env(), "PYTHONHASHSEED": str(seed)}, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (3, 4)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = [_read(tmp_path / f"run{seed}") for seed in (3, 4)]
    assert runs[0] == runs[1]
    assert json.loads((tmp_path / "run3" / TRAINING_RECORD).read_text())["documents_trained_on"] == 50


@pytest.mark.parametrize("sample", [0, -3, True, 2.5, "10"])
def test_bad_sample_values_name_the_flag(sample, tmp_path):
    with pytest.raises(ValueError, match="--tokenizer_sample: must be a whole number of documents >= 1"):
        train_wordpiece_tokenizer(["a b c"] * 5, 100, str(tmp_path / "t"), sample=sample)


def test_a_sample_needs_a_corpus_it_can_read_twice_and_batches_hold_strings(tmp_path):
    with pytest.raises(ValueError, match="--tokenizer_sample reads the corpus twice"):
        train_wordpiece_tokenizer(iter(["a b c"] * 5), 100, str(tmp_path / "t"), sample=2)
    with pytest.raises(ValueError, match="a batch holds a int"):
        train_wordpiece_tokenizer([["a b", 3]], 100, str(tmp_path / "t"))
    with pytest.raises(ValueError, match="batches of them"):
        train_wordpiece_tokenizer([{"text": "a b"}], 100, str(tmp_path / "t"))


def test_the_run_trains_its_tokenizer_on_the_sample_and_records_it(tmp_path):
    """The run's tokenizer set-up (data.pretrain_data) passes --tokenizer_sample on (one rank: no process group)."""
    from mometas_ds.config import PretrainConfig
    from mometas_ds.train.data import load_run_tokenizer
    from mometas_ds.distributed.ranks import Ranks

    paths = _files(tmp_path)
    cfg = PretrainConfig(deepspeed_config="ds.json", train_files=paths, model_config="tiny", train_tokenizer=300,
                         tokenizer_sample=12, output_dir=str(tmp_path / "run"))
    tokenizer = load_run_tokenizer(cfg, Ranks(rank=0, world_size=1))
    record = json.loads((tmp_path / "run" / "tokenizer" / TRAINING_RECORD).read_text())
    assert (record["tokenizer_sample"], record["documents_in_corpus"], record["documents_trained_on"]) == (12, 180, 12)
    assert len(tokenizer) == record["trained_vocab_size"]
    assert json.loads(cfg.to_json())["tokenizer_sample"] == 12  # run_config.json holds it too
