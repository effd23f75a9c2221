"""Property tests of the five built-in objectives (issue 2): corruption invariants, heads, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig

from mometas_ds.objectives import (
    IGNORE_INDEX, SpecialTokens, available_objectives, build_objective,
)
from mometas_ds.objectives.cse import TEMPERATURE

# Special ids in the middle of the vocabulary, so that "ordinary" is not just "id >= 4".
SPECIAL = SpecialTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, vocab_size=400)
SPECIAL_IDS = torch.tensor(SPECIAL.ids)
ORDINARY_IDS = torch.tensor([i for i in range(SPECIAL.vocab_size) if i not in SPECIAL.ids])
BUILTINS = ["mlm", "gmlm", "atd", "dtd", "cse"]


def is_special(ids):
    return torch.isin(ids, SPECIAL_IDS)


def make_batch(gen, batch, seq_len, lengths=None, distinct=False):
    """Right-padded rows [cls, ordinary..., sep, pad...]; lengths in [2, seq_len] (2 = cls + sep only).

    distinct=True gives every row distinct ordinary ids, so a corrupted token can be traced back.
    """
    if lengths is None:
        lengths = torch.randint(2, seq_len + 1, (batch,), generator=gen)
        lengths[0] = 2  # always include a row with only cls + sep
        if batch > 1:
            lengths[1] = seq_len  # and a full row
    if distinct:
        order = torch.rand(batch, ORDINARY_IDS.numel(), generator=gen).argsort(dim=1)[:, :seq_len]
        ids = ORDINARY_IDS[order]
    else:
        ids = ORDINARY_IDS[torch.randint(0, ORDINARY_IDS.numel(), (batch, seq_len), generator=gen)]
    positions = torch.arange(seq_len)
    ids = torch.where(positions < lengths[:, None], ids, SPECIAL.pad_id)
    ids[:, 0] = SPECIAL.cls_id
    ids[torch.arange(batch), lengths - 1] = SPECIAL.sep_id
    return ids, (positions < lengths[:, None]).long()


def random_cases(seed, count, max_batch=6, max_len=40, distinct=False):
    """(input_ids, attention_mask, p) over random shapes, incl. T = 2, p = 0 and p = 1."""
    gen = torch.Generator().manual_seed(seed)
    for case in range(count):
        batch = int(torch.randint(1, max_batch + 1, (1,), generator=gen))
        seq_len = 2 if case % 7 == 0 else int(torch.randint(2, max_len + 1, (1,), generator=gen))
        p = [0.0, 1.0][case % 2] if case % 5 < 2 else float(torch.rand(1, generator=gen))
        ids, mask = make_batch(gen, batch, seq_len, distinct=distinct)
        yield ids, mask, p


def corrupt(name, ids, mask, p=None, seed=0, **kwargs):
    kw = {} if p is None else {"noise_probability": p}
    objective = build_objective(name, SPECIAL, **kw)
    return objective.corrupt(ids, mask, generator=torch.Generator().manual_seed(seed), **kwargs)


def within(observed, expected, n, sigmas=5.0):
    """observed fraction of n Bernoulli(expected) trials lies within `sigmas` standard deviations."""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-9


def looks_uniform_over_ordinary(draws):
    """Draws are ordinary ids with about as many distinct values as uniform draws would give."""
    k, n = ORDINARY_IDS.numel(), draws.numel()
    expected_distinct = k * (1 - (1 - 1 / k) ** n)
    return not is_special(draws).any() and draws.unique().numel() > 0.9 * expected_distinct


# --- registry --------------------------------------------------------------------------------------

def test_builtins_registered_in_order_with_their_defaults():
    assert available_objectives()[:5] == BUILTINS
    defaults = {name: build_objective(name, SPECIAL).noise_probability for name in BUILTINS[:4]}
    assert defaults == {"mlm": 0.15, "gmlm": 0.5, "atd": 0.15, "dtd": 0.15}
    assert build_objective("gmlm", SPECIAL).head_name == "mlm"
    assert build_objective("mlm", SPECIAL).head_name == "mlm"
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective("nope", SPECIAL)


# --- mlm / gmlm ------------------------------------------------------------------------------------

def check_masked(ids, mask, out, allowed):
    """mlm-style invariants; ``allowed`` is where a token may be chosen."""
    labels = out["labels"]
    chosen = labels != IGNORE_INDEX
    assert out["input_ids"].shape == ids.shape and labels.shape == ids.shape
    assert out["input_ids"].dtype == torch.long and labels.dtype == torch.long
    assert torch.equal(out["attention_mask"], mask)
    assert not (chosen & ~allowed).any(), "a token outside the allowed set was chosen"
    assert torch.equal(labels[chosen], ids[chosen]), "labels must hold the original ids"
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen]), "unchosen tokens must not change"
    new = out["input_ids"][chosen]
    assert ((new == SPECIAL.mask_id) | ~is_special(new)).all(), "a chosen token became a special token"
    return chosen


def test_mlm_invariants_over_random_batches():
    for ids, mask, p in random_cases(seed=1, count=60):
        candidates = mask.bool() & ~is_special(ids)
        chosen = check_masked(ids, mask, corrupt("mlm", ids, mask, p), candidates)
        if p == 0.0:
            assert not chosen.any()
        if p == 1.0:
            assert torch.equal(chosen, candidates)


def test_mlm_80_10_10_proportions():
    gen = torch.Generator().manual_seed(2)
    ids, mask = make_batch(gen, 64, 128)
    out = corrupt("mlm", ids, mask, 0.15, seed=3)
    candidates = mask.bool() & ~is_special(ids)
    chosen = out["labels"] != IGNORE_INDEX
    n_candidates, n_chosen = int(candidates.sum()), int(chosen.sum())
    assert within(n_chosen / n_candidates, 0.15, n_candidates)
    # Proportions among chosen tokens: p = 1 on a larger batch gives a tight estimate.
    ids, mask = make_batch(gen, 128, 128)
    out = corrupt("mlm", ids, mask, 1.0, seed=4)
    chosen = out["labels"] != IGNORE_INDEX
    n_chosen = int(chosen.sum())
    new, original = out["input_ids"][chosen], ids[chosen]
    masked = new == SPECIAL.mask_id
    unchanged = new == original
    randomized = ~masked & ~unchanged
    # A random replacement equals the original with probability 1 / (number of ordinary ids).
    p_same = 1.0 / ORDINARY_IDS.numel()
    assert within(float(masked.float().mean()), 0.8, n_chosen)
    assert within(float(unchanged.float().mean()), 0.1 + 0.1 * p_same, n_chosen)
    assert within(float(randomized.float().mean()), 0.1 * (1 - p_same), n_chosen)
    # Random replacements spread over the ordinary vocabulary, not a few ids.
    assert looks_uniform_over_ordinary(new[randomized])


def test_gmlm_with_guide_mask_only_chooses_guided_tokens():
    gen = torch.Generator().manual_seed(4)
    for ids, mask, p in random_cases(seed=5, count=40):
        guide = torch.rand(ids.shape, generator=gen) < 0.4
        guide[:, 0] = True  # a guide on cls must still not make cls maskable
        allowed = guide & mask.bool() & ~is_special(ids)
        chosen = check_masked(ids, mask, corrupt("gmlm", ids, mask, p, guide_mask=guide), allowed)
        if p == 0.0:
            assert not chosen.any()
        if p == 1.0:
            assert torch.equal(chosen, allowed)


def test_gmlm_guided_rate_and_proportions():
    gen = torch.Generator().manual_seed(6)
    ids, mask = make_batch(gen, 64, 128)
    guide = torch.rand(ids.shape, generator=gen) < 0.3
    out = corrupt("gmlm", ids, mask, guide_mask=guide, seed=7)  # default p = 0.5
    allowed = guide & mask.bool() & ~is_special(ids)
    chosen = out["labels"] != IGNORE_INDEX
    assert within(int(chosen.sum()) / int(allowed.sum()), 0.5, int(allowed.sum()))
    assert within(float((out["input_ids"][chosen] == SPECIAL.mask_id).float().mean()), 0.8, int(chosen.sum()))


def run_lengths(chosen):
    lengths = []
    for row in chosen.tolist():
        run = 0
        for flag in row + [False]:
            if flag:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    return lengths


def test_gmlm_builtin_guide_is_spans_not_plain_mlm():
    gen = torch.Generator().manual_seed(8)
    ids, mask = make_batch(gen, 32, 128, lengths=torch.full((32,), 128))
    candidates = mask.bool() & ~is_special(ids)
    for ids_, mask_ in [(ids, mask)] + [(i, m) for i, m, _ in random_cases(seed=9, count=20)]:
        out = corrupt("gmlm", ids_, mask_, 0.5, seed=10)
        check_masked(ids_, mask_, out, mask_.bool() & ~is_special(ids_))
    # With p = 1 everything the guide marks is chosen: the guide itself becomes visible.
    guided = corrupt("gmlm", ids, mask, 1.0, seed=11)["labels"] != IGNORE_INDEX
    coverage = int(guided.sum()) / int(candidates.sum())
    assert 0.2 < coverage < 0.4, coverage  # about 30% (module docstring)
    # Spans: runs of chosen tokens are much longer than independent Bernoulli(coverage)
    # choices would give (mean run 1 / (1 - coverage) < 1.7).
    mean_run = sum(run_lengths(guided)) / len(run_lengths(guided))
    assert mean_run > 2.5, mean_run
    # And with default p = 0.5 about 15% of tokens are predicted, like mlm.
    predicted = corrupt("gmlm", ids, mask, seed=12)["labels"] != IGNORE_INDEX
    assert 0.1 < int(predicted.sum()) / int(candidates.sum()) < 0.2


def test_gmlm_rejects_a_bad_guide_and_mlm_rejects_any_guide():
    ids, mask = make_batch(torch.Generator().manual_seed(13), 2, 8)
    with pytest.raises(ValueError, match="guide_mask must be a torch.bool"):
        corrupt("gmlm", ids, mask, guide_mask=torch.ones_like(ids))
    with pytest.raises(ValueError, match="guide_mask shape"):
        corrupt("gmlm", ids, mask, guide_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="unexpected keyword.*guide_mask"):
        corrupt("mlm", ids, mask, guide_mask=torch.ones_like(ids, dtype=torch.bool))
    with pytest.raises(ValueError, match="guide_span_start_probability"):
        build_objective("gmlm", SPECIAL, guide_span_start_probability=0.0)


# --- atd -------------------------------------------------------------------------------------------

def check_detection_layout(out, seq_len):
    """What atd and dtd outputs share: shape, mask = content, labels -100 exactly on padding, sep last."""
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    assert ids.shape[1] == seq_len and labels.shape == ids.shape and mask.shape == ids.shape
    assert torch.equal(mask, (ids != SPECIAL.pad_id).long()), "attention_mask must match the new content"
    assert torch.equal(labels == IGNORE_INDEX, ids == SPECIAL.pad_id)
    assert set(labels.unique().tolist()) <= {IGNORE_INDEX, 0, 1}
    lengths = mask.sum(dim=1)
    assert (ids[:, 0] == SPECIAL.cls_id).all() and (labels[:, 0] == 0).all()
    last = ids[torch.arange(ids.shape[0]), lengths - 1]
    assert (last == SPECIAL.sep_id).all(), "every row must end with sep"
    # Right-padded: no real token after the first pad.
    assert torch.equal(mask, (torch.arange(seq_len) < lengths[:, None]).long())
    return lengths


def test_atd_invariants_and_reconstruction():
    for ids, mask, p in random_cases(seed=20, count=80):
        out = corrupt("atd", ids, mask, p, seed=21)
        seq_len = ids.shape[1]
        new_lengths = check_detection_layout(out, seq_len)
        for row in range(ids.shape[0]):
            original = ids[row][mask[row].bool()].tolist()
            new = out["input_ids"][row, :new_lengths[row]]
            labels = out["labels"][row, :new_lengths[row]]
            inserted = labels == 1
            assert not is_special(new[inserted]).any(), "inserted tokens must be ordinary"
            assert not (inserted[1:] & inserted[:-1]).any(), "at most one insertion before each token"
            kept = new[~inserted].tolist()
            # Removing the insertions gives back the original row, or, for a row that grew
            # past T, a prefix of it closed by sep.
            assert kept[-1] == SPECIAL.sep_id and kept[:-1] == original[:len(kept) - 1]
            truncated = len(kept) < len(original)
            if truncated:
                assert int(new_lengths[row]) == seq_len
            if int(new_lengths[row]) < seq_len:
                assert kept == original
            # Each insertion sits right before an original ordinary token (or before the
            # closing sep of a truncated row).
            followers = new[1:][inserted[:-1]]
            assert not is_special(followers[:-1]).any()
            if followers.numel() and is_special(followers[-1]):
                assert truncated and followers[-1] == SPECIAL.sep_id
            if p == 1.0 and 2 * len(original) - 2 <= seq_len:
                assert int(inserted.sum()) == len(original) - 2
            if p == 0.0:
                assert not inserted.any() and kept == original


def test_atd_insertion_rate():
    gen = torch.Generator().manual_seed(22)
    # Rows at most half full: nothing is truncated, so every insertion is visible.
    ids, mask = make_batch(gen, 64, 256, lengths=torch.randint(2, 129, (64,), generator=gen))
    out = corrupt("atd", ids, mask, 0.15, seed=23)
    n_candidates = int((mask.bool() & ~is_special(ids)).sum())
    assert within(int((out["labels"] == 1).sum()) / n_candidates, 0.15, n_candidates)
    assert looks_uniform_over_ordinary(out["input_ids"][out["labels"] == 1])


def test_atd_truncates_full_rows_to_end_with_sep():
    ids, mask = make_batch(torch.Generator().manual_seed(24), 3, 10, lengths=torch.tensor([10, 9, 2]))
    out = corrupt("atd", ids, mask, 1.0)
    # cls x a x b x c ... : the full row keeps T - 1 tokens then sep.
    assert out["input_ids"][0].tolist() == (
        [SPECIAL.cls_id] + sum(([out["input_ids"][0, 2 * k + 1].item(), ids[0, k + 1].item()] for k in range(4)), [])
        + [SPECIAL.sep_id])
    assert out["labels"][0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]
    assert out["attention_mask"].sum(dim=1).tolist() == [10, 10, 2]
    assert out["input_ids"][2, :2].tolist() == [SPECIAL.cls_id, SPECIAL.sep_id]


# --- dtd -------------------------------------------------------------------------------------------

def test_dtd_invariants_and_reconstruction():
    for ids, mask, p in random_cases(seed=30, count=80, distinct=True):
        out = corrupt("dtd", ids, mask, p, seed=31)
        new_lengths = check_detection_layout(out, ids.shape[1])
        for row in range(ids.shape[0]):
            original = ids[row][mask[row].bool()].tolist()
            kept = out["input_ids"][row, :new_lengths[row]].tolist()
            labels = out["labels"][row, :new_lengths[row]].tolist()
            # Distinct ids: each kept token traces back to one original position.
            where = {token: position for position, token in enumerate(original)}
            source = [where[token] for token in kept]
            assert source == sorted(source), "kept tokens must stay in order"
            assert source[0] == 0 and source[-1] == len(original) - 1, "cls and sep are never deleted"
            deleted = set(range(len(original))) - set(source)
            assert all(original[k] not in SPECIAL.ids for k in deleted)
            expected = [0] + [int(b - a > 1) for a, b in zip(source, source[1:])]
            assert labels == expected, "label 1 exactly on the first kept token after a deletion"
            if p == 0.0:
                assert kept == original
            if p == 1.0:
                assert kept == [SPECIAL.cls_id, SPECIAL.sep_id]
                assert labels == [0, int(len(original) > 2)]


def test_dtd_deletion_rate():
    gen = torch.Generator().manual_seed(32)
    ids, mask = make_batch(gen, 64, 128)
    out = corrupt("dtd", ids, mask, 0.15, seed=33)
    n_candidates = int((mask.bool() & ~is_special(ids)).sum())
    n_deleted = int(mask.sum() - out["attention_mask"].sum())
    assert within(n_deleted / n_candidates, 0.15, n_candidates)


# --- cse -------------------------------------------------------------------------------------------

def test_cse_duplicates_rows_with_partner_labels():
    for ids, mask, _ in random_cases(seed=40, count=20):
        out = corrupt("cse", ids, mask)
        batch = ids.shape[0]
        assert out["input_ids"].shape == (2 * batch, ids.shape[1])
        assert torch.equal(out["input_ids"][0::2], ids) and torch.equal(out["input_ids"][1::2], ids)
        assert torch.equal(out["attention_mask"][0::2], mask) and torch.equal(out["attention_mask"][1::2], mask)
        assert out["labels"].tolist() == [k ^ 1 for k in range(2 * batch)]


# --- all objectives: determinism, device, inputs untouched, bad input -----------------------------

@pytest.mark.parametrize("name", BUILTINS)
def test_deterministic_for_a_generator_and_inputs_untouched(name):
    ids, mask = make_batch(torch.Generator().manual_seed(50), 8, 64)
    ids_before, mask_before = ids.clone(), mask.clone()
    first = corrupt(name, ids, mask, seed=51)
    second = corrupt(name, ids, mask, seed=51)
    other = corrupt(name, ids, mask, seed=52)
    assert torch.equal(ids, ids_before) and torch.equal(mask, mask_before)
    assert first.keys() == {"input_ids", "attention_mask", "labels"}
    for key in first:
        assert torch.equal(first[key], second[key]), key
        assert first[key].device == ids.device
    if name != "cse":  # cse draws nothing
        assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", BUILTINS)
def test_bad_input_raises_value_error(name):
    ids, mask = make_batch(torch.Generator().manual_seed(60), 2, 6)
    objective = build_objective(name, SPECIAL)
    cases = [
        (ids.float(), mask, "torch.long"),
        (ids.int(), mask, "torch.long"),
        (ids[0], mask[0], r"\[batch, seq_len\]"),
        (ids[None], mask[None], r"\[batch, seq_len\]"),
        (ids[:, :1], mask[:, :1], "seq_len must be >= 2"),
        (ids.roll(1, dims=1), mask, "row 0 does not start with cls_id"),
        (ids, mask[:, :5], "attention_mask shape"),
        (ids.masked_fill(ids == SPECIAL.sep_id, SPECIAL.vocab_size), mask, "outside"),
    ]
    for bad_ids, bad_mask, message in cases:
        with pytest.raises(ValueError, match=message):
            objective.corrupt(bad_ids, bad_mask)
    with pytest.raises(ValueError, match="unexpected keyword"):
        objective.corrupt(ids, mask, noise=0.1)


def test_bad_special_tokens_and_probability():
    with pytest.raises(ValueError, match="mask_id"):
        SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=50, vocab_size=50)
    with pytest.raises(ValueError, match="distinct"):
        SpecialTokens(pad_id=0, cls_id=1, sep_id=1, mask_id=3, vocab_size=50)
    with pytest.raises(ValueError, match="noise_probability"):
        build_objective("atd", SPECIAL, noise_probability=1.5)


def test_random_tokens_are_real_word_pieces_never_unk_added_or_unused(tmp_path):
    """mlm's random replacements and atd's insertions draw from the tokenizer's real word pieces only."""
    import json

    from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of

    words = ["the", "fox", "dog", "##s", "a", "ran"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(4)] + words
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    tokenizer = load_tokenizer(str(tmp_path))
    tokenizer.add_tokens(["covid"])  # added tokens are not word pieces of the vocabulary either
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    special = special_tokens_of(tokenizer)
    word_ids = set(tokenizer.convert_tokens_to_ids(words))
    draws = special.random_ordinary_ids((4000,), torch.Generator().manual_seed(0), "cpu")
    assert set(draws.tolist()) == word_ids
    assert set(range(special.vocab_size)) - set(special.ids) - set(special.reserved_ids) == word_ids
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([[special.cls_id] + sorted(word_ids) * 5 + [special.sep_id]] * 8)
    mask = torch.ones_like(ids)
    mlm = build_objective("mlm", special, noise_probability=1.0).corrupt(ids, mask, generator=gen)
    atd = build_objective("atd", special, noise_probability=1.0).corrupt(ids, mask, generator=gen)
    assert set(mlm["input_ids"][:, 1:-1].unique().tolist()) <= word_ids | {special.mask_id}
    assert set(atd["input_ids"][atd["labels"] == 1].tolist()) <= word_ids

    with pytest.raises(ValueError, match="reserved_ids"):
        SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=10, reserved_ids=(10,))
    with pytest.raises(ValueError, match="no ordinary token"):
        SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=6, reserved_ids=(4, 5))


