"""CyclingSampler: the unlabelled stream that continues across epochs (docs/method.md section 4.8); the
unpadded EvaluationSampler that splits an evaluation set over ranks (section 4.11)."""

from __future__ import annotations

import numpy as np
import pytest

from qasa_vqa.data.datamodules import CyclingSampler, EvaluationSampler


def _epoch(sampler: CyclingSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_pass_is_a_permutation_and_epochs_continue_the_stream() -> None:
    sampler = CyclingSampler(10, 4, seed=1)
    stream = [index for epoch in range(5) for index in _epoch(sampler, epoch)]  # 20 draws = 2 passes
    assert len(stream) == 20 and len(sampler) == 4
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # each pass is reshuffled


def test_the_stream_is_a_function_of_seed_and_epoch_only() -> None:
    a, b = CyclingSampler(7, 3, seed=4), CyclingSampler(7, 3, seed=4)
    assert _epoch(a, 5) == _epoch(b, 5)  # resuming at epoch 5 needs no history
    assert _epoch(a, 0) != _epoch(CyclingSampler(7, 3, seed=5), 0)


def test_replicas_split_each_epoch_without_overlap() -> None:
    ranks = [CyclingSampler(12, 3, num_replicas=2, rank=r, seed=0) for r in range(2)]
    for epoch in range(4):
        parts = [_epoch(sampler, epoch) for sampler in ranks]
        assert all(len(part) == 3 for part in parts)
        assert not set(parts[0]) & set(parts[1])
    single = CyclingSampler(12, 6, seed=0)
    both = [_epoch(sampler, 1) for sampler in ranks]
    assert sorted(both[0] + both[1]) == sorted(_epoch(single, 1))


def test_more_draws_than_items_wraps_into_the_next_pass() -> None:
    sampler = CyclingSampler(3, 7, seed=2)
    first = _epoch(sampler, 0)
    assert len(first) == 7 and sorted(first[:3]) == [0, 1, 2] and sorted(first[3:6]) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one item"):
        CyclingSampler(0, 3)


def test_no_batch_spans_two_passes() -> None:
    """10 items in batches of 4: each pass gives 2 whole batches (its last 2 items are dropped), as the
    authors' cyclic iterator over a drop_last loader does."""
    sampler = CyclingSampler(10, 8, seed=3, batch_size=4)
    stream = [index for epoch in range(3) for index in _epoch(sampler, epoch)]
    batches = [stream[i : i + 4] for i in range(0, len(stream), 4)]
    assert all(len(set(batch)) == 4 for batch in batches)  # never a video twice in a batch
    for p in range(3):  # pass p = the first 8 items of its permutation, as two batches
        order = np.random.default_rng([3, p]).permutation(10)[:8].tolist()
        assert batches[2 * p] + batches[2 * p + 1] == order
    ranks = [CyclingSampler(10, 4, num_replicas=2, rank=r, seed=3, batch_size=2) for r in range(2)]
    parts = [_epoch(sampler, 0) for sampler in ranks]
    assert not set(parts[0]) & set(parts[1]) and all(len(part) == 4 for part in parts)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        CyclingSampler(3, 4, batch_size=4)


@pytest.mark.parametrize(("size", "world"), [(5, 2), (7, 3), (1, 2), (0, 2), (4, 1)])
def test_evaluation_sampler_gives_every_item_once_without_padding(size: int, world: int) -> None:
    shares = [list(EvaluationSampler(size, num_replicas=world, rank=rank)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(size))  # once each, none repeated
    assert [len(EvaluationSampler(size, num_replicas=world, rank=r)) for r in range(world)] == [
        len(share) for share in shares
    ]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_evaluation_sampler_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        EvaluationSampler(4, num_replicas=2, rank=2)
