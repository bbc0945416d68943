"""``python -m qasa_vqa.evaluate``: a model on test sets -> metrics with intervals, predictions, plots.

Configuration: ``conf/eval.yaml``. The model is a checkpoint (``model=checkpoint checkpoint=FILE``, ours
or the authors') or a zero-shot CLIP (``model=clip_zeroshot clip=demo|openai|local``); either way the
videos go through the same :class:`~qasa_vqa.scoring.Scorer` as ``qasa-vqa score`` (deterministic
centred views), so a zero-shot baseline is measured exactly like a trained model. ``data=[...]`` selects
test sets by name (``conf/data/<name>.yaml`` places ``conf/data/test/<name>.yaml`` at ``test_sets.<name>``);
``+test_sets.NAME.manifest=PATH`` adds any label file.

Per test set and per branch (``qasa``: the combined score, ``stvqrl``, ``clip``), the metrics of
:func:`~qasa_vqa.metrics.quality_metrics` (SRCC, KRCC, PLCC raw and fitted, fitted RMSE in MOS units,
bootstrap 95% intervals) on the videos that could be scored; failures are counted and listed. The run
folder gets ``predictions.csv`` (one row per video and set: path, MOS, every score, status),
``metrics.json``, ``table.md``, ``scatter_<set>.png`` and ``calibration_<set>.json`` (the fitted mapping
of the ``calibrate`` column, which ``qasa-vqa score --calibration`` applies). Each file is written as
soon as its set is done, so an interrupted run keeps the sets it finished.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import Progress

from qasa_vqa.calibration import Calibration
from qasa_vqa.data.datamodules import ManifestSource
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.lit.run import exit_on_error, root_hint
from qasa_vqa.metrics import fit_logistic, quality_metrics
from qasa_vqa.reports import metrics_table, scatter_plot
from qasa_vqa.scoring import Scorer, ScoreSettings, load_scorer, scorer_from_model, view_spec
from qasa_vqa.storage import atomic_write_text

__all__ = ["PREDICTION_FIELDS", "build_scorer", "evaluate", "main", "resolve_test_sets"]

log = logging.getLogger(__name__)

PREDICTION_FIELDS = ("test_set", "path", "mos", "score", "stvqrl", "clip", "status", "error")
_COLUMN_OF = {"qasa": "score", "stvqrl": "stvqrl", "clip": "clip"}


def resolve_test_sets(cfg: DictConfig) -> dict[str, ManifestSource]:
    """The test sets of ``cfg.test_sets`` (filled by ``data=[...]`` and by hand)."""
    sets = {
        str(name): ManifestSource(**OmegaConf.to_container(node, resolve=True))
        for name, node in (cfg.get("test_sets") or {}).items()
    }
    if not sets:
        raise QasaVqaError(
            "nothing to evaluate: choose test sets with data=[demo_test,konvid,...] or add a label file "
            "with +test_sets.NAME.manifest=PATH"
        )
    return sets


def _check_label_files(cfg: DictConfig, sets: dict[str, ManifestSource]) -> None:
    """Every test set's label file exists, before any model is loaded; else one message naming each
    missing one and the data root (and environment variable) it was looked for under."""
    missing = [
        f"  {name}: {source.manifest}{root_hint(cfg, source.manifest)}"
        for name, source in sets.items()
        if not Path(str(source.manifest)).is_file()
    ]
    if missing:
        raise QasaVqaError("no label file for the test set(s):\n" + "\n".join(missing))


def build_scorer(cfg: DictConfig) -> tuple[Scorer, str]:
    """The scorer of ``cfg.model`` and a short description of the model for tables."""
    settings = {"clips": cfg.clips, "seed": cfg.seed, "batch_size": cfg.batch_size, "workers": cfg.workers}
    views = OmegaConf.to_container(cfg.views, resolve=True) if cfg.views else None
    kind = cfg.model.get("kind")
    if kind == "checkpoint":
        if not cfg.checkpoint:
            raise QasaVqaError("model=checkpoint needs checkpoint=PATH (qasa_model.pt or the authors' .pth)")
        scorer = load_scorer(
            cfg.checkpoint, device=cfg.device, clip_text=cfg.clip_text, views=views, **settings
        )
        return scorer, Path(str(cfg.checkpoint)).as_posix()
    if kind == "clip_zeroshot":
        clip = instantiate(cfg.clip)
        spec = view_spec(views or {})
        scorer = scorer_from_model(clip, spec, device=cfg.device, settings=ScoreSettings(**settings))
        return scorer, f"zero-shot CLIP ({cfg.clip.pretrained})"
    raise QasaVqaError(
        f"model={kind or cfg.model}: evaluate takes model=checkpoint or model=clip_zeroshot (the training "
        "presets describe architectures, not trained weights)"
    )


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, PREDICTION_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in row.items()}
        )
    atomic_write_text(path, buffer.getvalue())


def evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run the evaluation of ``cfg`` into ``output_dir``; returns ``{set: {branch: metrics}}`` and paths."""
    sets = resolve_test_sets(cfg)
    _check_label_files(cfg, sets)
    scorer, model_name = build_scorer(cfg)
    branches = [b for b in ("qasa", "stvqrl", "clip") if b in scorer.branches]
    calibrated = {"score": branches[0], "stvqrl": "stvqrl", "clip": "clip"}.get(cfg.calibrate)
    if calibrated not in branches:
        raise QasaVqaError(
            f"calibrate={cfg.calibrate}: choose one of the model's scores (score, {', '.join(branches[1:])})"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions: list[dict[str, Any]] = []
    results: dict[str, dict[str, dict[str, float]]] = {}
    files: dict[str, Any] = {"predictions": output_dir / "predictions.csv", "scatter": {}, "calibration": {}}
    for name, source in sets.items():
        manifest = source.read()
        records = list(manifest)
        log.info("evaluating %s on %s: %d videos", model_name, name, len(records))
        rows = []
        with Progress(*Progress.get_default_columns(), console=Console(stderr=True)) as progress:
            task = progress.add_task(f"scoring {name}", total=len(records))
            for record, row in zip(
                records, scorer.score_many([manifest.resolve(r) for r in records]), strict=True
            ):
                rows.append(row | {"test_set": name, "path": record.path, "mos": record.mos})
                progress.advance(task)
        predictions += rows
        _write_predictions(files["predictions"], predictions)
        scored = [r for r in rows if r["status"] == "ok" and r["mos"] is not None]
        failed = [r for r in rows if r["status"] != "ok"]
        if failed:
            log.warning(
                "%s: %d of %d videos could not be scored: %s",
                name,
                len(failed),
                len(rows),
                "; ".join(r["error"] for r in failed[:5]),
            )
        if len(scored) < 3:
            raise QasaVqaError(
                f"{name}: only {len(scored)} videos with MOS could be scored; at least 3 are needed"
            )
        mos = np.array([r["mos"] for r in scored], dtype=np.float64)
        columns = {b: np.array([_number(r[_COLUMN_OF[b]]) for r in scored]) for b in branches}
        results[name] = {}
        fits = {}
        for branch in branches:
            metrics = quality_metrics(
                columns[branch], mos, fit=cfg.fit, bootstrap=cfg.bootstrap, seed=cfg.seed
            )
            metrics["failed"] = float(len(failed))
            results[name][branch] = metrics
            if cfg.fit != "none":
                params, _ = fit_logistic(columns[branch], mos, cfg.fit)
                fits[branch] = ("linear" if len(params) == 2 else cfg.fit, params.tolist())
        files["scatter"][name] = scatter_plot(
            mos,
            columns,
            fits,
            output_dir / f"scatter_{name}.png",
            title=f"{model_name} on {name}",
            metrics=results[name],
        )
        if calibrated in fits:
            kind, params = fits[calibrated]
            files["calibration"][name] = Calibration(
                branch=calibrated,
                fit=kind,
                params=tuple(params),
                mos_min=float(mos.min()),
                mos_max=float(mos.max()),
                n=len(scored),
                source={
                    "test_set": name,
                    "manifest": str(manifest.source),
                    "model": model_name,
                    "metrics": {k: results[name][calibrated][k] for k in ("srcc", "plcc", "plcc_logistic")},
                },
            ).save(output_dir / f"calibration_{name}.json")
        _write_summary(output_dir, results, model_name, cfg.fit)
    files["metrics"], files["table"] = output_dir / "metrics.json", output_dir / "table.md"
    return {"results": results, "files": files, "model": model_name}


def _write_summary(output_dir: Path, results: dict[str, Any], model_name: str, fit: str) -> None:
    clean = {
        s: {
            b: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
            for b, m in branches.items()
        }
        for s, branches in results.items()
    }
    atomic_write_text(
        output_dir / "metrics.json",
        json.dumps({"model": model_name, "fit": fit, "results": clean}, indent=2) + "\n",
    )
    atomic_write_text(output_dir / "table.md", f"# {model_name}\n\n" + metrics_table(results, fit=fit))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    outcome = exit_on_error("qasa-vqa evaluate", lambda: evaluate(cfg, output_dir))
    print(metrics_table(outcome["results"], fit=cfg.fit))
    files = outcome["files"]
    print(f"wrote {files['predictions']}, {files['metrics']}, {files['table']}")
    for name in outcome["results"]:
        extra = f", {files['calibration'][name]}" if name in files["calibration"] else ""
        print(f"  {name}: {files['scatter'][name]}{extra}")


if __name__ == "__main__":
    main()
