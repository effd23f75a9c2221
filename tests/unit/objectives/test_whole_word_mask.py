"""Whole-word masking for mlm and gmlm (issue 19 item 3): word structure, invariants, rates, option off."""
import json
import math

import pytest
import torch

from mometas_ds.objectives import IGNORE_INDEX, SpecialTokens, build_objective, objective_class
from mometas_ds.objectives.base import rand, real_token_mask, whole_words
from mometas_ds.objectives.mlm import mask_chosen_tokens

# Special ids in the middle of the vocabulary; ids 250..399 are "##" continuation pieces.
CONT_IDS = tuple(range(250, 400))
SPECIAL = SpecialTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, vocab_size=400, continuation_ids=CONT_IDS)
NO_CONT = SpecialTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, vocab_size=400)
CONT = torch.tensor(CONT_IDS)
FIRST_PIECES = torch.tensor([i for i in range(250) if i not in SPECIAL.ids])
ORDINARY_COUNT = SPECIAL.vocab_size - len(SPECIAL.ids)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def within(observed, expected, n, sigmas=5.0):
    """observed fraction of n Bernoulli(expected) trials lies within `sigmas` standard deviations."""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-9


def make_batch(gen, batch, seq_len, continuation_rate=0.4, pairs=True):
    """Right-padded rows [cls, pieces..., (sep, pieces...,) sep, pad...] of random words.

    Each piece is a "##" continuation with probability ``continuation_rate`` (so continuation
    pieces also land right after cls and after a middle sep); half the rows are pairs.
    """
    lengths = torch.randint(2, seq_len + 1, (batch,), generator=gen)
    lengths[0] = 2
    if batch > 1:
        lengths[1] = seq_len
    first = FIRST_PIECES[torch.randint(0, FIRST_PIECES.numel(), (batch, seq_len), generator=gen)]
    cont = CONT[torch.randint(0, CONT.numel(), (batch, seq_len), generator=gen)]
    ids = torch.where(torch.rand(batch, seq_len, generator=gen) < continuation_rate, cont, first)
    positions = torch.arange(seq_len)
    ids = torch.where(positions < lengths[:, None], ids, SPECIAL.pad_id)
    ids[:, 0] = SPECIAL.cls_id
    if pairs:
        middle = 1 + (torch.rand(batch, generator=gen) * (lengths - 2).clamp(min=1)).long()
        is_pair = (torch.rand(batch, generator=gen) < 0.5) & (lengths > 3)
        rows = torch.arange(batch)[is_pair]
        ids[rows, middle[is_pair]] = SPECIAL.sep_id
    ids[torch.arange(batch), lengths - 1] = SPECIAL.sep_id
    return ids, (positions < lengths[:, None]).long()


def reference_words(ids, mask):
    """Per row, the words as lists of positions: a plain loop over tokens (the test's oracle)."""
    words = []
    for row_ids, row_mask in zip(ids.tolist(), mask.tolist()):
        row, previous_real = [], False
        for j, (token, attended) in enumerate(zip(row_ids, row_mask)):
            real = bool(attended) and token not in SPECIAL.ids
            if real and token in CONT_IDS and previous_real:
                row[-1].append(j)
            elif real:
                row.append([j])
            previous_real = real
        words.append(row)
    return words


def corrupt(name, ids, mask, p=None, seed=0, special=SPECIAL, **kwargs):
    options = {k: kwargs.pop(k) for k in ("whole_word_mask",) if k in kwargs}
    if p is not None:
        options["noise_probability"] = p
    objective = build_objective(name, special, **options)
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    return objective.corrupt(ids, mask, generator=gen, **kwargs)


def chosen_words(words, chosen):
    """(number of chosen words, number of words); asserts no word is chosen in part."""
    n_chosen = n_words = 0
    for b, row in enumerate(words):
        for word in row:
            flags = {bool(chosen[b, j]) for j in word}
            assert len(flags) == 1, f"row {b}: word at positions {word} is chosen in part"
            n_chosen += flags.pop()
            n_words += 1
    return n_chosen, n_words


def check_masked(ids, mask, out):
    """mlm invariants: labels = originals where chosen, nothing else changes, no special is chosen."""
    labels = out["labels"]
    chosen = labels != IGNORE_INDEX
    assert torch.equal(out["attention_mask"], mask)
    assert not (chosen & ~real_token_mask(ids, mask, SPECIAL)).any(), "a special or padding token was chosen"
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    return chosen


