"""CLIP weight files: where weights come from, how each kind of file is read, and self-describing files.

A CLIP's weights are named by ``pretrained``: ``None`` (random initialisation), an open_clip tag such as
``"openai"`` (needs network or a filled cache), the tag ``"demo"`` (the project's offline demo CLIP,
shipped inside the package, :func:`demo_clip_path`), or a local file: OpenAI's TorchScript archive
(``ViT-B-32.pt``; only its tensors are read, its code never runs), a ``torch.save`` state dict (read
with ``weights_only=True``) or safetensors.

A *self-describing* file is a safetensors file whose header metadata says what network its tensors
belong to: ``{"format": "qasa-vqa-clip", "model_name": ..., "open_clip_config": JSON of the
``open_clip.CLIP`` arguments, "provenance": JSON}``. :func:`write_clip_file` writes one (half precision
by default), and loading it needs no model name. The demo CLIP is such a file.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_save

__all__ = [
    "DEMO_TAG",
    "FILE_FORMAT",
    "ClipFileHeader",
    "demo_clip_path",
    "read_clip_file",
    "read_clip_header",
    "resolve_weights",
    "strip_prefix",
    "write_clip_file",
]

DEMO_TAG = "demo"
FILE_FORMAT = "qasa-vqa-clip"
_DEMO_FILE = "demo_clip.safetensors"


def demo_clip_path() -> Path:
    """The demo CLIP shipped in the package (``qasa_vqa/assets/demo_clip.safetensors``)."""
    path = Path(str(files("qasa_vqa") / "assets" / _DEMO_FILE))
    if not path.is_file():
        raise QasaVqaError(
            f"the demo CLIP is missing from this installation ({path}); reinstall the package, or make it "
            "with 'qasa-vqa demo-clip --out DIR' and pass DIR/demo_clip.safetensors instead"
        )
    return path


def resolve_weights(pretrained: str | Path | None) -> str | Path | None:
    """``None`` (random init), a local file (``Path``; the tag ``"demo"`` becomes the shipped file) or
    an open_clip pretrained tag (``str``). A name that looks like a path must exist."""
    if pretrained is None:
        return None
    text = str(pretrained)
    if not isinstance(pretrained, Path) and text == DEMO_TAG:
        return demo_clip_path()
    is_path = isinstance(pretrained, Path) or os.sep in text or "/" in text or Path(text).suffix != ""
    if not is_path and not Path(text).exists():
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise QasaVqaError(f"CLIP weights file not found: {path}")
    return path


@dataclass(frozen=True)
class ClipFileHeader:
    """What a self-describing file says of its network: a name, the ``open_clip.CLIP`` arguments, and
    how it was made."""

    model_name: str
    config: dict[str, Any]
    provenance: dict[str, Any]


def read_clip_header(path: Path) -> ClipFileHeader | None:
    """The header of a self-describing safetensors file; ``None`` for any other file."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # damaged or foreign bytes
        raise QasaVqaError(f"{path}: truncated or not a readable safetensors file ({error})") from None
    if metadata.get("format") != FILE_FORMAT:
        return None
    try:
        config = json.loads(metadata["open_clip_config"])
        provenance = json.loads(metadata.get("provenance", "{}"))
        name = metadata["model_name"]
    except (KeyError, ValueError) as error:
        raise QasaVqaError(f"{path}: damaged {FILE_FORMAT} header ({error})") from None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise QasaVqaError(f"{path}: its open_clip_config is not the arguments of open_clip.CLIP: {config!r}")
    return ClipFileHeader(name, config, provenance)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state_dict`` without ``prefix`` when every key has it (DataParallel's ``module.``), else as is."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):  # damaged: torch.load then says what is wrong
        return False


def read_clip_file(path: Path) -> dict[str, Tensor]:
    """A full CLIP state dict (float32, no ``module.`` prefix) from any supported file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(path))
        except Exception as error:
            raise QasaVqaError(f"{path}: truncated or not a readable safetensors file ({error})") from None
    elif _is_torchscript_archive(path):
        # OpenAI's released format, read by TorchScript's own loader: it builds TorchScript modules, never
        # imports or calls Python objects named in the file; its forward code is never run.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                state_dict = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise QasaVqaError(f"{path}: truncated or not a CLIP TorchScript archive ({reason})") from None
    else:
        from qasa_vqa.models.checkpoints import load_torch_file  # imports this module: import when used

        obj = load_torch_file(path, what="CLIP weights file")
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise QasaVqaError(f"{path}: not a CLIP state dict (expected a mapping of names to tensors)")
        state_dict = dict(obj)
    state_dict = strip_prefix(state_dict, "module.")
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def write_clip_file(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str,
    config: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a full open_clip CLIP as a self-describing safetensors file (atomically:
    :func:`~qasa_vqa.storage.atomic_save`)."""
    from safetensors.torch import save_file

    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {
        "format": FILE_FORMAT,
        "model_name": model_name,
        "open_clip_config": json.dumps(dict(config), sort_keys=True),
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True),
    }

    def save(partial: Path) -> None:
        save_file(tensors, str(partial), metadata=metadata)
        partial.chmod(0o644)  # safetensors creates files readable by their owner only

    return atomic_save(path, save)