# --- heads -----------------------------------------------------------------------------------------

def tiny_config(**overrides):
    kw = dict(vocab_size=SPECIAL.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.1)
    kw.update(overrides)
    return BertConfig(**kw)


def mlm_head_and_batch(seed=70, batch=3, seq_len=12, p=0.3):
    torch.manual_seed(seed)
    config = tiny_config()
    embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
    head = build_objective("mlm", SPECIAL).build_head(config, embeddings)
    with torch.no_grad():
        head.bias.normal_()  # a zero bias would hide a missing bias term
    ids, mask = make_batch(torch.Generator().manual_seed(seed), batch, seq_len)
    labels = corrupt("mlm", ids, mask, p, seed=seed)["labels"]
    hidden = torch.randn(batch, seq_len, config.hidden_size, requires_grad=True)
    return head, embeddings, hidden, labels


def test_mlm_head_is_tied_and_does_not_own_the_embedding():
    head, embeddings, _, _ = mlm_head_and_batch()
    assert head.tied_weight is embeddings.weight
    assert all(p is not embeddings.weight for p in head.parameters())
    assert embeddings not in list(head.modules())
    assert {name for name, _ in head.named_parameters()} == {
        "dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"}


def test_sparse_mlm_loss_equals_dense_all_positions_loss():
    head, embeddings, hidden, labels = mlm_head_and_batch()
    assert 0 < int((labels != IGNORE_INDEX).sum()) < labels.numel()
    sparse = head(hidden, {"labels": labels})
    assert int(sparse["num_predictions"]) == int((labels != IGNORE_INDEX).sum())
    sparse_grads = torch.autograd.grad(sparse["loss"], [hidden, embeddings.weight, head.bias, head.dense.weight])

    transformed = head.layer_norm(F.gelu(head.dense(hidden)))
    logits = transformed @ embeddings.weight.t() + head.bias  # every position projected
    dense = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    dense_grads = torch.autograd.grad(dense, [hidden, embeddings.weight, head.bias, head.dense.weight])
    torch.testing.assert_close(sparse["loss"], dense)
    for got, want in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(got, want)


