"""Objectives on packed rows, [cls] doc [sep] doc [sep] ... [sep], and on one-document rows padded with [pad]
(issue 19): no special token is corrupted wherever it sits, the corruption rates stay as specified, and rows
without an inner special give exactly what they gave before."""
import math

import pytest
import torch

from mometas_ds.objectives import IGNORE_INDEX, SpecialTokens, build_objective
from mometas_ds.objectives.base import rand, real_token_mask
from tests.unit.objectives.test_whole_word_mask import todays_gmlm, todays_mlm

# Special ids in the middle of the vocabulary; ids 250..399 are "##" continuation pieces; 1 is unk (reserved:
# never drawn at random, but an ordinary token to corrupt, as before).
CONT_IDS = tuple(range(250, 400))
SPECIAL = SpecialTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, vocab_size=400, reserved_ids=(1,),
                        continuation_ids=CONT_IDS)
SPECIAL_IDS = torch.tensor(SPECIAL.ids)
ORDINARY = [i for i in range(SPECIAL.vocab_size) if i not in SPECIAL.ids]
FIRST_PIECES = [i for i in ORDINARY if i < 250]


def is_special(ids):
    return torch.isin(ids, SPECIAL_IDS)


def within(observed, expected, n, sigmas=5.0):
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-9


def packed_batch(gen, batch, seq_len, doc_len=(1, 12), fill=None, inner=True, distinct=False, cont_rate=0.3):
    """Rows alternating between packed ([cls] d1 [sep] d2 [sep] ... [sep], up to ``fill`` positions, then pad;
    with ``inner`` False a single document) and one document per row padded with [pad]. Documents are random
    first pieces and "##" pieces (so some rows have a continuation piece right after an inner sep) and,
    now and then, an unk or an empty document. ``distinct``: every id of a row occurs once (for tracing)."""
    fill = seq_len if fill is None else fill
    rows, masks = [], []
    for b in range(batch):
        pool = torch.randperm(len(ORDINARY), generator=gen).tolist() if distinct else None
        row = [SPECIAL.cls_id]
        limit = fill if b % 2 == 0 else int(torch.randint(2, fill + 1, (1,), generator=gen))
        while len(row) < limit:
            n = int(torch.randint(doc_len[0], doc_len[1] + 1, (1,), generator=gen))
            if inner and float(torch.rand(1, generator=gen)) < 0.05:
                n = 0  # an empty document: [sep] [sep]
            n = min(n, limit - len(row) - 1)
            for _ in range(n):
                if distinct:
                    token = ORDINARY[pool.pop()]
                elif float(torch.rand(1, generator=gen)) < cont_rate:
                    token = CONT_IDS[int(torch.randint(0, len(CONT_IDS), (1,), generator=gen))]
                elif float(torch.rand(1, generator=gen)) < 0.02:
                    token = 1  # unk
                else:
                    token = FIRST_PIECES[int(torch.randint(0, len(FIRST_PIECES), (1,), generator=gen))]
                row.append(token)
            row.append(SPECIAL.sep_id)
            if not inner or b % 2:
                break  # a one-document row
        masks.append([1] * len(row) + [0] * (seq_len - len(row)))
        rows.append(row + [SPECIAL.pad_id] * (seq_len - len(row)))
    return torch.tensor(rows), torch.tensor(masks)