# --- the word structure ----------------------------------------------------------------------------

def test_whole_words_match_a_token_loop_incl_orphans_after_cls_and_sep():
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        ids, mask = make_batch(gen, 5, int(torch.randint(2, 30, (1,), generator=gen)))
        candidates = real_token_mask(ids, mask, SPECIAL)
        starts, first_piece = whole_words(ids, candidates, SPECIAL)
        for b, row in enumerate(reference_words(ids, mask)):
            assert starts[b].nonzero().flatten().tolist() == [word[0] for word in row]
            for word in row:
                assert first_piece[b, word].tolist() == [word[0]] * len(word)
    # By hand: a continuation right after cls, and one right after a middle sep, each start a word;
    # neither joins the special token or the word before the sep (google-research/bert would).
    c1, c2, c3, w1, w2 = 250, 251, 252, 5, 6
    ids = torch.tensor([[101, c1, c2, w1, c3, 102, c1, w2, 102, 0]])
    mask = (ids != 0).long()
    starts, first_piece = whole_words(ids, real_token_mask(ids, mask, SPECIAL), SPECIAL)
    assert starts[0].nonzero().flatten().tolist() == [1, 3, 6, 7]
    assert first_piece[0, [1, 2, 3, 4, 6, 7]].tolist() == [1, 1, 3, 3, 6, 7]


def test_words_agree_with_the_tokenizers_own_word_ids(tmp_path):
    """On real text the "##" table gives exactly the words the fast tokenizer reports (pairs, padding)."""
    from mometas_ds.data.demo_corpus import generate_documents
    from mometas_ds.data.tokenizer import special_tokens_of, train_wordpiece_tokenizer

    docs = generate_documents(200, seed=1)
    tokenizer = train_wordpiece_tokenizer(docs, 120, str(tmp_path / "tok"))  # small: many words split
    special = special_tokens_of(tokenizer)
    vocab = tokenizer.get_vocab()
    assert set(special.continuation_ids) == {i for t, i in vocab.items() if t.startswith("##")}
    enc = tokenizer(docs[:16], docs[16:32], truncation="longest_first", max_length=128, padding="max_length",
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    starts, _ = whole_words(ids, real_token_mask(ids, mask, special), special)
    multi_piece = 0
    for b in range(ids.shape[0]):
        keys = list(zip(enc.sequence_ids(b), enc.word_ids(b)))
        expected = [j for j, key in enumerate(keys) if key[1] is not None and (j == 0 or keys[j - 1] != key)]
        assert starts[b].nonzero().flatten().tolist() == expected
        multi_piece += sum(1 for j, key in enumerate(keys[1:], 1) if key[1] is not None and keys[j - 1] == key)
    assert multi_piece > 100  # the check above saw many continuation pieces


def test_continuation_table_from_the_vocabulary_excludes_specials_and_added_tokens(tmp_path):
    from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of

    words = ["the", "fox", "##es", "##s", "ran", "#", "##"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"] + words
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    tokenizer = load_tokenizer(str(tmp_path))
    tokenizer.add_tokens(["##odd"])  # an added token is not a word piece of the vocabulary
    special = special_tokens_of(tokenizer)
    # "##" alone continues nothing; "##odd" is added (reserved), so neither is a continuation.
    assert special.continuation_ids == tuple(sorted(tokenizer.convert_tokens_to_ids(["##es", "##s"])))
    ids = torch.tensor([[special.cls_id, *tokenizer.convert_tokens_to_ids(["fox", "##es", "##odd"]), special.sep_id]])
    assert special.continuation_mask(ids).tolist() == [[False, False, True, False, False]]
    assert special._continuation_tables[torch.device("cpu")] is special._continuation_tables[ids.device]

    # Specials and reserved ids given as continuations are dropped; out-of-range ids are an error.
    odd = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=10, reserved_ids=(4,),
                        continuation_ids=(1, 4, 7, 5, 7))
    assert odd.continuation_ids == (5, 7)
    with pytest.raises(ValueError, match="continuation_ids"):
        SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=10, continuation_ids=(10,))