def test_mlm_head_with_nothing_masked_gives_a_finite_zero_connected_to_the_graph():
    head, embeddings, hidden, labels = mlm_head_and_batch()
    out = head(hidden, {"labels": torch.full_like(labels, IGNORE_INDEX)})
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    out["loss"].backward()
    for tensor in [hidden, embeddings.weight, head.bias, head.dense.weight]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and not tensor.grad.any()


@pytest.mark.parametrize("mode", ["bf16_params", "autocast"])
def test_mlm_head_in_bf16(mode):
    head, embeddings, hidden, labels = mlm_head_and_batch()
    reference = head(hidden, {"labels": labels})["loss"].item()
    if mode == "bf16_params":
        head.to(torch.bfloat16)
        embeddings.to(torch.bfloat16)
        loss = head(hidden.detach().bfloat16().requires_grad_(), {"labels": labels})["loss"]
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head(hidden, {"labels": labels})["loss"]
    assert torch.isfinite(loss) and loss.dim() == 0
    assert abs(loss.item() - reference) < 0.05 * reference
    loss.backward()
    assert torch.isfinite(embeddings.weight.grad.float()).all()


@pytest.mark.parametrize("name", ["atd", "dtd"])
def test_token_detection_head_loss(name):
    torch.manual_seed(80)
    config = tiny_config()
    head = build_objective(name, SPECIAL).build_head(config, nn.Embedding(config.vocab_size, config.hidden_size))
    head.eval()  # no dropout: compare with a direct computation
    ids, mask = make_batch(torch.Generator().manual_seed(81), 4, 16)
    labels = corrupt(name, ids, mask, 0.3)["labels"]
    hidden = torch.randn(4, 16, config.hidden_size)
    out = head(hidden, {"labels": labels})
    logits = head.classifier(hidden)
    expected = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out["loss"], expected)
    valid = labels != IGNORE_INDEX
    torch.testing.assert_close(out["accuracy"], (logits.argmax(-1)[valid] == labels[valid]).float().mean())
    empty = head(hidden.requires_grad_(), {"labels": torch.full_like(labels, IGNORE_INDEX)})["loss"]
    assert empty.item() == 0.0 and empty.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(head(hidden, {"labels": labels})["loss"])
    head.to(torch.bfloat16)
    assert torch.isfinite(head(hidden.bfloat16(), {"labels": labels})["loss"])


