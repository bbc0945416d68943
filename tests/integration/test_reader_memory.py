"""Resident memory of sparse decoding: only the wanted frames (plus the decoder's GOP) are held."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qasa_vqa.video.writer import synthetic_frames, write_video


@pytest.mark.timeout(600)
def test_32_frames_of_a_4k_clip_stay_under_1_5_gb(tmp_path: Path) -> None:
    # 4K, 240 frames: decoding everything would hold 240 x 24.9 MB = 6 GB of RGB frames.
    path = write_video(
        tmp_path / "uhd.mp4", synthetic_frames(240, 2160, 3840, seed=0, grain=0), codec="mpeg4", gop=60
    )
    script = textwrap.dedent(
        f"""
        import numpy as np
        from qasa_vqa.video.reader import read_frames, probe
        from qasa_vqa.video.sampling import fragment_frame_indices
        info = probe({str(path)!r})
        indices = fragment_frame_indices(info.num_frames, rng=np.random.default_rng(0))
        frames = read_frames({str(path)!r}, indices, info=info)
        assert frames.shape == (32, 2160, 3840, 3)
        # VmHWM belongs to this process's own address space; ru_maxrss would also count the parent's
        # resident memory, which Linux carries over through fork and exec.
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        print(int(status.split()[0]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600
    )
    peak_mb = int(result.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 1536, f"peak resident memory {peak_mb:.0f} MB"
