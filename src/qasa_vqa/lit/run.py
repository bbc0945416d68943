"""What the training entry points share: resuming, the run directory, trainer assembly and clean exits.

Used by ``python -m qasa_vqa.pretrain`` and ``python -m qasa_vqa.train``, which stay thin: they read
their Hydra config, build the objects and call :func:`build_trainer` and ``fit``.

* :func:`resume_checkpoint`: ``resume=auto`` continues from ``<run dir>/checkpoints/last.ckpt`` when it
  exists, a path resumes from that file, ``null`` starts over.
* :func:`build_trainer`: a Lightning ``Trainer`` from the hardware node (``trainer`` group), the
  instantiated logger and callbacks, writing into the run directory.
* :func:`exit_on_error`: runs an entry point's body and turns the project's errors into one line on
  stderr and exit status 2 (never a traceback for a wrong path or setting).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra.errors import InstantiationException
from lightning.pytorch import Callback, Trainer
from omegaconf import DictConfig, OmegaConf

from qasa_vqa.errors import QasaVqaError

__all__ = ["build_trainer", "exit_on_error", "instantiate_callbacks", "resume_checkpoint", "save_config"]

T = TypeVar("T")
LAST = "last.ckpt"


def resume_checkpoint(resume: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from: ``auto`` (the run's ``checkpoints/last.ckpt`` if any), a file, or
    ``None`` / ``"null"`` to start over."""
    if resume in (None, "null", "none", ""):
        return None
    if resume == "auto":
        last = output_dir / "checkpoints" / LAST
        return str(last) if last.exists() else None
    if not Path(resume).is_file():
        raise QasaVqaError(f"resume={resume}: no such checkpoint")
    return str(resume)


def save_config(cfg: DictConfig, output_dir: Path) -> Path:
    """Write the resolved config as ``<run dir>/config.yaml``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    return path


def instantiate_callbacks(nodes: Mapping[str, Any] | None) -> list[Callback]:
    """The callbacks of a ``callbacks`` node: each non-null ``_target_`` entry, in order."""
    if not nodes:
        return []
    return [hydra.utils.instantiate(node) for node in nodes.values() if node is not None]


def build_trainer(
    hardware: Mapping[str, Any],
    output_dir: Path,
    *,
    logger: Mapping[str, Any] | None,
    callbacks: Sequence[Callback] = (),
    **options: Any,
) -> Trainer:
    """A ``Trainer`` on ``hardware`` (accelerator, devices, strategy, precision, ...) with the logger
    node instantiated into ``output_dir``; ``options`` (epochs, validation cadence, ...) come from the
    experiment."""
    settings = (
        OmegaConf.to_container(hardware, resolve=True) if isinstance(hardware, DictConfig) else dict(hardware)
    )
    instance = hydra.utils.instantiate(logger, save_dir=str(output_dir)) if logger else False
    return Trainer(
        **settings, **options, logger=instance, callbacks=list(callbacks), default_root_dir=output_dir
    )


def exit_on_error(
    command: str, body: Callable[[], T], handlers: Mapping[type, Callable[[Exception], str]] | None = None
) -> T:
    """``body()``; a :class:`~qasa_vqa.errors.QasaVqaError` becomes ``<command>: error: <message>`` (or
    the text of a matching ``handlers`` entry) on stderr and exit status 2."""
    try:
        try:
            return body()
        except InstantiationException as wrapped:  # a project error raised while building a config node
            cause = wrapped.__cause__
            if isinstance(cause, QasaVqaError):
                raise cause from None
            raise
    except QasaVqaError as error:
        for kind, message in (handlers or {}).items():
            if isinstance(error, kind):
                print(message(error), file=sys.stderr)
                break
        else:
            print(f"{command}: error: {error}", file=sys.stderr)
        sys.exit(2)
