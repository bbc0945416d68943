"""Benchmark: the ST-VQRL backbone's forward without gradients, in chunks (the default) against whole tensors.

Without gradients (scoring, evaluation) :class:`~qasa_vqa.models.swin3d.GatedWindowAttention3d` attends a
chunk of windows at a time and :class:`~qasa_vqa.models.swin3d.VideoSwinBackbone` runs each block's MLP a
few frames at a time; the output is the same up to float rounding (the largest difference is printed and
must stay under 1e-5 of the output's scale). This prints, for the paper's
backbone (Video Swin-T with GRPB, random weights) on the scorer's 64-frame fragments ``[1, 3, 64, 224,
224]``: the median wall time of ``--repeats`` forwards and the peak resident memory above the state before
the forward, for both ways, alternating them so that a change of load hits both, and their ratios.
Run with ``make bench`` or ``python benchmarks/bench_swin_chunks.py [--frames 64] [--repeats 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from qasa_vqa.models.swin3d import GatedWindowAttention3d, VideoSwinBackbone, swin_t_grpb

WHOLE = 1 << 50  # a budget no tensor reaches: every forward in one piece


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Samples this process's resident memory every millisecond while running."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_mb())
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def budgets(attention: int, mlp: int) -> Iterator[None]:
    saved = GatedWindowAttention3d.inference_chunk_elements, VideoSwinBackbone.inference_chunk_elements
    GatedWindowAttention3d.inference_chunk_elements, VideoSwinBackbone.inference_chunk_elements = (
        attention,
        mlp,
    )
    try:
        yield
    finally:
        GatedWindowAttention3d.inference_chunk_elements, VideoSwinBackbone.inference_chunk_elements = saved


@torch.inference_mode()
def timed_forward(model: VideoSwinBackbone, fragments: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(seconds, peak MB above the resident memory before, output) of one forward."""
    before = resident_mb()
    with PeakMemory() as memory:
        start = time.perf_counter()
        out = model(fragments)
        seconds = time.perf_counter() - start
    return seconds, memory.peak - before, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="fragment frames (default: 64, the scorer's)")
    parser.add_argument("--repeats", type=int, default=3, help="forwards per way (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = swin_t_grpb().eval()
    fragments = torch.randn(1, 3, args.frames, 224, 224, generator=torch.Generator().manual_seed(0))
    defaults = (GatedWindowAttention3d.inference_chunk_elements, VideoSwinBackbone.inference_chunk_elements)
    ways = {"chunked": defaults, "whole": (WHOLE, WHOLE)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    outputs: dict[str, torch.Tensor] = {}
    for name, (attention, mlp) in ways.items():  # warm-up: kernels set up, gate caches filled
        with budgets(attention, mlp):
            outputs[name] = timed_forward(model, fragments)[2]
    difference = (outputs["chunked"] - outputs["whole"]).abs().max().item() / outputs[
        "whole"
    ].abs().max().item()
    assert difference < 1e-5, f"chunked and whole forwards differ by {difference:.1e} of the output's scale"
    for _ in range(args.repeats):
        for name, (attention, mlp) in ways.items():
            with budgets(attention, mlp):
                seconds, peak, _ = timed_forward(model, fragments)
            results[name].append((seconds, peak))
    print(
        f"Swin-T + GRPB forward without gradients, fragments [1, 3, {args.frames}, 224, 224], "
        f"{args.threads} threads, median of {args.repeats}; chunk budgets {defaults[0]:,} attention scores, "
        f"{defaults[1]:,} MLP activations; largest difference {difference:.1e} of the output's scale"
    )
    print(f"{'way':<9}{'wall s':>9}{'peak MB':>10}")
    medians = {}
    for name, rows in results.items():
        medians[name] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        print(f"{name:<9}{medians[name][0]:>9.2f}{medians[name][1]:>10.0f}")
    print(
        f"chunked / whole: time {medians['chunked'][0] / medians['whole'][0]:.2f}x, "
        f"peak memory {medians['chunked'][1] / medians['whole'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
