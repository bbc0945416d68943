"""Version retrieval: does a representation tell the distortion versions of a scene apart?

For each scene of a distortion tree, both temporal views of every version are embedded as token sets;
a clip of view 1 "retrieves" the version of view 2 whose Gaussian (mean, covariance of its tokens) is
nearest by ST-VQRL's distance (docs/method.md section 2.3), and the other way round. The accuracy is the
fraction of clips whose nearest clip is their own version: chance is 1/K for K versions. Pretraining
prints it before and after training on the same fixed draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from qasa_vqa.losses import gaussian_distance_matrix, gaussian_fit

__all__ = ["version_retrieval_accuracy"]


@torch.no_grad()
def version_retrieval_accuracy(
    embed: Callable[[Tensor], Tensor], batches: Iterable[dict[str, Tensor]], *, ridge: float = 1e-4
) -> float:
    """Mean top-1 version retrieval accuracy over ``batches`` of ``view1`` / ``view2`` ``[B,K,3,T,H,W]``.

    ``embed`` maps clips ``[M,3,T,H,W]`` to token sets ``[M,N,C]``.
    """
    hits, total = 0.0, 0
    for batch in batches:
        view1, view2 = batch["view1"], batch["view2"]
        scenes, versions = view1.shape[:2]
        own = torch.arange(versions)
        fits = []
        for view in (view1, view2):
            tokens = embed(view.flatten(0, 1)).double()
            fits.append(gaussian_fit(tokens.view(scenes, versions, *tokens.shape[1:])))
        distance = gaussian_distance_matrix(*fits[0], *fits[1], ridge=ridge).cpu()  # [B, K, K]
        hits += float((distance.argmin(dim=-1) == own).sum() + (distance.argmin(dim=-2) == own).sum())
        total += 2 * scenes * versions
    if total == 0:
        raise ValueError("no batches to measure version retrieval on")
    return hits / total