def direct_infonce(pooled, temperature=TEMPERATURE):
    """InfoNCE written out view by view: partner positive, every other view negative, self excluded."""
    n = pooled.shape[0]
    losses = []
    for i in range(n):
        sims = torch.stack([F.cosine_similarity(pooled[i], pooled[j], dim=0) / temperature
                            for j in range(n) if j != i])
        partner = (i ^ 1) - (1 if (i ^ 1) > i else 0)  # index of the partner once i is left out
        losses.append(-(sims[partner] - torch.logsumexp(sims, dim=0)))
    return torch.stack(losses).mean()


def test_cse_loss_equals_direct_computation():
    torch.manual_seed(90)
    config = tiny_config()
    head = build_objective("cse", SPECIAL).build_head(config, nn.Embedding(config.vocab_size, config.hidden_size))
    ids, mask = make_batch(torch.Generator().manual_seed(91), 3, 8)
    batch = corrupt("cse", ids, mask)
    hidden = torch.randn(6, 8, config.hidden_size)
    hidden[1::2] = hidden[0::2] + 0.1 * torch.randn(3, 8, config.hidden_size)  # views of the same row are close
    out = head(hidden, batch)
    pooled = torch.tanh(head.dense(hidden[:, 0]))
    torch.testing.assert_close(out["loss"], direct_infonce(pooled))
    assert out["accuracy"].item() == 1.0  # each view's nearest neighbour is its partner here
    # bf16: finite and close.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = head(hidden, batch)["loss"]
    head.to(torch.bfloat16)
    bf16 = head(hidden.bfloat16(), batch)["loss"]
    for loss in (auto, bf16):
        assert torch.isfinite(loss)
        assert abs(loss.item() - out["loss"].item()) < 0.1 * out["loss"].item() + 0.05
    with pytest.raises(ValueError, match="partner index"):
        head(hidden.bfloat16(), {"labels": batch["labels"][:4]})


