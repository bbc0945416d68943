"""What the training entry points share: resuming, the run directory, trainer assembly and clean exits.

Used by ``python -m qasa_vqa.pretrain`` and ``python -m qasa_vqa.train``, which stay thin: they read
their Hydra config, build the objects and call :func:`build_trainer` and ``fit``.

* :func:`resume_checkpoint`: ``resume=auto`` continues from ``<run dir>/checkpoints/last.ckpt`` when it
  exists, a path resumes from that file, ``null`` starts over.
* :func:`build_trainer`: a Lightning ``Trainer`` from the hardware node (``trainer`` group), the
  instantiated logger and callbacks, writing into the run directory, with :class:`SafeCheckpointIO`.
* :class:`SafeCheckpointIO`: Lightning's checkpoint files written atomically
  (:func:`~qasa_vqa.storage.atomic_save`: a kill never leaves a truncated ``last.ckpt`` under its name)
  and read with ``weights_only=True`` only; a truncated, foreign, unsafe or other-architecture
  checkpoint is a :class:`~qasa_vqa.models.checkpoints.CheckpointError` naming the file, raised before
  anything is restored.
* :func:`exit_on_error`: runs an entry point's body and turns the project's errors into one line on
  stderr and exit status 2 (never a traceback for a wrong path or setting).
* :func:`root_hint`: which ``paths.*`` root (and environment variable) a missing file was looked for under.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
import torch
from hydra.errors import InstantiationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.checkpoints import CheckpointError, load_torch_file
from qasa_vqa.models.clip_quality import KeyReport
from qasa_vqa.storage import atomic_save, atomic_write_text

__all__ = [
    "ROOT_SETTINGS",
    "SafeCheckpointIO",
    "build_trainer",
    "exit_on_error",
    "instantiate_callbacks",
    "resume_checkpoint",
    "root_hint",
    "save_config",
]

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
    """Write the resolved config as ``<run dir>/config.yaml`` (atomically)."""
    return atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


#: The settings of ``conf/paths`` that locate data, and the environment variables they come from.
ROOT_SETTINGS = {"paths.data_root": "QASA_DATA", "paths.demo_root": "QASA_DEMO_DATA"}


def root_hint(cfg: DictConfig, missing: str | Path) -> str:
    """`` (paths.data_root = X is not a folder; set paths.data_root=DIR or QASA_DATA=DIR)`` when the
    missing file ``missing`` lies under a configured data root that does not exist; ``""`` otherwise."""
    target = Path(str(missing)).absolute()
    for setting, variable in ROOT_SETTINGS.items():
        root = OmegaConf.select(cfg, setting, default=None)
        if root in (None, "") or Path(str(root)).is_dir():
            continue
        if target.is_relative_to(Path(str(root)).absolute()):
            return f" ({setting} = {root} is not a folder; set {setting}=DIR or {variable}=DIR)"
    return ""


LIGHTNING_VERSION_KEY = "pytorch-lightning_version"  # in every checkpoint Lightning writes


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files, written atomically and read safely.

    ``save_checkpoint`` runs ``torch.save`` into a temporary file of the same folder that replaces the
    target only once complete (:func:`~qasa_vqa.storage.atomic_save`), so a kill or a full disk leaves
    the previous ``last.ckpt`` intact, never half a file. ``load_checkpoint`` always reads with
    ``weights_only=True`` (whatever the caller asks), and refuses, naming the file: a truncated or foreign
    file, Python objects that could run code, a file that is not a Lightning checkpoint, and the weights
    of another architecture than the model being trained (checked against :meth:`attach`'s trainer's
    model before anything is restored). Paths with a protocol (``s3://``) go through Lightning's own
    code.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> SafeCheckpointIO:
        """Compare loaded checkpoints with ``trainer``'s model."""
        self._trainer = trainer
        return self

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # Lightning's checks and remote paths
            return
        atomic_save(path, lambda partial: torch.save(checkpoint, partial))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        hint = "; resume=null starts over without it"
        try:
            checkpoint = load_torch_file(path, map_location=map_location or "cpu", what="training checkpoint")
        except CheckpointError as error:
            raise CheckpointError(f"{error}{hint}") from None
        if not (
            isinstance(checkpoint, dict)
            and isinstance(checkpoint.get("state_dict"), Mapping)
            and LIGHTNING_VERSION_KEY in checkpoint
        ):
            found = (
                sorted(map(str, checkpoint))[:6]
                if isinstance(checkpoint, dict)
                else type(checkpoint).__name__
            )
            raise CheckpointError(
                f"{path}: not a Lightning training checkpoint (found {found}): resume takes a run's "
                f"checkpoints/last.ckpt; model files such as qasa_model.pt are for evaluate and score{hint}"
            )
        module = self._trainer.lightning_module if self._trainer is not None else None
        if module is not None and module.strict_loading:
            report = _key_report(module, checkpoint["state_dict"])
            if not report.ok:
                raise CheckpointError(
                    f"{path}: another architecture: the checkpoint's weights do not fit this run's model "
                    f"({report}){hint}"
                )
        return checkpoint


def _key_report(module: LightningModule, state_dict: Mapping[str, Any]) -> KeyReport:
    """How ``state_dict`` fits ``module``; buffers the module holds unset (``None``, e.g. CLIP prompt
    features before they are known) may come from the file."""
    report = KeyReport.compare(module.state_dict(), state_dict)
    unset = {
        f"{prefix}.{name}" if prefix else name
        for prefix, child in module.named_modules()
        for name, value in child._buffers.items()
        if value is None
    }
    return KeyReport(report.missing, tuple(k for k in report.unexpected if k not in unset), report.mismatched)


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
    experiment. Its checkpoints go through :class:`SafeCheckpointIO`."""
    settings = (
        OmegaConf.to_container(hardware, resolve=True) if isinstance(hardware, DictConfig) else dict(hardware)
    )
    instance = hydra.utils.instantiate(logger, save_dir=str(output_dir)) if logger else False
    checkpoint_io = SafeCheckpointIO()
    plugins = [checkpoint_io, *(settings.pop("plugins", None) or ())]
    trainer = Trainer(
        **settings,
        **options,
        logger=instance,
        callbacks=list(callbacks),
        default_root_dir=output_dir,
        plugins=plugins,
    )
    checkpoint_io.attach(trainer)
    return trainer


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
            while isinstance(cause, InstantiationException):  # nested nodes wrap it once per level
                cause = cause.__cause__
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
