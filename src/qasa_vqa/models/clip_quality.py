"""The CLIP quality branch of QASA-VQA: a trainable CLIP visual tower and cached prompt features.

QASA-VQA's semantics-aware model Q_H (docs/method.md sections 4.1 and 4.4) is OpenAI CLIP ViT-B/32 of which
only the visual tower is trained. The frozen text tower is used once, to encode two antonym prompt
pairs ("a Good photo." / "a Bad photo.", "a High quality photo." / "a Low quality photo."), so
:class:`CLIPQuality` keeps those text features as a buffer and no text tower at all: checkpoints stay
slim and inference needs no text weights. A video's quality is read from the mean of its frames'
image features (mean before normalisation), as the sum over prompt pairs of
``sigmoid((cos_good - cos_bad) / tau)`` with tau = 0.1, which lies in (0, 2).

Weights: ``open_clip`` builds the network. OpenAI's ViT-B/32 was trained with QuickGELU, which open_clip
spells ``"ViT-B-32-quickgelu"`` (its ``"ViT-B-32"`` uses nn.GELU and warns against the ``"openai"``
tag); the weights come from the ``"openai"`` tag or from a local file (OpenAI's TorchScript
``ViT-B-32.pt`` or an open_clip state dict), because machines without network cannot download them
(docs/differences.md item 15). ``build_clip_quality("tiny", pretrained=None)`` is a small random twin
for tests and demos. The official QASA checkpoint stores ``clip.visual``'s 152 tensors under
``'auxillary'`` with OpenAI's names (section 4.10), which open_clip's VisionTransformer uses too, so
:func:`load_visual_official` is a checked identity mapping with a key report.

Deviations from the authors' code, kept for fidelity and stated here: the input frames are normalised
with ImageNet statistics and squashed to 224 x 224 as the reference feeds CLIP, not with CLIP's own
preprocessing (docs/differences.md item 9); this module takes frames already normalised. The cosine
and sigmoid are computed in float32 even under autocast.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.clip_weights import read_clip_file, read_clip_header, resolve_weights, strip_prefix

__all__ = [
    "DEFAULT_PAIRS",
    "DEFAULT_PROMPTS",
    "DEFAULT_PROMPT_CLASSES",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_TAU",
    "LOCAL_CLIP_CONFIGS",
    "OPENAI_VIT_B32",
    "CLIPQuality",
    "KeyReport",
    "build_clip_quality",
    "build_clip_visual",
    "compute_prompt_features",
    "create_clip",
    "get_clip_tokenizer",
    "load_prompt_features",
    "load_visual_official",
    "make_prompts",
    "prompt_cosine",
    "quality_from_cosine",
    "visual_state_dict_official",
]

OPENAI_VIT_B32 = "ViT-B-32-quickgelu"
DEFAULT_PROMPT_CLASSES: tuple[str, ...] = ("Good", "Bad", "High quality", "Low quality")
DEFAULT_PROMPT_TEMPLATE = "a {} photo."
DEFAULT_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3))
DEFAULT_TAU = 0.1

# Small architectures that open_clip does not know, built with ``open_clip.CLIP(**config)``: "tiny", a
# random twin for tests, and "qasa-demo", the offline demo CLIP (qasa_vqa.democlip; weights: "demo").
LOCAL_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 64, "head_width": 32, "layers": 2},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "qasa-demo": {
        "embed_dim": 128,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 128, "head_width": 32, "layers": 4},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}

# Tensors of OpenAI's TorchScript archives that are metadata, not weights.
_OPENAI_METADATA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})


def make_prompts(classes: Sequence[str], template: str = DEFAULT_PROMPT_TEMPLATE) -> tuple[str, ...]:
    """The prompt texts ``template.format(c)`` for each class name."""
    return tuple(template.format(c) for c in classes)


DEFAULT_PROMPTS = make_prompts(DEFAULT_PROMPT_CLASSES)


# ----------------------------------------------------------------------------------------------------
# The math (docs/method.md section 4.4)


def prompt_cosine(features: Tensor, prompt_features: Tensor) -> Tensor:
    """Cosine similarities ``[B, P]`` between image features ``[B, D]`` and prompt features ``[P, D]``."""
    return F.normalize(features, dim=-1) @ F.normalize(prompt_features, dim=-1).T


def quality_from_cosine(cosine: Tensor, pairs: Sequence[tuple[int, int]], tau: float) -> Tensor:
    """``sum_k sigmoid((c[good_k] - c[bad_k]) / tau)`` over the (good, bad) prompt pairs: ``[B, P] -> [B]``.

    Each term is the softmax probability of the good prompt within its pair at logit scale ``1/tau``.
    """
    good = cosine[..., [g for g, _ in pairs]]
    bad = cosine[..., [b for _, b in pairs]]
    return torch.sigmoid((good - bad) / tau).sum(dim=-1)


def _check_prompt_setup(prompts: Sequence[str], pairs: Sequence[tuple[int, int]], tau: float) -> None:
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise QasaVqaError(f"CLIP prompts must be non-empty strings, got {list(prompts)!r}")
    if not pairs:
        raise QasaVqaError("CLIP prompt pairs are empty: give at least one (good, bad) index pair")
    for pair in pairs:
        if len(pair) != 2 or not all(0 <= int(i) < len(prompts) for i in pair) or pair[0] == pair[1]:
            raise QasaVqaError(
                f"CLIP prompt pair {tuple(pair)} is not two different indices into the {len(prompts)} prompts"
            )
    if not tau > 0:
        raise QasaVqaError(f"CLIP quality temperature tau must be positive, got {tau}")


# ----------------------------------------------------------------------------------------------------
# The module


class CLIPQuality(nn.Module):
    """CLIP visual tower + cached prompt text features -> video quality in (0, 2).

    ``visual`` maps ``[N, 3, 224, 224]`` frames (ImageNet-normalised) to ``[N, D]`` features and is
    trainable. ``prompt_features`` ``[P, D]`` is a buffer (saved in the state dict, never trained); it
    may be unset (``None``) for a model loaded from the official checkpoint, which has no text tower:
    image features still work, qualities raise until :meth:`set_prompt_features` is called, and
    loading a state dict that holds them fills them in. ``prompts``, ``pairs``, ``tau`` and
    ``model_name`` are plain attributes for checkpoint metadata.
    """

    prompt_features: Tensor | None

    def __init__(
        self,
        visual: nn.Module,
        prompt_features: Tensor | None = None,
        *,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        pairs: Sequence[tuple[int, int]] = DEFAULT_PAIRS,
        tau: float = DEFAULT_TAU,
        model_name: str | None = None,
    ) -> None:
        super().__init__()
        _check_prompt_setup(prompts, pairs, tau)
        self.visual = visual
        self.prompts: tuple[str, ...] = tuple(prompts)
        self.pairs: tuple[tuple[int, int], ...] = tuple((int(g), int(b)) for g, b in pairs)
        self.tau = float(tau)
        self.model_name = model_name
        self.embed_dim: int | None = getattr(visual, "output_dim", None)
        self.register_buffer("prompt_features", None)
        if prompt_features is not None:
            self.set_prompt_features(prompt_features)

    @property
    def has_prompt_features(self) -> bool:
        return self.prompt_features is not None

    def set_prompt_features(self, features: Tensor) -> None:
        """Store the text features ``[P, D]`` of :attr:`prompts` (float32, on the visual tower's device)."""
        expected_dim = self.embed_dim if self.embed_dim is not None else features.shape[-1]
        if tuple(features.shape) != (len(self.prompts), expected_dim):
            raise QasaVqaError(
                f"prompt features have shape {tuple(features.shape)}, expected "
                f"({len(self.prompts)}, {expected_dim}) for {len(self.prompts)} prompts"
            )
        device = next(self.visual.parameters()).device
        self.prompt_features = features.detach().to(device=device, dtype=torch.float32).clone()

    def image_features(self, frames: Tensor) -> Tensor:
        """CLIP image features before normalisation: ``[N, 3, H, W] -> [N, D]``."""
        return self.visual(frames)

    def video_features(self, frames: Tensor) -> Tensor:
        """Mean over frames of the image features: ``[B, T, 3, H, W] -> [B, D]``."""
        if frames.ndim != 5:
            raise ValueError(f"expected frames [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        return self.image_features(frames.flatten(0, 1)).view(b, t, -1).mean(dim=1)

    def prompt_cosine(self, features: Tensor) -> Tensor:
        """Cosine similarities ``[B, P]`` of image features ``[B, D]`` with the prompts."""
        prompt_features = self._require_prompt_features()
        with torch.autocast(device_type=features.device.type, enabled=False):
            return prompt_cosine(features.float(), prompt_features.float())

    def quality_from_features(self, features: Tensor) -> Tensor:
        """Quality ``[B]`` in (0, 2) of (frame-averaged) image features ``[B, D]`` (docs/method.md 4.4)."""
        return quality_from_cosine(self.prompt_cosine(features), self.pairs, self.tau)

    def video_quality(self, frames: Tensor) -> Tensor:
        """Quality ``[B]`` in (0, 2) of videos ``[B, T, 3, 224, 224]`` (features averaged over T first)."""
        return self.quality_from_features(self.video_features(frames))

    def forward(self, frames: Tensor) -> Tensor:
        return self.video_quality(frames)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in the visual transformer (saves memory for many frames)."""
        self.visual.set_grad_checkpointing(enable)

    def _require_prompt_features(self) -> Tensor:
        if self.prompt_features is None:
            raise QasaVqaError(
                "the CLIP quality branch has no prompt features: it was built without a CLIP text tower "
                "(the official QASA checkpoint stores only clip.visual). Supply `clip_text` - the open_clip "
                "tag 'openai' or a local CLIP file (OpenAI's ViT-B-32.pt or an open_clip checkpoint) - so "
                "the prompt features can be computed (see load_prompt_features)"
            )
        return self.prompt_features

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A model without prompt features accepts them from a state dict that has them.
        key = prefix + "prompt_features"
        if self.prompt_features is None and isinstance(state_dict.get(key), Tensor):
            device = next(self.visual.parameters()).device
            self.prompt_features = torch.empty_like(state_dict[key], device=device, dtype=torch.float32)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"prompts={list(self.prompts)}, pairs={list(self.pairs)}, tau={self.tau}"


# ----------------------------------------------------------------------------------------------------
# Building CLIP and the prompt features


def _load_weights(model: nn.Module, path: Path, state_dict: Mapping[str, Tensor]) -> None:
    persistent = model.state_dict()
    ignored = _OPENAI_METADATA_KEYS | {n for n, _ in model.named_buffers() if n not in persistent}
    state_dict = {k: v for k, v in state_dict.items() if k not in ignored}
    report = KeyReport.compare(persistent, state_dict)
    if not report.ok:
        raise QasaVqaError(
            f"{path}: not a CLIP checkpoint of this architecture: another architecture's weights ({report})"
        )
    model.load_state_dict(state_dict, strict=True)


def _architecture(model_name: str | None, source: str | Path | None) -> tuple[str, dict[str, Any] | None]:
    """The model name and, for local architectures and self-describing files, the open_clip.CLIP
    arguments. A self-describing file decides the architecture; a ``model_name`` that disagrees is an
    error."""
    header = read_clip_header(source) if isinstance(source, Path) else None
    if header is not None:
        known = LOCAL_CLIP_CONFIGS.get(model_name or header.model_name)
        if model_name is not None and model_name != header.model_name and known != header.config:
            raise QasaVqaError(
                f"{source} holds the CLIP '{header.model_name}' (vision {header.config['vision_cfg']}), not "
                f"'{model_name}': leave the model name out to use the file's own architecture"
            )
        return header.model_name, header.config
    name = model_name or OPENAI_VIT_B32
    return name, (copy.deepcopy(LOCAL_CLIP_CONFIGS[name]) if name in LOCAL_CLIP_CONFIGS else None)


def create_clip(
    model_name: str | None = None,
    pretrained: str | Path | None = "openai",
    device: torch.device | str | None = None,
) -> nn.Module:
    """A full open_clip CLIP model (both towers) in eval mode.

    ``model_name`` is an open_clip name (``"ViT-B-32-quickgelu"`` for OpenAI's ViT-B/32, the default) or
    a key of :data:`LOCAL_CLIP_CONFIGS`; leave it out for a self-describing file, which carries its own.
    ``pretrained`` is an open_clip tag (``"openai"``; needs network or a filled cache), ``"demo"`` (the
    shipped demo CLIP), a local file (OpenAI's ``ViT-B-32.pt``, an open_clip ``.pt``/``.bin``/
    ``.safetensors``, a self-describing file of :mod:`~qasa_vqa.models.clip_weights`), or ``None`` for
    random weights.
    """
    return _create(model_name, pretrained, device)[0]


def _create(
    model_name: str | None, pretrained: str | Path | None, device: torch.device | str | None
) -> tuple[nn.Module, str]:
    """:func:`create_clip`, also returning the model name (the file's own for a self-describing file)."""
    device = torch.device(device if device is not None else "cpu")
    source = resolve_weights(pretrained)
    model_name, config = _architecture(model_name, source)
    if config is not None:
        if isinstance(source, str):
            raise QasaVqaError(
                f"CLIP config '{model_name}' is a local architecture without released weights: "
                f"use pretrained=None, 'demo' or a local file, not the tag '{source}'"
            )
        model = open_clip.CLIP(**config)
    elif model_name not in open_clip.list_models():
        raise QasaVqaError(
            f"unknown CLIP model '{model_name}': use an open_clip name such as '{OPENAI_VIT_B32}' or one of "
            f"{sorted(LOCAL_CLIP_CONFIGS)}"
        )
    elif isinstance(source, str):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if source not in tags:
            raise QasaVqaError(f"open_clip has no weights '{source}' for '{model_name}' (tags: {tags})")
        try:
            model = open_clip.create_model(model_name, pretrained=source, device=device)
        except (RuntimeError, OSError) as err:
            raise QasaVqaError(
                f"could not load the CLIP weights '{source}' for '{model_name}' ({err}). Without network, "
                "pass a local file instead: OpenAI's ViT-B-32.pt or an open_clip checkpoint"
            ) from err
    else:
        model = open_clip.create_model(model_name, pretrained=None, device=device)
    if isinstance(source, Path):
        _load_weights(model, source, read_clip_file(source))
    return model.to(device).eval(), model_name


def get_clip_tokenizer(model_name: str = OPENAI_VIT_B32, model: nn.Module | None = None) -> Any:
    """open_clip's tokenizer for ``model_name`` (CLIP's lower-casing BPE). For architectures open_clip
    does not know (local ones, self-describing files) it is the same BPE at the context length of
    ``model`` or of :data:`LOCAL_CLIP_CONFIGS`."""
    if model_name in open_clip.list_models():
        return open_clip.get_tokenizer(model_name)
    if model is not None:
        return open_clip.SimpleTokenizer(context_length=model.context_length)
    if model_name in LOCAL_CLIP_CONFIGS:
        return open_clip.SimpleTokenizer(
            context_length=LOCAL_CLIP_CONFIGS[model_name]["text_cfg"]["context_length"]
        )
    raise QasaVqaError(f"unknown CLIP model '{model_name}': no tokenizer for it")


def compute_prompt_features(clip_model: nn.Module, tokenizer: Any, prompts: Sequence[str]) -> Tensor:
    """Text features ``[P, D]`` (unnormalised ``encode_text``) of the prompts, under ``no_grad``."""
    device = next(clip_model.parameters()).device
    tokens = tokenizer(list(prompts)).to(device)
    was_training = clip_model.training
    clip_model.eval()
    try:
        with torch.no_grad():
            features = clip_model.encode_text(tokens)
    finally:
        clip_model.train(was_training)
    return features.float()


def load_prompt_features(
    text_source: str | Path,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    model_name: str | None = None,
) -> Tensor:
    """Prompt features ``[P, D]`` (on CPU) from CLIP weights given as a tag (``"openai"``, ``"demo"``) or
    a local file; ``model_name`` as in :func:`create_clip`.

    This is how a model restored from the official QASA checkpoint (no text tower) gets its prompts.
    """
    if text_source is None:
        raise QasaVqaError(
            "load_prompt_features needs CLIP weights: the tag 'openai', 'demo' or a local CLIP file"
        )
    clip_model, name = _create(model_name, text_source, "cpu")
    return compute_prompt_features(clip_model, get_clip_tokenizer(name, clip_model), prompts)


def build_clip_quality(
    model_name: str | None = None,
    pretrained: str | Path | None = "openai",
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    pairs: Sequence[tuple[int, int]] = DEFAULT_PAIRS,
    tau: float = DEFAULT_TAU,
    device: torch.device | str | None = None,
) -> CLIPQuality:
    """CLIP quality branch: visual tower of ``model_name`` with ``pretrained`` weights, prompt features
    computed once by its text tower, which is then dropped. ``pretrained=None`` gives random weights;
    ``pretrained="demo"`` or a self-describing file needs no ``model_name`` (:func:`create_clip`)."""
    _check_prompt_setup(prompts, pairs, tau)
    clip_model, name = _create(model_name, pretrained, device)
    features = compute_prompt_features(clip_model, get_clip_tokenizer(name, clip_model), prompts)
    return CLIPQuality(
        clip_model.visual, features, prompts=prompts, pairs=pairs, tau=tau, model_name=name
    ).train()


def build_clip_visual(
    model_name: str = OPENAI_VIT_B32, device: torch.device | str | None = None
) -> nn.Module:
    """A randomly initialised visual tower of ``model_name``, to load the official weights into."""
    return create_clip(model_name, None, device).visual.train()


# ----------------------------------------------------------------------------------------------------
# The official checkpoint's 'auxillary' entry (docs/method.md section 4.10, stvqrl_keys.txt section B)


@dataclass(frozen=True)
class KeyReport:
    """How a state dict matches a module: missing, unexpected and shape-mismatched keys."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @classmethod
    def compare(cls, expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> KeyReport:
        return cls(
            missing=tuple(k for k in expected if k not in given),
            unexpected=tuple(k for k in given if k not in expected),
            mismatched=tuple(
                (k, tuple(v.shape), tuple(given[k].shape))
                for k, v in expected.items()
                if k in given and tuple(v.shape) != tuple(given[k].shape)
            ),
        )

    def __str__(self) -> str:
        if self.ok:
            return "all keys match"

        def listing(names: Sequence[str], limit: int = 8) -> str:
            more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
            return ", ".join(names[:limit]) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {listing(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} expects {e} got {g}" for k, e, g in self.mismatched]
            parts.append(f"{len(self.mismatched)} with other shapes: {listing(shapes, 4)}")
        return "; ".join(parts)


def _visual_of(model: CLIPQuality | nn.Module) -> nn.Module:
    return model.visual if isinstance(model, CLIPQuality) else model


def visual_state_dict_official(model: CLIPQuality | nn.Module) -> dict[str, Tensor]:
    """The visual tower's weights under OpenAI's ``clip.visual`` names, without prefix (the official
    'auxillary' layout). open_clip's VisionTransformer uses exactly these names."""
    return dict(_visual_of(model).state_dict())


def load_visual_official(
    model: CLIPQuality | nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> KeyReport:
    """Load an official 'auxillary' state dict (``clip.visual`` names) into the visual tower.

    A ``module.`` prefix on every key is dropped, and a full OpenAI/open_clip CLIP state dict is reduced
    to its ``visual.`` keys. With ``strict`` any missing, unexpected or reshaped key raises a
    :class:`QasaVqaError` naming them; otherwise the matching keys are loaded and the report returned.
    """
    given = strip_prefix(state_dict, "module.")
    if any(k.startswith("visual.") for k in given):
        given = {k[len("visual.") :]: v for k, v in given.items() if k.startswith("visual.")}
    visual = _visual_of(model)
    report = KeyReport.compare(visual.state_dict(), given)
    if strict and not report.ok:
        raise QasaVqaError(
            f"another architecture: the CLIP visual weights do not fit this visual tower ({report})"
        )
    mismatched = {k for k, _, _ in report.mismatched}
    visual.load_state_dict(
        {k: v for k, v in given.items() if k not in mismatched and k not in report.unexpected}, strict=False
    )
    return report
