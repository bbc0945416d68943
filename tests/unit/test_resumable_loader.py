"""ResumableLoader: a loader resumed in the middle of an epoch continues its draws instead of replaying them."""

from __future__ import annotations

from torch.utils.data import DistributedSampler

from qasa_vqa.data.datamodules import CyclingSampler, ResumableLoader


def _loader(sampler_kind: str) -> ResumableLoader:
    data = list(range(20))
    if sampler_kind == "cycling":
        sampler = CyclingSampler(20, 12, seed=2, batch_size=3)
    else:
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=2, drop_last=True)
    return ResumableLoader(data, sampler=sampler, batch_size=3, drop_last=True)


def test_resume_continues_the_epoch() -> None:
    for kind in ("cycling", "distributed"):
        first = _loader(kind)
        first.sampler.set_epoch(3)
        iterator = iter(first)
        seen = [next(iterator).tolist() for _ in range(2)]
        state = first.state_dict()
        assert state == {"served": 2}
        rest = [batch.tolist() for batch in iterator]

        resumed = _loader(kind)  # a new process: same sampler, the saved state
        resumed.load_state_dict(state)
        resumed.sampler.set_epoch(3)
        continued = [batch.tolist() for batch in resumed]
        assert continued == rest and len(seen) + len(continued) == len(first)
        assert resumed.state_dict() == {"served": len(first)}
        again = [batch.tolist() for batch in resumed]  # the skip applies to one pass only
        assert again == seen + rest
