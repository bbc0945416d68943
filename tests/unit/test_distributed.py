"""``qasa_vqa.distributed`` in a real two-process gloo group: gathering with gradients, rank means, and the
transfer mask made one decision when each rank computes its losses on its own videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qasa_vqa.distributed import gather_with_grad, is_distributed, mean_across_ranks, rank_and_world
from qasa_vqa.losses import plcc_loss, unlabelled_losses

# rank 0 holds 3 videos, rank 1 holds 2: sizes may differ
X = [torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0.7, 0.2])]
Y = [torch.tensor([0.2, 1.0, 0.3]), torch.tensor([0.5, 0.1])]
# unlabelled scores: on rank 0 the primary is the less consistent model (local mask 1), on rank 1 the
# auxiliary is (local mask 0); over both ranks the primary is less consistent on average
A_L = [torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])]
B_L = [torch.tensor([3.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 3.1])]
A_H = [torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])]
B_H = [torch.tensor([0.0, 1.0, 2.0, 3.2]), torch.tensor([1.0, 0.0, 3.0, 2.0])]


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result: dict = {"rank_and_world": list(rank_and_world()), "distributed": is_distributed()}
        # a shared parameter w (as DDP keeps it) scoring this rank's videos: predictions w * x
        w = torch.tensor(1.5, requires_grad=True)
        gathered = gather_with_grad(w * X[rank])
        result["gathered"] = gathered.tolist()
        loss = plcc_loss(torch.tanh(gathered), gather_with_grad(Y[rank]))
        loss.backward()
        grad = w.grad.clone()
        dist.all_reduce(grad)
        result["loss"] = loss.item()
        result["ddp_grad"] = (grad / 2).item()  # DDP's mean over ranks
        result["mean"] = mean_across_ranks(torch.tensor(float(rank + 1))).item()
        a_l, b_l, a_h, b_h = (t[rank] for t in (A_L, B_L, A_H, B_H))
        local = unlabelled_losses(a_l, b_l, a_h, b_h)
        reduced = unlabelled_losses(a_l, b_l, a_h, b_h, reduce_errors=mean_across_ranks)
        result["local_mask"] = local["mask"].item()
        result["local_eps"] = [local["eps_l"].item(), local["eps_h"].item()]
        result["reduced_mask"] = reduced["mask"].item()
        result["reduced_eps"] = [reduced["eps_l"].item(), reduced["eps_h"].item()]
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_collectives_in_a_two_process_gloo_group(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    # the reference: one process holding both ranks' videos
    w = torch.tensor(1.5, requires_grad=True)
    x, y = torch.cat(X), torch.cat(Y)
    loss = plcc_loss(torch.tanh(w * x), y)
    loss.backward()
    for rank, result in enumerate(results):
        assert result["rank_and_world"] == [rank, 2] and result["distributed"]
        assert result["gathered"] == (1.5 * x).tolist()  # rank order, unequal sizes, no padding left
        assert abs(result["loss"] - loss.item()) < 1e-6
        assert abs(result["ddp_grad"] - w.grad.item()) < 1e-6 * max(1.0, abs(w.grad.item()))
        assert result["mean"] == 1.5
    assert abs(w.grad.item()) > 1e-3  # the check compares a real gradient
    # per-rank errors disagree about the direction of transfer; reduced, every rank decides the same
    assert results[0]["local_mask"] == 1.0 and results[1]["local_mask"] == 0.0
    eps_l = (results[0]["local_eps"][0] + results[1]["local_eps"][0]) / 2
    eps_h = (results[0]["local_eps"][1] + results[1]["local_eps"][1]) / 2
    for result in results:
        assert result["reduced_eps"] == [pytest.approx(eps_l, rel=1e-6), pytest.approx(eps_h, rel=1e-6)]
        assert result["reduced_mask"] == float(eps_l > eps_h)


def test_single_process_helpers_are_the_identity() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    assert gather_with_grad(x) is x
    assert torch.equal(mean_across_ranks(x), x.detach())
    assert rank_and_world() == (0, 1) and not is_distributed()