def cases(seed, count, inner=True, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    for case in range(count):
        seq_len = int(torch.randint(8, 80, (1,), generator=gen))
        yield packed_batch(gen, 6, seq_len, inner=inner, **kwargs)


def corrupt(name, ids, mask, p=None, seed=0, **kwargs):
    options = {k: kwargs.pop(k) for k in ("whole_word_mask",) if k in kwargs}
    if p is not None:
        options["noise_probability"] = p
    return build_objective(name, SPECIAL, **options).corrupt(ids, mask, generator=torch.Generator().manual_seed(seed),
                                                              **kwargs)


def words_of(ids, mask):
    """Per row, the words as lists of positions, by a loop: a piece and the "##" pieces right after it, never
    across a special token."""
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


def test_batches_have_inner_separators_and_padded_rows():
    ids, mask = packed_batch(torch.Generator().manual_seed(0), 8, 64)
    seps = (ids == SPECIAL.sep_id).sum(dim=1)
    assert (seps[0::2] >= 3).all() and (seps[1::2] == 1).all() and (mask[1::2] == 0).any()
    after_sep = torch.zeros_like(ids, dtype=torch.bool)
    after_sep[:, 1:] = ids[:, :-1] == SPECIAL.sep_id
    assert torch.isin(ids[after_sep], torch.tensor(CONT_IDS)).any()  # a "##" piece right after an inner sep


# --- mlm and gmlm ----------------------------------------------------------------------------------

def check_masked(ids, mask, out):
    """Labels only on real ordinary tokens (their originals); specials and unchosen tokens unchanged."""
    chosen = out["labels"] != IGNORE_INDEX
    assert torch.equal(out["attention_mask"], mask)
    assert not (chosen & ~real_token_mask(ids, mask, SPECIAL)).any(), "a special or padding token was chosen"
    assert torch.equal(out["labels"][chosen], ids[chosen])
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    assert not is_special(out["input_ids"][chosen & (out["input_ids"] != SPECIAL.mask_id)]).any()
    return chosen


def chosen_per_word(words, chosen):
    n_chosen = n_words = 0
    for b, row in enumerate(words):
        for word in row:
            flags = {bool(chosen[b, j]) for j in word}
            assert len(flags) == 1, f"row {b}: word {word} chosen in part"
            n_chosen += flags.pop()
            n_words += 1
    return n_chosen, n_words


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_mlm_never_chooses_a_special_and_keeps_its_rates(whole_word_mask):
    chosen_total = candidates_total = masked = words_chosen = words_total = 0
    for seed, (ids, mask) in enumerate(cases(1, 80)):
        out = corrupt("mlm", ids, mask, seed=seed, whole_word_mask=whole_word_mask)
        chosen = check_masked(ids, mask, out)
        chosen_total += int(chosen.sum())
        candidates_total += int(real_token_mask(ids, mask, SPECIAL).sum())
        masked += int((out["input_ids"][chosen] == SPECIAL.mask_id).sum())
        if whole_word_mask:
            n, m = chosen_per_word(words_of(ids, mask), chosen)
            words_chosen, words_total = words_chosen + n, words_total + m
    assert candidates_total > 5000
    if whole_word_mask:
        assert within(words_chosen / words_total, 0.15, words_total)
    else:
        assert within(chosen_total / candidates_total, 0.15, candidates_total)
    assert within(masked / chosen_total, 0.8, chosen_total)


def test_mlm_is_unchanged_on_packed_rows():
    for seed, (ids, mask) in enumerate(cases(2, 10)):
        out = corrupt("mlm", ids, mask, seed=seed)
        reference = todays_mlm(SPECIAL, 0.15, ids, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out["input_ids"], reference["input_ids"]) and torch.equal(out["labels"], reference["labels"])


def span_oracle(ids, mask, seed, whole_word_mask, start=0.12, max_len=5):
    """gmlm's built-in guide by a loop, from the same draws: j is covered when a span starts at or before j in
    its document (no special token in between) and reaches past it (counted in words with whole_word_mask)."""
    batch, seq_len = ids.shape
    gen = torch.Generator().manual_seed(seed)
    starts = rand((batch, seq_len), gen, "cpu") < start
    lengths = ((rand((batch, seq_len), gen, "cpu") * max_len).long().clamp_(max=max_len - 1) + 1).tolist()
    candidates = real_token_mask(ids, mask, SPECIAL).tolist()
    cont = set(CONT_IDS)
    guide = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(batch):
        index, count, first = [], 0, 0  # word (or piece) index of every position
        for j in range(seq_len):
            word_start = candidates[b][j] and not (whole_word_mask and ids[b, j].item() in cont
                                                   and j > 0 and candidates[b][j - 1])
            count += word_start
            index.append(count)
        for j in range(seq_len):
            if not candidates[b][j]:
                first = j + 1
                continue
            for i in range(first, j + 1):
                is_start = bool(starts[b, i]) and (not whole_word_mask or index[i] != (index[i - 1] if i else 0))
                if is_start and index[i] + lengths[b][i] > index[j]:
                    guide[b, j] = True
    return guide


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_gmlm_spans_stop_at_every_special_token(whole_word_mask):
    crossed = 0
    for seed, (ids, mask) in enumerate(cases(3, 12)):
        out = corrupt("gmlm", ids, mask, 1.0, seed=seed, whole_word_mask=whole_word_mask)  # p = 1: the guide
        guided = check_masked(ids, mask, out)
        assert torch.equal(guided, span_oracle(ids, mask, seed, whole_word_mask))
        if whole_word_mask:
            chosen_per_word(words_of(ids, mask), guided)
        else:  # the code before issue 19 let a span run on into the next document
            before = todays_gmlm(SPECIAL, 1.0, ids, mask, torch.Generator().manual_seed(seed))["labels"]
            crossed += int(((before != IGNORE_INDEX) & ~guided).sum())
    assert whole_word_mask or crossed > 0


def test_gmlm_rates_on_packed_rows():
    gen = torch.Generator().manual_seed(4)
    ids, mask = packed_batch(gen, 64, 256, doc_len=(40, 80))
    candidates = int(real_token_mask(ids, mask, SPECIAL).sum())
    coverage = int((corrupt("gmlm", ids, mask, 1.0, seed=5)["labels"] != IGNORE_INDEX).sum()) / candidates
    assert 0.2 < coverage < 0.4, coverage  # about 30% of the tokens, a little less at document ends
    out = corrupt("gmlm", ids, mask, seed=6)
    predicted = int(check_masked(ids, mask, out).sum())
    assert 0.1 < predicted / candidates < 0.2
    # A passed guide: each guided ordinary token chosen with p = 0.5, never a special one the guide marks.
    guide = torch.rand(ids.shape, generator=gen) < 0.5
    chosen = check_masked(ids, mask, corrupt("gmlm", ids, mask, seed=7, guide_mask=guide))
    allowed = guide & real_token_mask(ids, mask, SPECIAL)
    assert not (chosen & ~allowed).any()
    assert within(int(chosen.sum()) / int(allowed.sum()), 0.5, int(allowed.sum()))


def test_gmlm_without_inner_specials_is_todays_output_bit_for_bit():
    gen = torch.Generator().manual_seed(8)
    for seed, (ids, mask) in enumerate(cases(9, 16, inner=False)):
        assert (is_special(ids) & mask.bool()).sum() == 2 * ids.shape[0]  # only cls and the closing sep
        guide = torch.rand(ids.shape, generator=gen) < 0.3
        for guide_mask in (None, guide):
            out = corrupt("gmlm", ids, mask, seed=seed, guide_mask=guide_mask)
            ref = todays_gmlm(SPECIAL, 0.5, ids, mask, torch.Generator().manual_seed(seed), guide_mask)
            assert torch.equal(out["input_ids"], ref["input_ids"]) and torch.equal(out["labels"], ref["labels"])


# --- atd -------------------------------------------------------------------------------------------

def todays_atd(ids, mask, p, seed):
    """atd's corruption before issue 19 (a copy of its code then): the reference for rows without inner seps."""
    gen = torch.Generator().manual_seed(seed)
    batch, seq_len = ids.shape
    real = mask.bool()
    insert_before = real_token_mask(ids, mask, SPECIAL) & (rand((batch, seq_len), gen, "cpu") < p)
    inserted_ids = SPECIAL.random_ordinary_ids((batch, seq_len), gen, "cpu")
    positions = torch.arange(seq_len).expand(batch, seq_len)
    original_dest = positions + insert_before.long().cumsum(dim=1)
    dest = torch.cat([original_dest, torch.where(insert_before, original_dest - 1, 2 * seq_len)], dim=1)
    codes_src = torch.cat([real.long(), torch.full_like(ids, 2)], dim=1)
    packed = torch.empty((batch, 2 * seq_len + 1), dtype=torch.long)
    packed.scatter_(1, dest, (torch.cat([ids, inserted_ids], dim=1) << 2) | codes_src)
    packed = packed[:, :seq_len]
    out_ids, codes = packed >> 2, packed & 3
    out_labels = torch.where(codes == 0, IGNORE_INDEX, codes - 1)
    grown_len = real.sum(dim=1) + insert_before.sum(dim=1)
    overflow = grown_len > seq_len
    out_ids[:, -1] = torch.where(overflow, SPECIAL.sep_id, out_ids[:, -1])
    out_labels[:, -1] = torch.where(overflow, 0, out_labels[:, -1])
    out_mask = (positions < grown_len.clamp(max=seq_len)[:, None]).to(mask.dtype)
    return {"input_ids": out_ids, "attention_mask": out_mask, "labels": out_labels}


def check_atd(ids, mask, out):
    """Per row: insertions are ordinary and sit before an original ordinary token (or the closing sep of a
    truncated row); every original token, specials included, keeps its order and label 0; the row ends with sep;
    truncation never closes an empty document. Returns (insertions, candidates) of the rows not truncated."""
    seq_len = ids.shape[1]
    lengths = out["attention_mask"].sum(dim=1)
    assert torch.equal(out["attention_mask"], (torch.arange(seq_len) < lengths[:, None]).long())
    assert torch.equal(out["labels"] == IGNORE_INDEX, out["attention_mask"] == 0)
    inserted_total = candidates_total = 0
    for b in range(ids.shape[0]):
        original = ids[b][mask[b].bool()].tolist()
        new = out["input_ids"][b, :lengths[b]]
        labels = out["labels"][b, :lengths[b]]
        inserted = labels == 1
        assert not is_special(new[inserted]).any()
        assert (labels[is_special(new)] == 0).all(), "a special token is labelled as inserted"
        kept = new[~inserted].tolist()
        assert kept[-1] == SPECIAL.sep_id and kept[:-1] == original[:len(kept) - 1]
        truncated = len(kept) < len(original)
        followers = new[1:][inserted[:-1]]
        assert not is_special(followers[:-1]).any(), "an insertion right before a special token"
        if followers.numel() and is_special(followers[-1]):
            assert truncated and followers[-1] == SPECIAL.sep_id and int(lengths[b]) == seq_len
        if truncated and new.tolist()[-2:] == [SPECIAL.sep_id] * 2:
            assert original[len(kept) - 2:len(kept)] == [SPECIAL.sep_id] * 2, "truncation closed an empty document"
        if truncated and int(lengths[b]) < seq_len:
            assert new.tolist()[-1] == SPECIAL.sep_id and int(lengths[b]) == seq_len - 1
            assert out["input_ids"][b, -1] == SPECIAL.pad_id
        if not truncated:
            inserted_total += int(inserted.sum())
            candidates_total += sum(token not in SPECIAL.ids for token in original)
    return inserted_total, candidates_total


def test_atd_never_inserts_before_a_special_and_keeps_every_one():
    for seed, (ids, mask) in enumerate(cases(10, 40)):
        for p in (0.15, 1.0):
            check_atd(ids, mask, corrupt("atd", ids, mask, p, seed=seed))


def test_atd_insertion_rate_on_packed_rows():
    gen = torch.Generator().manual_seed(11)
    ids, mask = packed_batch(gen, 64, 256, fill=128)  # at most half full: nothing is truncated
    inserted, candidates = check_atd(ids, mask, corrupt("atd", ids, mask, seed=12))
    assert candidates == int(real_token_mask(ids, mask, SPECIAL).sum()) > 3000
    assert within(inserted / candidates, 0.15, candidates)


def test_atd_truncation_at_an_inner_sep_ends_the_row_there():
    a, b = FIRST_PIECES[:2]
    ids = torch.tensor([[SPECIAL.cls_id, a, SPECIAL.sep_id, b, SPECIAL.sep_id]])
    out = corrupt("atd", ids, torch.ones_like(ids), 1.0)
    x = out["input_ids"][0, 1].item()
    # [cls] x a [sep] y b [sep] is cut to five slots: not [cls] x a [sep] [sep], but one pad after the sep.
    assert out["input_ids"][0].tolist() == [SPECIAL.cls_id, x, a, SPECIAL.sep_id, SPECIAL.pad_id]
    assert out["labels"][0].tolist() == [0, 1, 0, 0, IGNORE_INDEX]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 0]
    before = todays_atd(ids, torch.ones_like(ids), 1.0, 0)
    assert before["input_ids"][0, 3:].tolist() == [SPECIAL.sep_id, SPECIAL.sep_id]  # what it was


