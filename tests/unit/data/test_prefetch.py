"""--prefetch_batches: batches read ahead in a thread are the plain iterator's batches, and its position is
the consumed one (so a checkpoint resumes exactly)."""
import gc
import json
import threading
import time

import datasets
import pytest
import torch

from mometas_ds.config import DataError
from mometas_ds.config.cli import build_arg_parser, parse_args
from mometas_ds.data import PrefetchedBatches, ShardedBatches, prefetched


def numbered_dataset(num_rows, seq_len=4):
    """Row i holds i + j at position j, so a batch names its rows and no two columns are alike."""
    return datasets.Dataset.from_dict({
        "input_ids": [[i + j for j in range(seq_len)] for i in range(num_rows)],
        "attention_mask": [[1] * (seq_len - i % 2) + [0] * (i % 2) for i in range(num_rows)],
    })


DATASET = numbered_dataset(30)  # 3 global batches of 2 x 4 per epoch: the runs below cross epochs


def shard(rank=1):
    return ShardedBatches(DATASET, batch_size=4, rank=rank, world_size=2, seed=11)


def assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys() == {"input_ids", "attention_mask"}
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name])


def take(it, n):
    return [next(it) for _ in range(n)]


def wait_for_read_ahead(pf: PrefetchedBatches):
    """Until the thread has read past what was consumed (else a test of the position would prove nothing)."""
    deadline = time.monotonic() + 10
    while pf.batches.state_dict() == pf.state_dict():
        assert time.monotonic() < deadline, "the prefetch thread read nothing ahead"
        time.sleep(0.01)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "mometas-prefetch"]


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("rank", [0, 1])
def test_prefetched_batches_are_the_plain_batches(depth, rank):
    expected = take(shard(rank), 40)
    pf = PrefetchedBatches(shard(rank), depth)
    try:
        assert_same(take(pf, 40), expected)
        assert pf.running
    finally:
        pf.close()
    assert not pf.running


def test_state_dict_is_the_consumed_position_and_resumes_exactly():
    plain = shard()
    expected = take(plain, 25)
    pf = PrefetchedBatches(shard(), depth=3)
    got = take(pf, 7)
    wait_for_read_ahead(pf)
    reference = shard()
    take(reference, 7)
    state = json.loads(json.dumps(pf.state_dict()))  # as a checkpoint stores it
    assert state == reference.state_dict()
    assert pf.batches.state_dict() != state  # the thread is ahead of it

    # A resumed run, prefetching or not, continues at batch 8.
    resumed = PrefetchedBatches(shard(), depth=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    plain_resumed = shard()
    plain_resumed.load_state_dict(state)
    assert_same(got + take(resumed, 18), expected)
    assert_same(take(plain_resumed, 18), expected[7:])
    # The original goes on too, undisturbed by the state_dict call.
    assert_same(take(pf, 18), expected[7:])
    for it in (pf, resumed):
        it.close()


def test_load_state_dict_on_a_running_prefetcher_drops_the_read_ahead():
    expected = take(shard(), 20)
    pf = PrefetchedBatches(shard(), depth=4)
    take(pf, 12)
    wait_for_read_ahead(pf)
    rewind = shard()
    take(rewind, 5)
    pf.load_state_dict(rewind.state_dict())
    assert not pf.running  # stopped; the next batch starts it again from the loaded position
    assert_same(take(pf, 15), expected[5:])
    pf.close()


def test_close_ends_the_thread_and_keeps_the_position():
    expected = take(shard(), 16)
    before = len(prefetch_threads())
    pf = PrefetchedBatches(shard(), depth=3)
    got = take(pf, 4)
    wait_for_read_ahead(pf)
    assert len(prefetch_threads()) == before + 1
    pf.close()
    assert not pf.running and len(prefetch_threads()) == before
    assert pf.batches.state_dict() == pf.state_dict()  # the read-ahead batches are given back, not lost
    got += take(pf, 12)  # starts a new thread at batch 5
    assert_same(got, expected)
    pf.close()
    pf.close()  # twice is fine
    assert len(prefetch_threads()) == before


def test_a_dropped_prefetcher_ends_its_thread():
    before = len(prefetch_threads())
    pf = PrefetchedBatches(shard(), depth=2)
    next(pf)
    thread = prefetch_threads()[-1]
    del pf
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive() and len(prefetch_threads()) == before


class Failing:
    """A resumable iterator whose read fails at one position (an unreadable shard) or that ends."""

    def __init__(self, fail_at=None, end_at=None):
        self.position, self.fail_at, self.end_at = 0, fail_at, end_at

    def __next__(self):
        if self.position == self.fail_at:
            raise DataError(f"row block {self.position}: cannot read")
        if self.position == self.end_at:
            raise StopIteration
        self.position += 1
        return {"input_ids": torch.full((2, 3), self.position - 1)}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_a_read_error_reaches_the_consumer_after_the_batches_before_it():
    pf = PrefetchedBatches(Failing(fail_at=3), depth=2)
    assert [int(next(pf)["input_ids"][0, 0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="row block 3"):
        next(pf)
    assert not pf.running and pf.state_dict() == {"position": 3}
    pf.batches.fail_at = None  # the shard is readable again: it goes on from there
    assert int(next(pf)["input_ids"][0, 0]) == 3
    pf.close()


def test_a_finite_iterator_ends_with_stop_iteration():
    pf = PrefetchedBatches(Failing(end_at=4), depth=3)
    assert [int(b["input_ids"][0, 0]) for b in pf] == [0, 1, 2, 3]
    assert not pf.running


def test_prefetched_is_off_for_zero_and_checks_the_depth():
    plain = shard()
    assert prefetched(plain, 0) is plain
    pf = prefetched(plain, 2, torch.device("cpu"))
    assert isinstance(pf, PrefetchedBatches) and pf.pin_device is None  # pinning is for a CUDA device only
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="prefetch_batches"):
            prefetched(plain, bad)
    with pytest.raises(ValueError, match="depth"):
        PrefetchedBatches(plain, 0)


def test_the_flag(capsys):
    base = ["--deepspeed_config", "ds.json", "--train_files", "corpus.jsonl"]
    assert parse_args(base).prefetch_batches == 2
    assert parse_args(base + ["--prefetch_batches", "0"]).prefetch_batches == 0
    with pytest.raises(SystemExit) as exit_info:
        parse_args(base + ["--prefetch_batches", "-1"])
    assert exit_info.value.code == 2
    assert "mometas-pretrain: error: argument --prefetch_batches: must be >= 0, got -1" in capsys.readouterr().err
    assert "0 = read each one when the step needs it" in " ".join(build_arg_parser().format_help().split())
