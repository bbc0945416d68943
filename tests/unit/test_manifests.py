"""Label-file readers: every format, detection, scales, path safety, missing files, bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from qasa_vqa.data.manifests import (
    DATASET_SCALES,
    ManifestError,
    VideoRecord,
    detect_format,
    read_manifest,
    write_plain_csv,
)

SHARED = Path(os.environ.get("QASA_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

# Each format as the peers write it (FAST-VQA's, DOVER's and the datasets' own): file name, text, expected records.
SAMPLES = {
    "fastvqa_txt": (
        "labels.txt",
        "KoNViD_1k_videos/4542323058.mp4, 8.008, 29.97002997002997, 3.22\n"
        "KoNViD_1k_videos/9753414792.mp4, 8.008008, 29.97, 3.84\n"
        "KoNViD_1k_videos/6935410837.mp4, 8.0, 25.0, 3.24",
        [("KoNViD_1k_videos/4542323058.mp4", 3.22), ("KoNViD_1k_videos/9753414792.mp4", 3.84)],
        (1.0, 5.0),
    ),
    "lsvq_csv": (
        "LSVQ_whole_test.csv",
        "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,frame_number,is_test,is_valid\n"
        "yfcc-batch1/747,1,2,3,720,1280,60,61,62,67.75,300,True,True\n"
        "yfcc-batch1/752,1,2,3,720,1280,50,51,52,50.9,300,True,False\n"
        "ia-batch3/clip_x,1,2,3,480,640,70,71,72,74.8,250,True,True\n",
        [("yfcc-batch1/747.mp4", 67.75), ("ia-batch3/clip_x.mp4", 74.8)],
        (0.0, 100.0),
    ),
    "konvid_csv": (
        "KONVID_1K_metadata.csv",
        "flickr_id,mos,width,height,pixfmt,framerate,nb_frames,bitdepth,bitrate\n"
        "3337642103,4.64,960,540,yuv420p,29.97,240,8,3000\n"
        "8536919744,1.22,960,540,yuv420p,25,200,8,1000\n",
        [("3337642103.mp4", 4.64), ("8536919744.mp4", 1.22)],
        (1.0, 5.0),
    ),
    "livevqc_csv": (
        "LIVE_VQC_metadata.csv",
        "File,MOS,width,height\nA001.mp4,80.232,1920,1080\nB102.mp4,6.22368,1280,720\n",
        [("A001.mp4", 80.232), ("B102.mp4", 6.22368)],
        (0.0, 100.0),
    ),
    "youtube_ugc_csv": (
        "YOUTUBE_UGC_metadata.csv",
        "vid,category,resolution,x_Subjects,MOSFull,MOSChunk00\n"
        "Sports_2160P-4e9f,Sports,2160,100,4.405,4.3\n"
        "Vlog_360P-2e9d,Vlog,360,90,1.242,1.3\n",
        [("Sports_2160P-4e9f.mp4", 4.405), ("Vlog_360P-2e9d.mp4", 1.242)],
        (1.0, 5.0),
    ),
    "qasa_json": (
        "semisupervised.json",
        json.dumps(
            [
                {"filename": "yfcc-batch1/725.mp4", "label": 76.84375},
                {"filename": "ia-batch24/youtube-drWZE8F81RI.mp4", "label": 57.8},
            ]
        ),
        [("yfcc-batch1/725.mp4", 76.84375), ("ia-batch24/youtube-drWZE8F81RI.mp4", 57.8)],
        (0.0, 100.0),
    ),
    "qalign_json": (
        "test_lsvq.json",
        json.dumps(
            [
                {"img_path": "LSVQ/yfcc-batch1/747.mp4", "gt_score": 67.75},
                {"img_path": "LSVQ/yfcc-batch1/749.mp4", "gt_score": 74.8},
            ]
        ),
        [("LSVQ/yfcc-batch1/747.mp4", 67.75), ("LSVQ/yfcc-batch1/749.mp4", 74.8)],
        (0.0, 100.0),
    ),
    "plain_csv": (
        "mine.csv",
        "path,mos,split\nclips/a.mp4,3.5,train\nclips/b.mp4,,train\nclips/c.mp4,1.25,test\n",
        [("clips/a.mp4", 3.5), ("clips/b.mp4", None), ("clips/c.mp4", 1.25)],
        (1.0, 5.0),
    ),
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_each_format_is_detected_and_read(tmp_path: Path, fmt: str) -> None:
    name, text, expected, scale = SAMPLES[fmt]
    path = _write(tmp_path, name, text)
    assert detect_format(path) == fmt
    manifest = read_manifest(path)
    assert manifest.format == fmt
    assert [(r.path, r.mos) for r in manifest][: len(expected)] == expected
    assert manifest.scale == scale
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_manifest(path, format=fmt).records == manifest.records


def test_fastvqa_txt_keeps_duration_and_fps_and_ignores_blank_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "l.txt", "\nVideo/A001.mp4, 10.002367, 30.0, 80.232\n\n  \nVideo/A002.mp4, -1, -1, 57.3\n"
    )
    manifest = read_manifest(path)
    assert len(manifest) == 2
    assert manifest[0].extra == {"duration": 10.002367, "fps": 30.0}
    assert manifest[1].extra == {"duration": -1.0, "fps": -1.0}


def test_lsvq_csv_keeps_invalid_rows_only_on_request(tmp_path: Path) -> None:
    name, text, _, _ = SAMPLES["lsvq_csv"]
    path = _write(tmp_path, name, text)
    assert len(read_manifest(path)) == 2
    everything = read_manifest(path, keep_invalid=True)
    assert [r.path for r in everything] == [
        "yfcc-batch1/747.mp4",
        "yfcc-batch1/752.mp4",
        "ia-batch3/clip_x.mp4",
    ]
    assert everything[1].extra["is_valid"] == "False"


def test_normalised_maps_each_dataset_scale_to_unit_range(tmp_path: Path) -> None:
    konvid = read_manifest(_write(tmp_path, "k.csv", SAMPLES["konvid_csv"][1]))
    assert konvid.normalised(1.0) == 0.0 and konvid.normalised(5.0) == 1.0
    assert konvid.normalised(3.0) == pytest.approx(0.5)
    lsvq = read_manifest(_write(tmp_path, "q.json", SAMPLES["qasa_json"][1]))
    assert lsvq.normalised(76.84375) == pytest.approx(0.7684375)  # QASA's label / 100


def test_scale_can_be_named_or_given_and_bad_scales_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.csv", "path,mos\na.mp4,3\nb.mp4,4\n")
    assert read_manifest(path).scale == (1.0, 5.0)
    assert read_manifest(path, scale="lsvq").scale == DATASET_SCALES["lsvq"]
    assert read_manifest(path, scale=(0, 10)).scale == (0.0, 10.0)
    with pytest.raises(ManifestError, match="low < high"):
        read_manifest(path, scale=(5, 1))
    with pytest.raises(ManifestError, match="unknown dataset scale"):
        read_manifest(path, scale="imagenet")
    wide = _write(tmp_path, "w.csv", "path,mos\na.mp4,250\nb.mp4,4\n")
    with pytest.raises(ManifestError, match="pass scale="):
        read_manifest(wide)
    assert read_manifest(_write(tmp_path, "u.csv", "path,mos\na.mp4,0.25\n")).scale == (0.0, 1.0)


def test_plain_csv_split_and_unlabelled_entries(tmp_path: Path) -> None:
    manifest = read_manifest(_write(tmp_path, "m.csv", SAMPLES["plain_csv"][1]))
    assert [r.path for r in manifest.split("train")] == ["clips/a.mp4", "clips/b.mp4"]
    assert [r.path for r in manifest.split("test")] == ["clips/c.mp4"]
    test_only = manifest.only("test")
    assert [r.path for r in test_only] == ["clips/c.mp4"] and test_only.subset == "test"
    assert test_only.sha256 == manifest.sha256 and test_only.scale == manifest.scale
    with pytest.raises(ManifestError, match=r"no entries with split 'val' \(splits: \['test', 'train'\]\)"):
        manifest.only("val")
    paths_only = read_manifest(_write(tmp_path, "p.csv", "path\nx.mp4\ny.mp4\n"))
    assert [r.mos for r in paths_only] == [None, None]


def test_plain_csv_round_trip(tmp_path: Path) -> None:
    records = [
        VideoRecord("a/b.mp4", 1.0 / 3.0, {"split": "train"}),
        VideoRecord("c.mp4", None, {"split": "test"}),
    ]
    path = write_plain_csv(tmp_path / "out.csv", records, fields=["split"])
    again = read_manifest(path)
    assert [(r.path, r.mos, r.extra.get("split")) for r in again] == [
        ("a/b.mp4", 1.0 / 3.0, "train"),
        ("c.mp4", None, "test"),
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("/abs/video.mp4", "absolute video path"),
        ("../outside.mp4", "leaves the dataset root"),
        ("a/../../outside.mp4", "leaves the dataset root"),
        ("C:\\videos\\x.mp4", "absolute video path"),
    ],
)
def test_paths_escaping_the_root_are_rejected(tmp_path: Path, entry: str, message: str) -> None:
    path = _write(tmp_path, "bad.csv", f"path,mos\nok.mp4,1\n{entry},2\n")
    with pytest.raises(ManifestError, match=message) as error:
        read_manifest(path)
    assert "bad.csv:3" in str(error.value)


def test_harmless_dot_segments_are_normalised(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.csv", "path,mos\n./a/./b.mp4,1\na/x/../c.mp4,2\nwin\\d.mp4,3\n")
    assert [r.path for r in read_manifest(path)] == ["a/b.mp4", "a/c.mp4", "win/d.mp4"]


def test_missing_videos_are_reported_then_fatal_dropped_or_kept(tmp_path: Path, caplog) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("v0.mp4", "v2.mp4"):
        (root / name).write_bytes(b"x")
    lines = "".join(f"v{i}.mp4,{i + 1}\n" for i in range(8))
    path = _write(tmp_path, "m.csv", "path,mos\n" + lines)
    with pytest.raises(ManifestError, match=r"6 of 8 videos are missing .*v1\.mp4, v3\.mp4") as error:
        read_manifest(path, root=root)
    assert "missing='drop'" in str(error.value)
    dropped = read_manifest(path, root=root, missing="drop")
    assert [r.path for r in dropped] == ["v0.mp4", "v2.mp4"]
    assert len(dropped.missing) == 6
    assert "6 of 8 videos are missing" in caplog.text
    kept = read_manifest(path, root=root, missing="keep")
    assert len(kept) == 8 and kept.resolve(kept[1]) == root / "v1.mp4"
    with pytest.raises(ManifestError, match="not a folder"):
        read_manifest(path, root=tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "path,mos\na.mp4,good\n", r"a\.csv:2: mos 'good' is not a number"),
        ("b.txt", "x.mp4, -1, -1, 3.1\ny.mp4, -1, 3.2\n", r"b\.txt:2: expected 'path, duration, fps, mos'"),
        ("c.csv", "path,mos\na.mp4,1\na.mp4,2\n", "listed twice"),
        ("d.json", "[{'filename': 1}]", "invalid JSON"),
        ("e.json", '{"filename": "a.mp4"}', "expected a JSON list"),
        ("f.json", '[{"name": "a.mp4", "score": 1}]', "neither QASA"),
        (
            "g.json",
            '[{"filename": "a.mp4", "label": 1}, {"filename": "b.mp4"}]',
            "entry 1: expected an object",
        ),
        ("h.csv", "video,score\na.mp4,1\n", "cannot tell the label format"),
        ("i.csv", "path,mos\n", "no entries"),
        ("j.csv", "path,mos\na.mp4,nan\n", "mos is 'nan'"),
        ("k.csv", "flickr_id,mos\n1,2,3\n", "more cells than header"),
    ],
)
def test_bad_label_files_name_the_file_and_the_problem(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        read_manifest(_write(tmp_path, name, text))


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="label file not found"):
        read_manifest(tmp_path / "absent.csv")
    with pytest.raises(ManifestError, match="not a file"):
        read_manifest(tmp_path)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"path,mos\n\xff\xfe\x00")
    with pytest.raises(ManifestError, match="not a UTF-8 text file"):
        read_manifest(binary)
    path = _write(tmp_path, "m.csv", "path,mos\na.mp4,1\n")
    with pytest.raises(ManifestError, match="unknown manifest format 'xml'"):
        read_manifest(path, format="xml")
    with pytest.raises(ValueError, match="missing must be"):
        read_manifest(path, missing="ignore")


def test_utf8_bom_and_case_insensitive_headers(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffFile,mos,width\nA001.mp4,80.2,1920\n".encode())
    manifest = read_manifest(path)
    assert manifest.format == "livevqc_csv"
    assert [(r.path, r.mos) for r in manifest] == [("A001.mp4", 80.2)]


# The real label files of the peers, when the shared reference data is present (not part of the repo).
SHARED_COUNTS = {
    "labels/LSVQ/labels_train.txt": (28056, (0.0, 100.0), ("yfcc-batch1/725.mp4", 76.84375)),
    "labels/LSVQ/labels_test.txt": (7186, (0.0, 100.0), ("yfcc-batch1/747.mp4", 67.75)),
    "labels/LSVQ/labels_1080p.txt": (3573, (0.0, 100.0), ("yfcc-batch1/722.mp4", 78.7741935483871)),
    "labels/KoNViD/labels.txt": (1200, (1.0, 5.0), ("KoNViD_1k_videos/4542323058.mp4", 3.22)),
    "labels/LIVE_VQC/labels.txt": (585, (0.0, 100.0), ("Video/A001.mp4", 80.232)),
    "labels/YouTubeUGC/labels.txt": (1147, (1.0, 5.0), ("Sports_2160P-4e9f_crf_10_ss_00_t_20.0.mp4", 4.405)),
    "semisupervised.json": (1999, (0.0, 100.0), ("yfcc-batch1/725.mp4", 76.84375)),
}


@pytest.mark.parametrize("relative", sorted(SHARED_COUNTS))
def test_shared_reference_label_files(relative: str) -> None:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"reference data not present at {path}")
    count, scale, first = SHARED_COUNTS[relative]
    manifest = read_manifest(path)
    assert len(manifest) == count
    assert manifest.scale == scale
    assert (manifest[0].path, manifest[0].mos) == first
