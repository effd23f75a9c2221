"""WordPiece training (mometas_ds/tokenizer.py): one corpus and vocabulary size give one tokenizer, in any process."""
import json
import subprocess
import sys

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from mometas_ds.demo_corpus import generate_documents
from mometas_ds.tokenizer import SPECIAL_TOKENS, train_wordpiece_tokenizer
from tests.pretrain_helpers import REPO_ROOT, subprocess_env

# Accents, capitals, CJK, punctuation glued to words, digits: everything the normalizer and pre-tokenizer touch.
MIXED = ["Éclair café: NAÏVE façade, 東京 and 北京!", "x##y, a-b-c; (parenthesised) 2026-12-04 v1.2.3",
         "İstanbul ﬁne ½ ÀÉÎÕÜ 'quoted' \"double\" tab\there\nnew line"]

_TRAIN_IN_A_FRESH_PROCESS = """
import sys
from mometas_ds.demo_corpus import generate_documents
from mometas_ds.tokenizer import train_wordpiece_tokenizer
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
