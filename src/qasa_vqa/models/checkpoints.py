"""Checkpoints: safe loading, the authors' official layouts, and our own format.

Every file is read with ``torch.load(weights_only=True)`` (:func:`load_torch_file`, the project's only
``torch.load``): nothing in a checkpoint can run code. A file that cannot be used is a
:class:`CheckpointError` that starts with its path and says why: ``truncated or not a checkpoint``
(empty, cut short, foreign bytes), ``refused to load`` (Python objects that could run code, named; nothing
is unpickled), ``another architecture`` (the missing, unexpected and reshaped keys), or a damaged entry.
Files are written with :func:`~qasa_vqa.storage.atomic_save`.
Official layouts (docs/method.md sections 2.4 and 4.10, ``stvqrl_keys.txt``):

* ST-VQRL: ``{'model': backbone state dict (193 keys, names ``layers.{i}.blocks.{j}...``), ...}``;
* QASA-VQA: ``{'primary': 'backbone.' + those 193 keys + 4 ``vqa_head.*`` keys, 'auxillary': the 152
  ``clip.visual`` keys of OpenAI's ViT-B/32 (QuickGELU), 'epoch': int}`` (sic ``auxillary``). It holds no
  text tower, so CLIP's prompt features come from ``clip_text`` (the open_clip ``openai`` tag or a local
  CLIP file); without them the model loads and ``image_features`` works, but CLIP quality raises.

Our modules use torchvision's names (``features.{2i}.{j}...``); :func:`official_to_ours` /
:func:`ours_to_official` map them (``mlp.fc1``/``fc2`` <-> ``mlp.0``/``mlp.3``, ``layers.{i}.downsample``
<-> ``features.{2i+1}``). Loading is strict by default and reports missing / unexpected / reshaped keys
(the reference loaded ST-VQRL with ``strict=False``, which hides mismatches, section 8 item 11).

Our format: ``{'format': 'qasa-vqa', 'version': 1, 'kind': 'stvqrl-backbone' | 'qasa', 'architecture':
{...constructor arguments...}, 'state_dict': ..., and for QASA 'prompts', 'pairs', 'tau',
'score_scale', 'normalisation'}``; the CLIP prompt features are a buffer inside the state dict.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.clip_quality import (
    OPENAI_VIT_B32,
    CLIPQuality,
    KeyReport,
    build_clip_visual,
    load_prompt_features,
    load_visual_official,
    visual_state_dict_official,
)
from qasa_vqa.models.clip_weights import strip_prefix
from qasa_vqa.models.head import VQAHead
from qasa_vqa.models.qasa import QASAModel, QualityRegressor
from qasa_vqa.models.swin3d import VideoSwinBackbone
from qasa_vqa.storage import atomic_save

__all__ = [
    "FORMAT",
    "CheckpointError",
    "convert_checkpoint",
    "load_backbone_weights",
    "load_qasa",
    "load_qasa_and_views",
    "load_stvqrl_backbone",
    "load_torch_file",
    "official_to_ours",
    "ours_to_official",
    "read_checkpoint",
    "save_qasa",
    "save_stvqrl_backbone",
]

FORMAT, VERSION = "qasa-vqa", 1
NORMALISATION = {"fragments": "imagenet", "clip": "imagenet"}  # as the reference feeds both branches


class CheckpointError(QasaVqaError):
    """A checkpoint that cannot be read, or does not fit the model."""


# -- reading and writing ---------------------------------------------------------------------------


def load_torch_file(path: str | Path, *, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, so nothing in the file
    can run code. Every way the file can fail becomes a :class:`CheckpointError` naming it: missing,
    empty or truncated, not a PyTorch file, or holding Python objects (refused, never unpickled).
    ``what`` names the file's role in the messages ("checkpoint", "CLIP weights file", ...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: truncated or not a {what}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # a pickle protocol torch does not write is refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as error:
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused is not None:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that could run code when "
                f"unpickled ({refused.group(1)}); only tensors and plain containers are read "
                "(weights_only=True), so nothing in it was run"
            ) from None
        raise CheckpointError(f"{path}: truncated or not a {what} ({_reason(error)})") from None
    except Exception as error:  # damaged or foreign bytes fail in many ways inside the unpickler
        raise CheckpointError(
            f"{path}: truncated or not a {what} (not a readable PyTorch checkpoint: {_reason(error)})"
        ) from None


# what torch's weights-only unpickler says when a pickle names a callable it will not import
_REFUSED_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def _reason(error: BaseException) -> str:
    """The informative part of an unpickling error, on one line."""
    text = str(error)
    if "Weights only load failed" in text:  # keep the unpickler's own words, not the advice around them
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = next((line for line in lines if line.startswith(("Unsupported", "Trying"))), lines[-1])
    text = text.split(". This is an internal miniz error")[0].splitlines()[0] if text else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict stored in ``path``, read by :func:`load_torch_file` (weights only, readable errors)."""
    path = Path(path)
    payload = load_torch_file(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")
    return payload


def _write(payload: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` through :func:`~qasa_vqa.storage.atomic_save`: a kill never leaves half a file."""
    return atomic_save(path, lambda partial: torch.save(dict(payload), partial))


# -- key mapping -----------------------------------------------------------------------------------

_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.*)$")
_DOWN = re.compile(r"^layers\.(\d+)\.downsample\.(.*)$")
_FEATURE = re.compile(r"^features\.(\d+)\.(.*)$")
_MLP_TO_OURS = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}


def official_to_ours(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official ST-VQRL backbone names -> ours (torchvision's); other keys pass unchanged."""
    mapped = {}
    for key, value in strip_prefix(state_dict, "module.").items():
        if match := _BLOCK.match(key):
            stage, block, rest = match.groups()
            for old, new in _MLP_TO_OURS.items():
                rest = rest.replace(old, new, 1) if rest.startswith(old) else rest
            key = f"features.{2 * int(stage)}.{block}.{rest}"
        elif match := _DOWN.match(key):
            key = f"features.{2 * int(match.group(1)) + 1}.{match.group(2)}"
        mapped[key] = value
    return mapped


def ours_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our backbone names -> the official ST-VQRL names (inverse of :func:`official_to_ours`)."""
    mapped = {}
    for key, value in state_dict.items():
        if match := _FEATURE.match(key):
            index, rest = int(match.group(1)), match.group(2)
            if index % 2:
                key = f"layers.{index // 2}.downsample.{rest}"
            else:
                block, _, rest = rest.partition(".")
                for new, old in ((v, k) for k, v in _MLP_TO_OURS.items()):
                    rest = rest.replace(new, old, 1) if rest.startswith(new) else rest
                key = f"layers.{index // 2}.blocks.{block}.{rest}"
        mapped[key] = value
    return mapped


def _load_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], what: str, strict: bool, *, assign: bool = False
) -> KeyReport:
    """Load ``state_dict`` into ``module``, refusing another architecture when ``strict``. ``assign``
    (with ``strict``, for a module built on the meta device) makes the given tensors the module's own,
    in the module's dtypes, instead of copying them."""
    expected = module.state_dict()
    report = KeyReport.compare(expected, state_dict)
    if strict and not report.ok:
        raise CheckpointError(f"another architecture: {what} do not fit the model ({report})")
    reshaped = {key for key, _, _ in report.mismatched}
    given = {k: v for k, v in state_dict.items() if k not in reshaped}
    if assign:
        given = {k: v.to(expected[k].dtype) if k in expected else v for k, v in given.items()}
    module.load_state_dict(given, strict=False, assign=assign)
    if assign:
        unset = [
            name
            for name, t in itertools.chain(module.named_parameters(), module.named_buffers())
            if t.is_meta
        ]
        if unset:  # a tensor the file does not hold (a non-persistent buffer): a bug here, not in the file
            raise RuntimeError(f"{what}: {unset[:5]} were not loaded and have no values")
    return report


def load_backbone_weights(
    backbone: VideoSwinBackbone, state_dict: Mapping[str, Tensor], *, strict: bool = True
) -> KeyReport:
    """Load a backbone state dict in the official or our naming into ``backbone``."""
    return _load_strict(backbone, official_to_ours(state_dict), "the backbone weights", strict)


# -- what a file holds -----------------------------------------------------------------------------


@contextlib.contextmanager
def _interpreting(path: Path) -> Iterator[None]:
    """Entries missing from, or of the wrong type in, a readable file: a damaged checkpoint, not a bug."""
    try:
        yield
    except CheckpointError:
        raise
    except QasaVqaError as error:  # e.g. prompt features of the wrong size, from a CLIP helper
        raise CheckpointError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        detail = f"no entry {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{path}: a damaged or unsupported checkpoint ({detail})") from None


def _kind(payload: Mapping[str, Any], path: Path) -> str:
    if payload.get("format") == FORMAT:
        if payload.get("version") != VERSION:
            raise CheckpointError(
                f"{path}: qasa-vqa checkpoint version {payload.get('version')!r} is not {VERSION}"
            )
        return str(payload["kind"])
    if "primary" in payload and "auxillary" in payload:
        return "official-qasa"
    if "model" in payload and isinstance(payload["model"], Mapping):
        return "official-stvqrl"
    if (
        payload
        and all(isinstance(v, Tensor) for v in payload.values())
        and any(k.startswith("layers.") for k in payload)
    ):
        return "official-stvqrl-weights"
    raise CheckpointError(
        f"{path}: not a checkpoint this project knows (expected ST-VQRL {{'model'}}, QASA "
        f"{{'primary', 'auxillary'}} or a qasa-vqa file; found keys {sorted(payload)[:6]})"
    )


def _backbone_from(payload: Mapping[str, Any], kind: str, path: Path) -> tuple[dict, dict[str, Tensor]]:
    """(architecture, backbone state dict) of any supported checkpoint."""
    if kind == "stvqrl-backbone":
        return payload["architecture"]["backbone"], payload["state_dict"]
    if kind == "qasa":
        prefix = "stvqrl.backbone."
        weights = {k[len(prefix) :]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
        return payload["architecture"]["backbone"], weights
    if kind == "official-qasa":
        primary = strip_prefix(payload["primary"], "module.")
        return {}, {k[len("backbone.") :]: v for k, v in primary.items() if k.startswith("backbone.")}
    if kind == "official-stvqrl":
        return {}, payload["model"]
    if kind == "official-stvqrl-weights":
        return {}, dict(payload)
    raise CheckpointError(f"{path}: a {kind!r} checkpoint holds no ST-VQRL backbone")


def read_backbone_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(architecture, weights)`` of the ST-VQRL backbone in any supported checkpoint; the architecture
    is ``{}`` (Video Swin-T) for the official files, which do not record one."""
    path = Path(path)
    payload = read_checkpoint(path)
    with _interpreting(path):
        architecture, weights = _backbone_from(payload, _kind(payload, path), path)
        return dict(architecture), dict(weights)


def load_stvqrl_backbone(
    path: str | Path, *, strict: bool = True, architecture: Mapping[str, Any] | None = None
) -> VideoSwinBackbone:
    """The ST-VQRL backbone of ``path`` (official ST-VQRL or QASA checkpoint, or ours), in eval mode.

    ``forward([B,3,T,224,224]) -> [B,768,T/2,7,7]``. Strict: any missing or unexpected key raises a
    :class:`CheckpointError` that lists them. Official files carry no architecture, so Video Swin-T is
    assumed unless ``architecture`` (:class:`VideoSwinBackbone` arguments) says otherwise.
    """
    path = Path(path)
    stored, weights = read_backbone_weights(path)
    with _interpreting(path):
        backbone = VideoSwinBackbone(**(architecture if architecture is not None else stored))
    try:
        load_backbone_weights(backbone, weights, strict=strict)
    except CheckpointError as error:
        assumed = ""
        if not stored and architecture is None:
            assumed = (
                "; the file records no architecture, so Video Swin-T was assumed (pass architecture=...)"
            )
        raise CheckpointError(f"{path}: {error}{assumed}") from None
    return backbone.eval()


def load_qasa(path: str | Path, clip_text: str | Path | None = None, *, strict: bool = True) -> QASAModel:
    """The QASA model of ``path`` (official QASA checkpoint or ours), in eval mode.

    ``clip_text`` names where CLIP's prompt features come from when the file has none (the official
    checkpoint): the open_clip tag ``"openai"`` or a local CLIP file; given with one of our files, it
    recomputes them.
    """
    return load_qasa_and_views(path, clip_text, strict=strict)[0]


def load_qasa_and_views(
    path: str | Path, clip_text: str | Path | None = None, *, strict: bool = True
) -> tuple[QASAModel, dict[str, Any] | None]:
    """:func:`load_qasa` and, from the same read of the file, the view settings stored in one of our
    checkpoints (``None`` for the authors' files and ours from before views were stored)."""
    path = Path(path)
    payload = read_checkpoint(path)
    with _interpreting(path):
        kind = _kind(payload, path)
        if kind == "official-qasa":
            model = _official_qasa(payload, path, strict)
        elif kind == "qasa":
            model = _our_qasa(payload, path, strict)
        else:
            raise CheckpointError(
                f"{path}: holds an ST-VQRL backbone only ({kind}), not a QASA model; use load_stvqrl_backbone"
            )
    if clip_text is not None:
        model.clip.set_prompt_features(
            load_prompt_features(clip_text, model.clip.prompts, _text_model(model))
        )
    views = payload.get("views") if kind == "qasa" else None
    return model.eval(), (dict(views) if views else None)


def _text_model(model: QASAModel) -> str:
    return model.clip.model_name or OPENAI_VIT_B32


def _official_qasa(payload: Mapping[str, Any], path: Path, strict: bool) -> QASAModel:
    regressor = QualityRegressor(VideoSwinBackbone(), VQAHead())
    primary = strip_prefix(payload["primary"], "module.")
    mapped = {
        (f"backbone.{key}" if not key.startswith("vqa_head.") else key): value
        for key, value in official_to_ours(
            {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in primary.items()}
        ).items()
    }
    try:
        _load_strict(regressor, mapped, "the ST-VQRL weights ('primary', Video Swin-T assumed)", strict)
        clip = CLIPQuality(build_clip_visual(OPENAI_VIT_B32), model_name=OPENAI_VIT_B32)
        load_visual_official(clip, payload["auxillary"], strict=strict)
    except QasaVqaError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return QASAModel(regressor, clip)


def _our_qasa(payload: Mapping[str, Any], path: Path, strict: bool) -> QASAModel:
    """Our QASA checkpoint as a model. With ``strict`` (every weight in the file) the modules are built
    without memory (on the meta device) and take the file's tensors as their weights, so loading never
    holds two copies of the weights (the paper model's would be 0.9 GB at once)."""
    architecture = payload["architecture"]
    clip_name = architecture["clip"]["model_name"]
    with torch.device("meta") if strict else contextlib.nullcontext():
        regressor = QualityRegressor(
            VideoSwinBackbone(**architecture["backbone"]), VQAHead(**architecture["head"])
        )
        visual = build_clip_visual(clip_name, device="meta" if strict else None)
    clip = CLIPQuality(
        visual,
        prompts=payload["prompts"],
        pairs=[tuple(pair) for pair in payload["pairs"]],
        tau=payload["tau"],
        model_name=clip_name,
    )
    if "clip.prompt_features" in payload["state_dict"]:  # the buffer exists only once it is set
        clip.set_prompt_features(payload["state_dict"]["clip.prompt_features"])
    model = QASAModel(regressor, clip, score_scale=payload["score_scale"])
    try:
        _load_strict(model, payload["state_dict"], "the QASA weights", strict, assign=strict)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return model


# -- saving and converting -------------------------------------------------------------------------


def save_stvqrl_backbone(backbone: VideoSwinBackbone, path: str | Path, *, official: bool = False) -> Path:
    """Write ``backbone`` in our format, or with ``official=True`` as ``{'model': official names}`` (the
    layout the authors' code loads)."""
    weights = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    if official:
        return _write({"model": ours_to_official(weights)}, path)
    return _write(
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": "stvqrl-backbone",
            "architecture": {"backbone": backbone.config},
            "state_dict": weights,
        },
        path,
    )


def save_qasa(
    model: QASAModel,
    path: str | Path,
    *,
    official: bool = False,
    epoch: int = 0,
    views: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in our format (weights, architecture, prompts, tau, normalisation, prompt
    features, and ``views``: how the model's frames were sampled and cut, so that a scorer sees what
    the model was trained on; no text tower), or with ``official=True`` in the authors' ``{'primary',
    'auxillary', 'epoch'}`` with the training ``epoch`` it was saved at."""
    if official:
        primary = {
            (f"backbone.{k}" if not k.startswith("vqa_head.") else k): v.detach().cpu()
            for k, v in ours_to_official(model.stvqrl.backbone.state_dict()).items()
        }
        primary.update(
            {f"vqa_head.{k}": v.detach().cpu() for k, v in model.stvqrl.vqa_head.state_dict().items()}
        )
        auxillary = {k: v.detach().cpu() for k, v in visual_state_dict_official(model.clip).items()}
        return _write({"primary": primary, "auxillary": auxillary, "epoch": int(epoch)}, path)
    clip = model.clip
    return _write(
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": "qasa",
            "architecture": {
                "backbone": model.stvqrl.backbone.config,
                "head": model.stvqrl.vqa_head.config,
                "clip": {"model_name": clip.model_name or OPENAI_VIT_B32},
            },
            "prompts": list(clip.prompts),
            "pairs": [list(pair) for pair in clip.pairs],
            "tau": clip.tau,
            "score_scale": model.score_scale,
            "normalisation": NORMALISATION,
            "views": dict(views or {}),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )


def convert_checkpoint(
    source: str | Path, target: str | Path, *, clip_text: str | Path | None = None, official: bool = False
) -> str:
    """Read any supported checkpoint and write it in our format (or the official one). Returns the kind
    written: ``"qasa"`` or ``"stvqrl-backbone"``."""
    source = Path(source)
    kind = _kind(read_checkpoint(source), source)
    if kind in ("qasa", "official-qasa"):
        save_qasa(load_qasa(source, clip_text), target, official=official)
        return "qasa"
    save_stvqrl_backbone(load_stvqrl_backbone(source), target, official=official)
    return "stvqrl-backbone"