# --- mlm -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_mlm_whole_word_invariants(device):
    gen = torch.Generator().manual_seed(1)
    for case in range(40):
        ids, mask = make_batch(gen, 6, 2 if case % 9 == 0 else 40)
        p = [0.0, 1.0, 0.15, 0.5][case % 4]
        out = corrupt("mlm", ids.to(device), mask.to(device), p, seed=case, whole_word_mask=True)
        out = {k: v.cpu() for k, v in out.items()}
        chosen = check_masked(ids, mask, out)
        chosen_words(reference_words(ids, mask), chosen)  # asserts no word is chosen in part
        if p == 0.0:
            assert not chosen.any()
        if p == 1.0:
            assert torch.equal(chosen, real_token_mask(ids, mask, SPECIAL))


def test_mlm_whole_word_rate_is_p_of_words_and_of_tokens():
    gen = torch.Generator().manual_seed(2)
    ids, mask = make_batch(gen, 256, 128)
    out = corrupt("mlm", ids, mask, seed=3, whole_word_mask=True)  # default p = 0.15
    chosen = check_masked(ids, mask, out)
    words = reference_words(ids, mask)
    n_chosen, n_words = chosen_words(words, chosen)
    assert n_words > 5000
    assert within(n_chosen / n_words, 0.15, n_words)  # a Bernoulli(0.15) per word
    # Each piece is chosen with probability p too, but pieces of a word together: the number of
    # chosen pieces is sum_w len_w * X_w, variance p (1 - p) sum_w len_w^2.
    sizes = torch.tensor([len(w) for row in words for w in row], dtype=torch.float64)
    n_pieces, sd = float(sizes.sum()), math.sqrt(0.15 * 0.85 * float((sizes ** 2).sum()))
    assert abs(int(chosen.sum()) - 0.15 * n_pieces) <= 5 * sd
    assert float(sizes.mean()) > 1.4  # multi-piece words are common, so the two rates differ in kind


def test_mlm_whole_word_80_10_10_is_drawn_per_piece():
    gen = torch.Generator().manual_seed(4)
    ids, mask = make_batch(gen, 128, 128)
    out = corrupt("mlm", ids, mask, 1.0, seed=5, whole_word_mask=True)
    chosen = check_masked(ids, mask, out)
    n = int(chosen.sum())
    new, original = out["input_ids"][chosen], ids[chosen]
    masked, unchanged = new == SPECIAL.mask_id, new == original
    p_same = 1.0 / ORDINARY_COUNT  # a random replacement can draw the original id
    assert within(float(masked.float().mean()), 0.8, n)
    assert within(float(unchanged.float().mean()), 0.1 + 0.1 * p_same, n)
    assert within(float((~masked & ~unchanged).float().mean()), 0.1 * (1 - p_same), n)
    assert not torch.isin(new[~masked & ~unchanged], torch.tensor(SPECIAL.ids)).any()
    # Per piece, as in google-research/bert: two pieces of one word are both [MASK] with 0.8 * 0.8.
    pairs = [(b, w[0], w[1]) for b, row in enumerate(reference_words(ids, mask)) for w in row if len(w) > 1]
    both = sum(int(out["input_ids"][b, i] == SPECIAL.mask_id and out["input_ids"][b, j] == SPECIAL.mask_id)
               for b, i, j in pairs)
    assert len(pairs) > 1000
    assert within(both / len(pairs), 0.64, len(pairs))


def test_without_continuation_pieces_whole_word_mlm_is_token_mlm():
    """Every word one piece: the per-word draw is the per-piece draw, bit for bit."""
    gen = torch.Generator().manual_seed(6)
    ids, mask = make_batch(gen, 32, 64, continuation_rate=0.0)
    for seed in range(3):
        assert_same(corrupt("mlm", ids, mask, seed=seed, whole_word_mask=True), corrupt("mlm", ids, mask, seed=seed))
        guide = torch.rand(ids.shape, generator=gen) < 0.3
        assert_same(corrupt("gmlm", ids, mask, seed=seed, whole_word_mask=True, guide_mask=guide),
                    corrupt("gmlm", ids, mask, seed=seed, guide_mask=guide))


