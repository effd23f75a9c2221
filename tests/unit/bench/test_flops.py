"""The FLOP counter against hand counts."""
from types import SimpleNamespace

import pytest

from mometas_ds.bench.flops import encoder_forward_flops, mfu, peak_flops, pretrain_step_flops, vocab_head_forward_flops


def test_encoder_layer_by_hand():
    # s=3, h=2, f=4: projections 8*3*2*2 = 96, feed-forward 4*3*2*4 = 96, attention 4*3*3*2 = 72.
    assert encoder_forward_flops(num_layers=1, hidden=2, intermediate=4, seq_len=3) == 264
    assert encoder_forward_flops(num_layers=5, hidden=2, intermediate=4, seq_len=3) == 5 * 264


def test_vocab_head_by_hand():
    # 2 rows x (2*2*2 + 2*2*10) = 2 x 48
    assert vocab_head_forward_flops(hidden=2, vocab_size=10, rows=2) == 96


def test_step_is_three_forwards_over_the_batch():
    cfg = SimpleNamespace(num_hidden_layers=1, hidden_size=2, intermediate_size=4, vocab_size=10)
    # forward per sequence: 264 + 0.5 * 3 rows * 48 = 336; x3 for backward; x4 sequences
    assert pretrain_step_flops(cfg, seq_len=3, sequences=4, predicted_fraction=0.5) == pytest.approx(3 * 336 * 4)


def test_bert_base_matches_the_published_order_of_magnitude():
    # BERT-base at seq 256 with 15% mlm rows: about 560 MFLOPs per token for forward + backward
    # (6 x 85M encoder parameters, attention scores, the vocabulary head).
    cfg = SimpleNamespace(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=30522)
    per_token = pretrain_step_flops(cfg, seq_len=256, sequences=1) / 256
    assert 540e6 < per_token < 580e6


def test_peak_and_mfu():
    assert peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("NVIDIA H200") == 989.4e12
    assert peak_flops("cpu") is None
    assert mfu(500e12, 1.0, 1000e12) == pytest.approx(0.5)
    assert mfu(1.0, 1.0, None) is None
