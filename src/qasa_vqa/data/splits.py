"""Which videos carry labels: the paper's split, seeded label budgets and split files on disk.

A QASA-VQA experiment is defined by its labelled / unlabelled sets (docs/method.md section 4.9).

* :func:`official_qasa_split` reproduces the paper's split exactly, from either the 1,999-entry pool
  JSON (``semisupervised.json``) or the 28,056-entry LSVQ train list in official order: the pool is
  ``full[numpy.linspace(0, 28056, 2000, dtype=int)]`` without the last (out-of-range) index, the
  labelled set the pool entries at ``linspace(0, N-1, 500, dtype=int)`` (0, 4, 8, ..., 1993, 1998) and
  the unlabelled set the other 1,499. (The authors' README says "randomly chosen 500" and "1500
  unlabelled"; the code does this, docs/differences.md item 13.)
* :func:`budget_split` draws labelled / validation / unlabelled sets of given sizes from any manifest
  with a seed and a strategy (``random``, ``mos-stratified`` or ``linspace``), and
  :func:`ensure_split_file` writes a split once to a JSON split file holding the inputs, the manifest's
  SHA-256 and the lists, and reads it from then on. The same inputs give a byte-identical file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qasa_vqa.data.manifests import Manifest, ManifestError, VideoRecord, read_manifest, safe_relative_path
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_write_text

__all__ = [
    "STRATEGIES",
    "Split",
    "SplitError",
    "budget_split",
    "ensure_split_file",
    "official_qasa_split",
    "read_split_file",
    "write_split_file",
]

STRATEGIES = ("random", "mos-stratified", "linspace")
SPLIT_FILE_VERSION = 1

# The paper's numbers (docs/method.md section 4.9): LSVQ train list length, pool size + 1, labelled count.
LSVQ_TRAIN_SIZE = 28056
_POOL_POINTS = 2000
QASA_POOL_SIZE = _POOL_POINTS - 1
QASA_LABELLED = 500


class SplitError(QasaVqaError):
    """A split that cannot be made or read as asked."""


@dataclass(frozen=True)
class Split:
    """Disjoint labelled, unlabelled and validation records, and the inputs that made them."""

    labelled: tuple[VideoRecord, ...]
    unlabelled: tuple[VideoRecord, ...]
    validation: tuple[VideoRecord, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_disjoint(self, where="split")


def official_qasa_split(source: str | Path | Manifest | Sequence[VideoRecord]) -> Split:
    """The paper's 500 labelled / 1,499 unlabelled LSVQ videos, exactly (see the module docstring).

    ``source`` is a path to (or the records of) either the pool JSON (1,999 entries) or the LSVQ
    train list in official order (28,056 entries, e.g. FAST-VQA's ``labels_train.txt``). Records keep
    ``path`` as written in the source and ``mos`` on its 0-100 scale.
    """
    if isinstance(source, str | Path):
        source = read_manifest(source)
    name = str(source.source) if isinstance(source, Manifest) else "the given records"
    records = list(source)
    if len(records) == LSVQ_TRAIN_SIZE:
        picks = np.linspace(0, LSVQ_TRAIN_SIZE, _POOL_POINTS, dtype=int)[:-1]
        pool = [records[i] for i in picks]
    elif len(records) == QASA_POOL_SIZE:
        pool = records
    else:
        raise SplitError(
            f"{name}: {len(records)} entries; the official QASA split needs the 1,999-entry pool "
            f"(semisupervised.json) or the {LSVQ_TRAIN_SIZE:,}-entry LSVQ train list in official order"
        )
    labelled_index = np.linspace(0, len(pool) - 1, QASA_LABELLED, dtype=int)
    chosen = set(labelled_index.tolist())
    return Split(
        labelled=tuple(pool[i] for i in labelled_index),
        unlabelled=tuple(record for i, record in enumerate(pool) if i not in chosen),
        inputs={
            "strategy": "official-qasa",
            **(_manifest_inputs(source) if isinstance(source, Manifest) else {}),
        },
    )


def budget_split(
    manifest: Manifest,
    n_labelled: int,
    n_unlabelled: int | None = None,
    *,
    seed: int = 0,
    strategy: str = "random",
    n_validation: int = 0,
) -> Split:
    """Draw disjoint labelled / validation / unlabelled sets from ``manifest``.

    ``n_unlabelled=None`` takes every video left after the labelled and validation draws.
    Strategies: ``random`` (a seeded permutation), ``mos-stratified`` (the videos sorted by MOS are cut
    into ``n_labelled`` equal bins and one is drawn per bin, so the labels cover the whole MOS range;
    validation likewise from what is left; unlabelled at random), ``linspace`` (QASA's deterministic
    rule: evenly spaced positions in manifest order; the seed is unused). Lists keep manifest order.
    """
    if strategy not in STRATEGIES:
        raise SplitError(f"unknown split strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    for label, count in (("n_labelled", n_labelled), ("n_validation", n_validation)):
        if int(count) != count or count < 0:
            raise SplitError(f"{label} must be a whole number >= 0, got {count!r}")
    if n_labelled < 1:
        raise SplitError(f"n_labelled must be at least 1, got {n_labelled}")
    total = len(manifest)
    rest = total - n_labelled - n_validation
    if n_unlabelled is None:
        n_unlabelled = max(rest, 0)
    elif int(n_unlabelled) != n_unlabelled or n_unlabelled < 0:
        raise SplitError(f"n_unlabelled must be a whole number >= 0, got {n_unlabelled!r}")
    wanted = n_labelled + n_validation + n_unlabelled
    if wanted > total:
        subset = f" (its split {manifest.subset!r})" if manifest.subset is not None else ""
        raise SplitError(
            f"{manifest.source}: a budget of {n_labelled} labelled + {n_validation} validation + "
            f"{n_unlabelled} unlabelled = {wanted} videos exceeds the {total} in the manifest{subset}; "
            "lower n_labelled, n_validation or n_unlabelled (data.n_* in the training config)"
        )
    rng = np.random.default_rng(seed)
    remaining = np.arange(total)
    parts = []
    for count, how in ((n_labelled, strategy), (n_validation, strategy), (n_unlabelled, "random-rest")):
        picked = _pick(manifest, remaining, count, how, rng)
        parts.append(picked)
        remaining = np.setdiff1d(remaining, picked, assume_unique=True)
    labelled, validation, unlabelled = ([manifest[i] for i in np.sort(part)] for part in parts)
    inputs = {
        **_manifest_inputs(manifest),
        "n_labelled": int(n_labelled),
        "n_validation": int(n_validation),
        "n_unlabelled": int(n_unlabelled),
        "seed": int(seed),
        "strategy": strategy,
    }
    return Split(tuple(labelled), tuple(unlabelled), tuple(validation), inputs)


def _pick(
    manifest: Manifest, candidates: np.ndarray, count: int, how: str, rng: np.random.Generator
) -> np.ndarray:
    if count == 0:
        return np.empty(0, dtype=int)
    if how == "linspace" or (how == "random-rest" and count == len(candidates)):
        return candidates[np.linspace(0, len(candidates) - 1, count, dtype=int)]
    if how == "mos-stratified":
        unlabelled = [manifest[i].path for i in candidates if manifest[i].mos is None]
        if unlabelled:
            raise SplitError(
                f"{manifest.source}: mos-stratified needs a MOS for every video; {len(unlabelled)} have "
                f"none, e.g. {unlabelled[0]!r}"
            )
        mos = np.array([manifest[i].mos for i in candidates])
        ordered = candidates[np.argsort(mos, kind="stable")]
        return np.array([bin_[rng.integers(len(bin_))] for bin_ in np.array_split(ordered, count)])
    return rng.permutation(candidates)[:count]


# -- split files ---------------------------------------------------------------------------------


def write_split_file(split: Split, path: str | Path) -> Path:
    """Write ``split`` as JSON (sorted keys, stable float text), atomically. Returns the path."""
    path = Path(path)
    payload = {
        "kind": "qasa-vqa split",
        "version": SPLIT_FILE_VERSION,
        "inputs": split.inputs,
        "counts": {name: len(getattr(split, name)) for name in ("labelled", "validation", "unlabelled")},
        **{name: [_entry(record) for record in getattr(split, name)] for name in _SETS},
    }
    text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def read_split_file(path: str | Path) -> Split:
    """Read a split file written by :func:`write_split_file` (or by hand), checking it is coherent."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SplitError(f"{path}: split file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SplitError(f"{path}: not a JSON split file ({error})") from None
    if not isinstance(payload, dict) or payload.get("kind") != "qasa-vqa split":
        raise SplitError(f"{path}: not a qasa-vqa split file (no 'kind': 'qasa-vqa split')")
    if payload.get("version") != SPLIT_FILE_VERSION:
        raise SplitError(
            f"{path}: split file version {payload.get('version')!r}; expected {SPLIT_FILE_VERSION}"
        )
    sets = {}
    for name in _SETS:
        entries = payload.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
            raise SplitError(f"{path}: {name!r} must be a list of {{'path', 'mos'}} objects")
        try:  # a split file edited by hand must not point outside the dataset root either
            sets[name] = tuple(
                VideoRecord(
                    safe_relative_path(str(e["path"]), f"{path}: {name}[{i}]"),
                    None if e.get("mos") is None else float(e["mos"]),
                )
                for i, e in enumerate(entries)
            )
        except ManifestError as error:
            raise SplitError(str(error)) from None
        except (TypeError, ValueError) as error:
            raise SplitError(f"{path}: {name!r} holds a MOS that is not a number ({error})") from None
    try:
        return Split(inputs=payload.get("inputs", {}), **sets)
    except SplitError as error:
        raise SplitError(f"{path}: {error}") from None


def ensure_split_file(path: str | Path, split: Split) -> Split:
    """Write ``split`` to ``path`` once; when the file exists, read it from there instead.

    An existing file made from other inputs (another manifest hash, budget, seed or strategy) is an
    error rather than silently reused or overwritten. Returns the split as read back from the file.
    """
    path = Path(path)
    if not path.exists():
        write_split_file(split, path)
        return read_split_file(path)
    existing = read_split_file(path)
    if existing.inputs != split.inputs:
        changed = sorted(
            key
            for key in set(existing.inputs) | set(split.inputs)
            if existing.inputs.get(key) != split.inputs.get(key)
        )
        raise SplitError(
            f"{path} was made from other inputs (differs in {', '.join(changed)}); delete it or choose "
            "another split file"
        )
    return existing


_SETS = ("labelled", "validation", "unlabelled")


def _manifest_inputs(manifest: Manifest) -> dict[str, Any]:
    return {
        "manifest": manifest.source.name,
        "manifest_sha256": manifest.sha256,
        "manifest_entries": len(manifest),
        "mos_scale": list(manifest.scale),
        **({"manifest_split": manifest.subset} if manifest.subset is not None else {}),
    }


def _entry(record: VideoRecord) -> dict[str, Any]:
    return {"path": record.path, "mos": record.mos}


def _check_disjoint(split: Split, where: str) -> None:
    seen: dict[str, str] = {}
    for name in _SETS:
        for record in getattr(split, name):
            if record.path in seen:
                other = seen[record.path]
                detail = "twice" if other == name else f"in both {other} and {name}"
                raise SplitError(f"{where}: video {record.path!r} is listed {detail}")
            seen[record.path] = name