# --- gmlm ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_gmlm_whole_word_with_a_guide_chooses_whole_guided_words(device):
    gen = torch.Generator().manual_seed(7)
    for case in range(30):
        ids, mask = make_batch(gen, 5, 36)
        guide = torch.rand(ids.shape, generator=gen) < 0.3
        guide[:, 0] = True  # a guide on cls must not make cls maskable
        p = [1.0, 0.0, 0.5][case % 3]
        out = corrupt("gmlm", ids.to(device), mask.to(device), p, seed=case, whole_word_mask=True,
                      guide_mask=guide.to(device))
        out = {k: v.cpu() for k, v in out.items()}
        chosen = check_masked(ids, mask, out)
        words = reference_words(ids, mask)
        chosen_words(words, chosen)
        guided = torch.zeros_like(chosen)  # a word is guided where any of its pieces is
        for b, row in enumerate(words):
            for word in row:
                guided[b, word] = bool(guide[b, word].any())
        assert not (chosen & ~guided).any()
        if p == 1.0:
            assert torch.equal(chosen, guided)
        if p == 0.0:
            assert not chosen.any()


def test_gmlm_whole_word_guided_rate():
    gen = torch.Generator().manual_seed(8)
    ids, mask = make_batch(gen, 256, 128)
    guide = torch.rand(ids.shape, generator=gen) < 0.3
    out = corrupt("gmlm", ids, mask, seed=9, whole_word_mask=True, guide_mask=guide)  # default p = 0.5
    chosen = check_masked(ids, mask, out)
    guided_words = [(b, w) for b, row in enumerate(reference_words(ids, mask)) for w in row if guide[b, w].any()]
    n_chosen = sum(int(chosen[b, w[0]]) for b, w in guided_words)
    assert within(n_chosen / len(guided_words), 0.5, len(guided_words))


def test_gmlm_whole_word_builtin_guide_is_spans_of_whole_words():
    gen = torch.Generator().manual_seed(10)
    ids, mask = make_batch(gen, 64, 128, pairs=False)
    words = reference_words(ids, mask)
    for case in range(10):
        small_ids, small_mask = make_batch(gen, 4, 30)
        out = corrupt("gmlm", small_ids, small_mask, 0.5, seed=case, whole_word_mask=True)
        chosen_words(reference_words(small_ids, small_mask), check_masked(small_ids, small_mask, out))
    # p = 1 shows the guide: about 30% of the words, in runs of whole words.
    guided = corrupt("gmlm", ids, mask, 1.0, seed=11, whole_word_mask=True)["labels"] != IGNORE_INDEX
    n_guided, n_words = chosen_words(words, guided)
    assert 0.2 < n_guided / n_words < 0.4, n_guided / n_words
    runs, run = [], 0
    for b, row in enumerate(words):
        for word in row + [None]:
            if word is not None and guided[b, word[0]]:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    assert sum(runs) / len(runs) > 2.5  # spans of words, not independent words (mean run < 1.7)
    # Default p = 0.5: about 15% of the words are predicted, like mlm.
    predicted = corrupt("gmlm", ids, mask, seed=12, whole_word_mask=True)["labels"] != IGNORE_INDEX
    n_predicted, _ = chosen_words(words, predicted)
    assert 0.1 < n_predicted / n_words < 0.2


# --- option off, flags, errors ---------------------------------------------------------------------

def todays_mlm(special, p, ids, mask, gen):
    """mlm's corruption before whole-word masking: a draw per piece, then the 80/10/10."""
    chosen = real_token_mask(ids, mask, special) & (rand(ids.shape, gen, ids.device) < p)
    return mask_chosen_tokens(ids, chosen, special, gen)


def todays_gmlm(special, p, ids, mask, gen, guide_mask=None, start=0.12, max_len=5):
    """gmlm's corruption before whole-word masking: spans of pieces (or the guide), a draw per piece."""
    candidates = real_token_mask(ids, mask, special)
    if guide_mask is None:
        batch, seq_len = ids.shape
        starts = candidates & (rand((batch, seq_len), gen, ids.device) < start)
        lengths = (rand((batch, seq_len), gen, ids.device) * max_len).long().clamp_(max=max_len - 1) + 1
        positions = torch.arange(seq_len).expand(batch, seq_len)
        guide = candidates & (torch.where(starts, positions + lengths, 0).cummax(dim=1).values > positions)
    else:
        guide = guide_mask & candidates
    chosen = guide & (rand(ids.shape, gen, ids.device) < p)
    return mask_chosen_tokens(ids, chosen, special, gen)


def assert_same(out, reference):
    assert torch.equal(out["input_ids"], reference["input_ids"])
    assert torch.equal(out["labels"], reference["labels"])


