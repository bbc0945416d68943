"""Make, save and measure the demo CLIP: the steps behind ``qasa-vqa demo-clip``.

:func:`make_demo_clip` generates the pairs (:mod:`~qasa_vqa.democlip.pairs`), trains
(:mod:`~qasa_vqa.democlip.train`) and writes ``demo_clip.safetensors``: a self-describing, half
precision file (:mod:`qasa_vqa.models.clip_weights`) whose header holds the open_clip config, the
command that reproduces it, its seed and budget, the photographs used and left out, and its zero-shot
figures once measured. :func:`measure` scores a weights file and a randomly initialised model of the
same architecture on a demo corpus (:mod:`~qasa_vqa.democlip.zeroshot`).

Which photographs are left out: those of the test split of the default demo corpus (seed 0), and of
the corpus given, read from its plan (``corpus.json``'s seed and sizes, never its scores).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from qasa_vqa import __version__
from qasa_vqa.data.synthetic import DemoKnobs, plan_corpus
from qasa_vqa.democlip.pairs import VERSIONS, PairPool, build_pool, usable_photos
from qasa_vqa.democlip.train import (
    DEMO_CLIP_CONFIG,
    TrainSettings,
    build_demo_clip,
    estimate_steps,
    train_demo_clip,
)
from qasa_vqa.democlip.zeroshot import score_corpus, summarise
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.clip_quality import (
    DEFAULT_PROMPTS,
    CLIPQuality,
    build_clip_quality,
    compute_prompt_features,
    get_clip_tokenizer,
)
from qasa_vqa.models.clip_weights import read_clip_file, read_clip_header, resolve_weights, write_clip_file
from qasa_vqa.storage import atomic_save

__all__ = [
    "DEMO_MODEL_NAME",
    "MadeClip",
    "Recipe",
    "excluded_scenes",
    "format_report",
    "make_demo_clip",
    "measure",
    "record_measurement",
]

DEMO_MODEL_NAME = "qasa-demo"
WEIGHTS_FILE = "demo_clip.safetensors"


@dataclass(frozen=True)
class Recipe:
    """What makes a demo CLIP: the defaults are the shipped model's."""

    seed: int = 0
    shots: int = 2500
    versions: int = VERSIONS
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1

    def command(self, out: Path, corpus: Path | None) -> str:
        parts = ["qasa-vqa demo-clip", f"--out {out}", f"--seed {self.seed}", f"--steps {self.steps}",
                 f"--shots {self.shots}"]  # fmt: skip
        return " ".join(parts + ([f"--corpus {corpus}"] if corpus is not None else []))


def excluded_scenes(corpus: Path | None) -> list[str]:
    """Scenes (photo stems) of the default demo corpus's test split and of ``corpus``'s, if given."""
    scenes = {s for s, split in plan_corpus(0, DemoKnobs())[0].items() if split == "test"}
    if corpus is not None and (corpus / "corpus.json").is_file():
        record = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
        knobs = {k: v for k, v in record.get("knobs", {}).items() if k in DemoKnobs.__dataclass_fields__}
        splits = plan_corpus(int(record.get("seed", 0)), DemoKnobs(**knobs))[0]
        scenes |= {s for s, split in splits.items() if split == "test"}
    return sorted(scenes)


