"""Video Swin-T with FAST-VQA's gated fragment position bias (GRPB): the ST-VQRL backbone.

docs/method.md sections 1.2-1.4. The network is torchvision's ``SwinTransformer3d`` (same hyper-parameters as
the reference: patch (2,4,4), embed 96, depths (2,2,6,2), heads (3,6,12,24), window (8,7,7), stochastic
depth 0.1, the same relative-position index, window clipping, padding and -100 shift mask); only the
attention of the blocks in stages 0-2 is replaced by :class:`GatedWindowAttention3d`, which adds a
second table ``fragment_position_bias_table`` (B_frag, zeros at init) and the gate of section 1.3:

    A = Q K^T * scale + B_frag + g * (B_rel - B_frag) + shift_mask,   g(p, q) = |dd| + |dh| + |dw|

where (d, h, w) are "fragment coordinates": a (1, 7, 7) integer grid resized (nearest) to the padded
feature map, rolled by -shift with the features and partitioned into the same windows. g is an
integer L1 distance (0..12), not a 0/1 flag; with B_frag == B_rel the block is plain Video Swin.

State-dict names are torchvision's (``features.{2i}.{j}...``) plus the GRPB tables; the official
checkpoints' names (``layers.{i}.blocks.{j}...``) are mapped by :mod:`qasa_vqa.models.checkpoints`.
Deviations from the authors' code: Linear layers get torchvision's initialisation (the reference left
PyTorch's defaults, relevant only when pretraining from scratch); ``train()`` returns the module
(section 8 item 14); gradient checkpointing is an option (the reference always checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.swin_transformer import SwinTransformerBlock
from torchvision.models.video.swin_transformer import (
    ShiftedWindowAttention3d,
    SwinTransformer3d,
    _compute_pad_size_3d,
    _get_window_and_shift_size,
)

__all__ = ["GatedWindowAttention3d", "VideoSwinBackbone", "fragment_gate", "shift_regions", "swin_t_grpb"]


def fragment_gate(
    padded_size: Sequence[int],
    window: Sequence[int],
    shift: Sequence[int],
    fragments: Sequence[int],
    *,
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """The GRPB gate ``g`` per window: ``[num_windows, N, N]`` of ``dtype`` with ``N = prod(window)``.

    ``padded_size`` (D, H, W) is the padded feature map, ``window`` / ``shift`` the (clipped) window and
    shift of the block, ``fragments`` the fragment grid (1, 7, 7). Coordinates are the grid resized to
    the map with nearest neighbour (index ``floor(x * fragments / size)``), rolled by ``-shift``. The
    distances are summed one axis at a time in 8 bits (a 64-frame stage-0 map has 256 windows of 392
    tokens: 39 MB per temporary instead of 0.9 GB for all three axes in int64 at once).
    """
    if max(fragments) > 64:
        raise ValueError(f"fragment grid {list(fragments)}: at most 64 fragments per axis")
    axes = [
        torch.div(torch.arange(size) * count, size, rounding_mode="floor")
        for size, count in zip(padded_size, fragments, strict=True)
    ]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # D, H, W, 3
    if any(shift):
        coords = torch.roll(coords, shifts=[-s for s in shift], dims=(0, 1, 2))
    d, h, w = padded_size
    wd, wh, ww = window
    windows = coords.view(d // wd, wd, h // wh, wh, w // ww, ww, 3).permute(0, 2, 4, 1, 3, 5, 6)
    windows = windows.reshape(-1, wd * wh * ww, 3).to(torch.int8)
    gate = torch.zeros((windows.shape[0], windows.shape[1], windows.shape[1]), dtype=dtype)
    for axis in range(3):
        coordinate = windows[..., axis]
        gate += (coordinate[:, :, None] - coordinate[:, None, :]).abs_().to(dtype)
    return gate


def shift_regions(
    padded_size: Sequence[int], window: Sequence[int], shift: Sequence[int], *, device=None
) -> Tensor:
    """The region label of every token of every window, ``[num_windows, N]``, after a cyclic shift.

    torchvision's shift mask (``_compute_attention_mask_3d``) is ``-100`` between two tokens of a window
    whose labels differ and ``0`` elsewhere; it is built from these labels (the same slices, the same
    counting) a chunk of windows at a time instead of as a whole ``[num_windows, N, N]`` tensor.
    """
    labels = torch.zeros(tuple(padded_size), device=device)
    slices = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    count = 0
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                labels[d[0] : d[1], h[0] : h[1], w[0] : w[1]] = count
                count += 1
    d, h, w = padded_size
    wd, wh, ww = window
    labels = labels.view(d // wd, wd, h // wh, wh, w // ww, ww).permute(0, 2, 4, 1, 3, 5)
    return labels.reshape(-1, wd * wh * ww)


def _chunk_budget(elements: int, device: torch.device) -> int:
    """Elements per chunk of a computation without gradients: ``elements`` on the CPU (cache-sized),
    64 times more on accelerators, whose kernels want more work per launch."""
    return elements if device.type == "cpu" else 64 * elements


class GatedWindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's shifted-window attention plus FAST-VQA's gated fragment bias (module docstring)."""

    def __init__(self, *args, fragments: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fragments = tuple(fragments) if fragments is not None else (1, *self.window_size[1:])
        self.fragment_position_bias_table = nn.Parameter(torch.zeros_like(self.relative_position_bias_table))
        self._gates: dict[tuple, Tensor] = {}

    @classmethod
    def replacing(cls, attention: ShiftedWindowAttention3d) -> GatedWindowAttention3d:
        """A gated attention holding ``attention``'s weights (B_frag starts at zero)."""
        dim = attention.qkv.in_features
        gated = cls(
            dim,
            list(attention.window_size),
            list(attention.shift_size),
            attention.num_heads,
            qkv_bias=attention.qkv.bias is not None,
            proj_bias=attention.proj.bias is not None,
            attention_dropout=attention.attention_dropout,
            dropout=attention.dropout,
        )
        gated.load_state_dict(attention.state_dict(), strict=False)
        return gated

    def _gate(self, padded: tuple[int, int, int], window: list[int], shift: list[int], device) -> Tensor:
        key = (padded, tuple(window), tuple(shift), device)
        if key not in self._gates:
            # the fragment grid follows the window: on a map smaller than the window (whose window is
            # clipped to the map) the grid is clipped with it (docs/method.md 1.3: fragments = (1,) + window[1:])
            fragments = tuple(min(f, w) for f, w in zip(self.fragments, window, strict=True))
            gate = fragment_gate(padded, window, shift, fragments, dtype=torch.uint8)  # values 0..12
            self._gates[key] = gate.to(device=device)
        return self._gates[key]

    #: without gradients, attention scores are computed for at most this many elements at a time on the
    #: CPU (cache-sized chunks: the paper backbone's 64-frame forward runs 1.8x faster than unchunked),
    #: 64 times more on accelerators, whose kernels want more work per launch
    inference_chunk_elements: int = 1 << 21

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, rel: Tensor, frag: Tensor, gate: Tensor, regions: Tensor | None
    ) -> Tensor:
        """Attention within windows ``[b, w, nH, N, C/nH]`` -> ``[b, w, N, C]`` (``gate``: the w windows'
        ``[w, N, N]``; ``regions``: their tokens' shift regions ``[w, N]``, or None without a shift)."""
        b, w, heads, tokens, head_dim = q.shape
        attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)  # b, w, nH, N, N
        # B_frag + g (B_rel - B_frag), broadcast over the batch without a [b, w, nH, N, N] bias temporary
        attn = attn + frag
        attn = torch.addcmul(attn, gate.to(attn.dtype)[None, :, None], (rel - frag)[None, None])
        if regions is not None:  # torchvision's shift mask: -100 between tokens of different regions
            mask = (regions[:, None, :] != regions[:, :, None]).to(attn.dtype) * -100.0
            attn = attn + mask[None, :, None]
        attn = F.softmax(attn, dim=-1)
        attn = F.dropout(attn, p=self.attention_dropout, training=self.training)
        return (attn @ v).transpose(2, 3).reshape(b, w, tokens, heads * head_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        window, shift = _get_window_and_shift_size(self.shift_size.copy(), [t, h, w], self.window_size.copy())
        pad = _compute_pad_size_3d((t, h, w), tuple(window))
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        padded = (x.shape[1], x.shape[2], x.shape[3])
        if any(shift):
            x = torch.roll(x, shifts=[-s for s in shift], dims=(1, 2, 3))
        grid = [padded[i] // window[i] for i in range(3)]
        num_windows, tokens = grid[0] * grid[1] * grid[2], window[0] * window[1] * window[2]
        x = x.view(b, grid[0], window[0], grid[1], window[1], grid[2], window[2], c)
        x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, num_windows, tokens, c)

        heads = self.num_heads
        index = self.relative_position_index[:tokens, :tokens].reshape(-1)
        rel = self.relative_position_bias_table[index].view(tokens, tokens, heads).permute(2, 0, 1)
        frag = self.fragment_position_bias_table[index].view(tokens, tokens, heads).permute(2, 0, 1)
        gate = self._gate(padded, window, shift, x.device)  # nW, N, N (uint8)
        regions = shift_regions(padded, window, shift, device=x.device) if any(shift) else None

        def windows(start: int, stop: int) -> Tensor:  # attention and projection of windows [start, stop)
            part = x[:, start:stop]
            qkv = F.linear(part, self.qkv.weight, self.qkv.bias)
            qkv = qkv.reshape(b, stop - start, tokens, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
            out = self._attend(
                qkv[0], qkv[1], qkv[2], rel, frag, gate[start:stop],
                None if regions is None else regions[start:stop],
            )  # fmt: skip
            return F.dropout(
                F.linear(out, self.proj.weight, self.proj.bias), p=self.dropout, training=self.training
            )

        # without gradients the windows go a chunk at a time, from projections to output: the same
        # numbers (bit for bit where the projections' matrix products round alike), while the
        # [b, nW, nH, N, N] scores of a 64-frame clip (0.5 GB per temporary in stage 0) and its
        # [b, nW, N, 3C] projections are never whole
        step = num_windows
        if not torch.is_grad_enabled():
            budget = _chunk_budget(self.inference_chunk_elements, x.device)
            step = max(1, min(num_windows, budget // (b * heads * tokens * tokens)))
        if step == num_windows:
            x = windows(0, num_windows)
        else:
            out = torch.empty_like(x)
            for start in range(0, num_windows, step):
                out[:, start : start + step] = windows(start, min(start + step, num_windows))
            x = out
        x = x.view(b, grid[0], grid[1], grid[2], window[0], window[1], window[2], c)
        x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *padded, c)
        if any(shift):
            x = torch.roll(x, shifts=list(shift), dims=(1, 2, 3))
        return x[:, :t, :h, :w].contiguous()


class VideoSwinBackbone(nn.Module):
    """Video Swin transformer without pooling or classifier: ``[B,3,T,H,W] -> [B,C,T/2,H/32,W/32]``.

    Defaults are Video Swin-T with GRPB in stages 0-2 (``grpb=(True, True, True, False)``); the
    output of ``[B,3,32,224,224]`` is ``[B,768,16,7,7]``. ``grpb=False`` (or all False) gives plain
    Video Swin (torchvision's ``swin3d_t`` features). ``gradient_checkpointing`` recomputes each block
    in the backward pass while training.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Sequence[int] = (8, 7, 7),
        patch_size: Sequence[int] = (2, 4, 4),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        grpb: bool | Sequence[bool] = (True, True, True, False),
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        stages = [bool(grpb)] * len(depths) if isinstance(grpb, bool) else [bool(g) for g in grpb]
        if len(stages) != len(depths):
            raise ValueError(f"grpb needs one flag per stage ({len(depths)}), got {list(grpb)}")
        network = SwinTransformer3d(
            patch_size=list(patch_size),
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=list(window_size),
            mlp_ratio=mlp_ratio,
            stochastic_depth_prob=drop_path,
        )
        self.patch_embed, self.pos_drop = network.patch_embed, network.pos_drop
        self.features, self.norm = network.features, network.norm
        self.num_features = network.num_features
        self.grpb = tuple(stages)
        #: constructor arguments, saved with checkpoints so the network can be rebuilt
        self.config = {
            "embed_dim": embed_dim,
            "depths": list(depths),
            "num_heads": list(num_heads),
            "window_size": list(window_size),
            "patch_size": list(patch_size),
            "mlp_ratio": mlp_ratio,
            "drop_path": drop_path,
            "grpb": list(stages),
        }
        self.gradient_checkpointing = gradient_checkpointing
        for stage, gated in enumerate(stages):
            if gated:
                for block in self.features[2 * stage]:
                    block.attn = GatedWindowAttention3d.replacing(block.attn)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(x))  # B, T', H', W', C
        for layer in self.features:
            if isinstance(layer, nn.Sequential):
                for block in layer:
                    x = self._block(block, x)
            else:
                x = layer(x)
        return self.norm(x).permute(0, 4, 1, 2, 3).contiguous()

    #: without gradients, each block's MLP runs on at most this many hidden activations at a time on the
    #: CPU, 64 times more on accelerators
    inference_chunk_elements: int = 1 << 22

    def _block(self, block: SwinTransformerBlock, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            if self.gradient_checkpointing and self.training:
                return checkpoint(block, x, use_reentrant=False)
            return block(x)
        # the block's own arithmetic, with the MLP (4x wider than the tokens) run a few frames at a time:
        # every token's MLP is its own, so the numbers are the same up to float rounding (products over
        # fewer rows: ~2e-7 relative on the paper backbone) and the hidden layer is never whole
        x = x + block.stochastic_depth(block.attn(block.norm1(x)))
        b, t = x.shape[:2]
        step = max(1, _chunk_budget(self.inference_chunk_elements, x.device) // (4 * x[0, 0].numel() * b))
        if step >= t:
            return x + block.stochastic_depth(block.mlp(block.norm2(x)))
        out = torch.empty_like(x)
        for i in range(0, t, step):
            part = x[:, i : i + step]
            out[:, i : i + step] = part + block.stochastic_depth(block.mlp(block.norm2(part)))
        return out


def swin_t_grpb(*, grpb: bool = True, gradient_checkpointing: bool = False) -> VideoSwinBackbone:
    """The ST-VQRL backbone: Video Swin-T, GRPB in stages 0-2 (28,078,620 parameters)."""
    flags = (True, True, True, False) if grpb else (False,) * 4
    return VideoSwinBackbone(grpb=flags, gradient_checkpointing=gradient_checkpointing)
