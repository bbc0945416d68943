"""CyclingSampler: the unlabelled stream that continues across epochs (METHOD.md section 4.8)."""

from __future__ import annotations

import pytest

from qasa_vqa.data.datamodules import CyclingSampler


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