def _preview(pool: PairPool, path: Path, count: int = 12) -> Path:
    """A picture of the first shots' versions with their captions, to see what the model learns from."""
    tile, text_h = 224, 56
    shots = min(pool.shots, count // pool.versions or 1)
    canvas = Image.new("RGB", (tile * pool.versions, (tile + text_h) * shots), "white")
    draw = ImageDraw.Draw(canvas)
    for s in range(shots):
        for v in range(pool.versions):
            x, y = v * tile, s * (tile + text_h)
            canvas.paste(Image.fromarray(pool.images[s, v, 0]), (x, y))
            words, lines = pool.captions[s][v][0].split(), [""]
            for word in words:
                lines[-1:] = (
                    [f"{lines[-1]} {word}".strip()] if len(lines[-1]) + len(word) < 38 else [lines[-1], word]
                )
            for i, line in enumerate(lines[:4]):
                draw.text((x + 2, y + tile + 2 + 13 * i), line, fill="black")
    return atomic_save(path, canvas.save)


@dataclass(frozen=True)
class MadeClip:
    """Where the outputs of :func:`make_demo_clip` lie, and the provenance written into the weights."""

    weights: Path
    log: Path
    preview: Path
    provenance: dict[str, Any]


def make_demo_clip(
    out: str | Path,
    recipe: Recipe = Recipe(),
    *,
    minutes: float | None = None,
    corpus: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    snapshots: Collection[int] = (),
) -> MadeClip:
    """Generate the pairs, train, and write ``out/demo_clip.safetensors`` (+ ``train_log.csv``,
    ``pairs.png``). ``minutes`` (optional) bounds the whole run: the pairs are made first, then the
    steps that fit in the rest are counted (:func:`~qasa_vqa.democlip.train.estimate_steps`) and
    recorded in the recipe, so the recorded command repeats the run exactly. ``snapshots`` names steps
    at which the model is also written (``snapshot_<step>.safetensors``), to see how it learns along
    the run (mid-schedule, at a learning rate the full run has not yet decayed)."""
    out, corpus = Path(out), Path(corpus) if corpus is not None else None
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    excluded = excluded_scenes(corpus)
    photos = usable_photos(excluded)
    pool = build_pool(
        recipe.seed, recipe.shots, photos, versions=recipe.versions, workers=workers, progress=progress
    )
    pairs_seconds = time.perf_counter() - started
    if minutes is not None:
        left = minutes * 60 - pairs_seconds
        if left <= 0:
            raise QasaVqaError(
                f"the budget of {minutes} minutes was spent making {recipe.shots} shots of pairs "
                f"({pairs_seconds:.0f} s): give more minutes or fewer --shots"
            )
        recipe = Recipe(
            **(asdict(recipe) | {"steps": estimate_steps(pool, left, batch_size=recipe.batch_size)})
        )
    settings = TrainSettings(
        recipe.steps, recipe.batch_size, recipe.lr, recipe.weight_decay, seed=recipe.seed
    )
    log = out / "train_log.csv"
    base = {
        "what": "qasa-vqa demo CLIP: a small CLIP trained offline on generated degraded pictures and "
        "captions; a stand-in so the method runs without OpenAI's weights, not OpenAI's CLIP",
        "command": recipe.command(out, corpus),
        "recipe": asdict(recipe),
        "minutes_budget": minutes,
        "pictures": len(pool),
        "photos_used": list(photos),
        "scenes_left_out": excluded,
    }

    def snapshot(step: int, model: torch.nn.Module) -> None:
        if step in set(snapshots) and step < recipe.steps:
            note = base | {"snapshot_step": step}
            write_clip_file(model, out / f"snapshot_{step}.safetensors", model_name=DEMO_MODEL_NAME,
                            config=DEMO_CLIP_CONFIG, provenance=note)  # fmt: skip

    result = train_demo_clip(pool, settings, progress=progress, log_path=log, on_step=snapshot)
    provenance = base | {
        "seconds": {"pairs": round(pairs_seconds, 1), "training": round(result.seconds, 1)},
        "final_loss": round(float(np.mean([h["loss"] for h in result.history[-50:]])), 4),
        "versions": {
            "qasa-vqa": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "threads": torch.get_num_threads(),
    }
    weights = write_clip_file(
        result.model,
        out / WEIGHTS_FILE,
        model_name=DEMO_MODEL_NAME,
        config=DEMO_CLIP_CONFIG,
        provenance=provenance,
    )
    return MadeClip(weights, log, _preview(pool, out / "pairs.png"), provenance)


def _random_twin(weights: Path, seed: int) -> CLIPQuality:
    """A randomly initialised CLIP of the weights file's architecture, as a quality branch."""
    header = read_clip_header(weights)
    if header is None:
        raise QasaVqaError(
            f"{weights}: not a self-describing CLIP file; the random baseline needs its config"
        )
    model = build_demo_clip(header.config, seed).eval()
    features = compute_prompt_features(model, get_clip_tokenizer(header.model_name, model), DEFAULT_PROMPTS)
    return CLIPQuality(model.visual, features, model_name=header.model_name)


def measure(
    weights: str | Path,
    corpus: str | Path,
    *,
    seed: int = 0,
    bootstrap: int = 1000,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Zero-shot SRCC / PLCC (with bootstrap 95% intervals) of ``weights`` and of a random model of the
    same architecture on ``corpus``: ``{"trained": {subset: metrics}, "random": {...}}``."""
    path = resolve_weights(weights)
    if not isinstance(path, Path):
        raise QasaVqaError(f"{weights!r}: give a demo CLIP file or 'demo', not an open_clip tag")
    models = {"trained": build_clip_quality(pretrained=path).eval(), "random": _random_twin(path, seed)}
    scores = score_corpus(models, corpus, workers=workers, progress=progress)
    return {name: summarise(scores, name, bootstrap=bootstrap, seed=seed) for name in models}


def record_measurement(weights: Path, report: dict[str, Any], corpus: Path) -> None:
    """Add the zero-shot figures to the provenance in the weights file's header (tensors unchanged)."""
    header = read_clip_header(weights)
    if header is None:
        raise QasaVqaError(f"{weights}: not a self-describing CLIP file")
    model = build_demo_clip(header.config)
    model.load_state_dict(read_clip_file(weights))
    rounded = {
        m: {s: {k: round(v, 4) for k, v in r.items()} for s, r in subsets.items()}
        for m, subsets in report.items()
    }
    provenance = header.provenance | {"zero_shot": {"corpus": str(corpus), **rounded}}
    write_clip_file(model, weights, model_name=header.model_name, config=header.config, provenance=provenance)


def format_report(report: dict[str, dict[str, dict[str, Any]]], corpus: Path) -> str:
    """The measurement as a small text table."""
    lines = [f"zero-shot CLIP quality on {corpus} (QASA's 4 prompts, tau 0.1, mean feature of 64 frames):",
             f"  {'model':<12} {'clips':<6} {'n':>3}  {'SRCC [95% CI]':<22} {'PLCC [95% CI]':<22}"]  # fmt: skip
    names = {"trained": "demo CLIP", "random": "random init"}
    for model, subsets in report.items():
        for subset, m in subsets.items():
            srcc = f"{m['srcc']:.3f} [{m['srcc_low']:.2f}, {m['srcc_high']:.2f}]"
            plcc = f"{m['plcc']:.3f} [{m['plcc_low']:.2f}, {m['plcc_high']:.2f}]"
            lines.append(
                f"  {names.get(model, model):<12} {subset:<6} {int(m['n']):>3}  {srcc:<22} {plcc:<22}"
            )
    return "\n".join(lines)