def test_atd_without_inner_specials_is_todays_output_bit_for_bit():
    for seed, (ids, mask) in enumerate(cases(13, 30, inner=False)):
        for p in (0.15, 0.6, 1.0):
            out, ref = corrupt("atd", ids, mask, p, seed=seed), todays_atd(ids, mask, p, seed)
            for key in ("input_ids", "attention_mask", "labels"):
                assert torch.equal(out[key], ref[key]), key


# --- dtd and cse -----------------------------------------------------------------------------------

def test_dtd_never_deletes_a_special_and_marks_every_gap():
    deleted = candidates = 0
    for seed, (ids, mask) in enumerate(cases(14, 40, distinct=True)):
        out = corrupt("dtd", ids, mask, seed=seed)
        lengths = out["attention_mask"].sum(dim=1)
        assert torch.equal(out["labels"] == IGNORE_INDEX, out["attention_mask"] == 0)
        for b in range(ids.shape[0]):
            original = ids[b][mask[b].bool()].tolist()
            kept = out["input_ids"][b, :lengths[b]].tolist()
            labels = out["labels"][b, :lengths[b]].tolist()
            where = {token: j for j, token in enumerate(original) if token not in SPECIAL.ids}
            source, cursor = [], 0
            for token in kept:  # specials by order (they repeat), the others by their distinct id
                if token in SPECIAL.ids:
                    cursor = original.index(token, cursor)
                    source.append(cursor)
                else:
                    source.append(where[token])
                cursor = source[-1] + 1
            assert source == sorted(set(source))
            gone = set(range(len(original))) - set(source)
            assert all(original[j] not in SPECIAL.ids for j in gone), "a special token was deleted"
            assert labels == [0] + [int(q - p > 1) for p, q in zip(source, source[1:])]
            deleted += len(gone)
            candidates += sum(token not in SPECIAL.ids for token in original)
    assert within(deleted / candidates, 0.15, candidates)


def test_cse_keeps_packed_rows_whole():
    ids, mask = packed_batch(torch.Generator().manual_seed(15), 6, 40)
    out = corrupt("cse", ids, mask)
    assert torch.equal(out["input_ids"], ids.repeat_interleave(2, dim=0))
    assert torch.equal(out["attention_mask"], mask.repeat_interleave(2, dim=0))