def test_cse_needs_two_input_rows():
    """One row leaves the partner as the only candidate: loss 0 and no gradient, so it is refused."""
    config = tiny_config()
    head = build_objective("cse", SPECIAL).build_head(config, nn.Embedding(config.vocab_size, config.hidden_size))
    ids, mask = make_batch(torch.Generator().manual_seed(92), 1, 8)
    with pytest.raises(ValueError, match="at least 4 views"):
        head(torch.randn(2, 8, config.hidden_size), corrupt("cse", ids, mask))


def test_cse_meta_forward_keeps_dropout_on_its_own_random_stream():
    from mometas_ds.train.meta_validation import MetaValidation
    from mometas_ds.model import MultiObjectiveBert

    torch.manual_seed(93)
    model = MultiObjectiveBert.from_config(tiny_config(), {"cse": build_objective("cse", SPECIAL)}).eval()
    ids, mask = make_batch(torch.Generator().manual_seed(94), 4, 10)
    batch = corrupt("cse", ids, mask)
    meta = MetaValidation(model, {"cse": build_objective("cse", SPECIAL)}, meta_rows={}, corrupt=None,
                          device=torch.device("cpu"), seed=0, meta_batch_size=4, micro_batch=4)
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        first = meta.forward_with_dropout(batch, "cse", seed=5)
        again = meta.forward_with_dropout(batch, "cse", seed=5)
        other_seed = meta.forward_with_dropout(batch, "cse", seed=6)
        eval_loss = model(batch, "cse")["loss"]
    assert torch.equal(torch.get_rng_state(), rng_before), "training's random stream moved"
    assert not model.training, "the model goes back to eval mode"
    assert first.item() == again.item()
    assert first.item() != other_seed.item() and first.item() != eval_loss.item()


def test_meta_chunks_never_leave_a_chunk_below_the_objective_minimum():
    from mometas_ds.train.meta_validation import meta_chunks

    rows = torch.arange(7)
    assert [c.tolist() for c in meta_chunks(rows, 3, 2)] == [[0, 1, 2], [3, 4, 5, 6]]
    assert [c.tolist() for c in meta_chunks(rows, 3, 1)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [c.tolist() for c in meta_chunks(torch.arange(1), 3, 2)] == [[0]]
    assert [c.tolist() for c in meta_chunks(torch.arange(6), 3, 2)] == [[0, 1, 2], [3, 4, 5]]