def test_option_off_is_todays_output_bit_for_bit():
    gen = torch.Generator().manual_seed(13)
    for seed in range(8):
        # Rows without an inner sep: across one, gmlm's spans now stop (tests/unit/data/test_inner_separators.py).
        ids, mask = make_batch(gen, 8, 48, pairs=False)
        guide = torch.rand(ids.shape, generator=gen) < 0.3
        for special in (SPECIAL, NO_CONT):
            for options in ({}, {"whole_word_mask": False}):
                g = torch.Generator().manual_seed(seed)
                assert_same(build_objective("mlm", special, **options).corrupt(ids, mask, generator=g),
                            todays_mlm(special, 0.15, ids, mask, torch.Generator().manual_seed(seed)))
                for guide_mask in (None, guide):
                    g = torch.Generator().manual_seed(seed)
                    out = build_objective("gmlm", special, **options).corrupt(ids, mask, generator=g,
                                                                              guide_mask=guide_mask)
                    ref = todays_gmlm(special, 0.5, ids, mask, torch.Generator().manual_seed(seed), guide_mask)
                    assert_same(out, ref)
    # And the option on does change the output where words have several pieces.
    ids, mask = make_batch(gen, 16, 64)
    assert not torch.equal(corrupt("mlm", ids, mask, seed=1, whole_word_mask=True)["labels"],
                           corrupt("mlm", ids, mask, seed=1)["labels"])


def test_which_objectives_take_the_option_and_bad_values():
    assert [n for n in ("mlm", "gmlm", "atd", "dtd", "cse") if objective_class(n).supports_whole_word_mask] == [
        "mlm", "gmlm"]
    assert build_objective("gmlm", SPECIAL, whole_word_mask=True).whole_word_mask is True
    assert build_objective("mlm", SPECIAL).whole_word_mask is False
    for name in ("mlm", "gmlm"):
        with pytest.raises(ValueError, match="whole_word_mask needs the vocabulary's '##' continuation pieces"):
            build_objective(name, NO_CONT, whole_word_mask=True)
        with pytest.raises(ValueError, match="whole_word_mask must be a bool"):
            build_objective(name, SPECIAL, whole_word_mask="yes")


def test_the_flag_is_checked_and_reaches_only_the_objectives_that_take_it():
    from mometas_ds.config import ConfigError, PretrainConfig, parse_args
    from mometas_ds.train.preflight import validate_config
    from mometas_ds.train.trainer import build_objectives
    from tests.pretrain_helpers import CPU_CONFIG

    required = ["--deepspeed_config", CPU_CONFIG, "--train_files", "x.jsonl"]
    assert parse_args(required + ["--whole_word_mask"]).whole_word_mask
    assert not parse_args(required).whole_word_mask
    common = dict(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny", train_tokenizer=100)
    with pytest.raises(ConfigError, match="--whole_word_mask: no objective in --objectives"):
        validate_config(PretrainConfig(objectives=["atd", "dtd"], whole_word_mask=True, **common))
    cfg = PretrainConfig(objectives=["mlm", "gmlm", "atd"], whole_word_mask=True, **common)
    validate_config(cfg)
    built = build_objectives(cfg, SPECIAL)
    assert built["mlm"].whole_word_mask and built["gmlm"].whole_word_mask
    assert not hasattr(built["atd"], "whole_word_mask")
    with pytest.raises(ConfigError, match="--whole_word_mask"):
        build_objectives(cfg, NO_CONT)  # a vocabulary without '##' pieces
    assert not build_objectives(PretrainConfig(objectives=["mlm"], **common), NO_CONT)["mlm"].whole_word_mask


@pytest.mark.integration
def test_a_run_with_whole_word_masking_trains_and_records_it(assets, tmp_path):
    import json

    from tests.pretrain_helpers import assert_ok, pretrain_args, read_jsonl, run_pretrain

    out = str(tmp_path / "run")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=4,
                         extra=["--objectives", "mlm,gmlm", "--whole_word_mask", "--save_steps", "4"])
    assert_ok(run_pretrain(args))
    losses = [row["loss"] for row in read_jsonl(f"{out}/metrics.jsonl") if "loss" in row]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
    with open(f"{out}/checkpoints/step4/run_identity.json", encoding="utf-8") as f:
        assert json.load(f)["--whole_word_mask"] is True
