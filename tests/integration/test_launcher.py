"""The SLURM launcher of cluster sweeps (``+cluster=slurm``, conf/cluster/slurm.yaml) composes with the
label-budget sweep: the submitit SLURM launcher with the partition, GPUs, time limit and one task per GPU
from the command line, its folder under the sweep folder, and a trainer whose DDP ranks are those tasks.
The launcher is then built and run up to ``sbatch``, which is a stand-in here that keeps the script and
submits nothing (no SLURM, no network), so the batch script itself is checked."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
COMMAND = [  # python -m qasa_vqa.train -m <these>
    "sweep=label_budget",
    "+cluster=slurm",
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.gpus_per_node=4",
    "hydra.launcher.timeout_min=240",
]


def _compose(overrides: list[str], sweep_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[*overrides, f"hydra.sweep.dir={sweep_dir}"],
            return_hydra_config=True,
        )


@pytest.fixture
def hydra_config(monkeypatch: pytest.MonkeyPatch) -> Callable[[DictConfig], None]:
    """Sets HydraConfig for ``${hydra:...}`` as a launched job has it; the previous state comes back."""
    instance = HydraConfig.instance()
    monkeypatch.setattr(instance, "cfg", instance.cfg)
    return instance.set_config


def test_the_slurm_launcher_composes_from_the_command_line(
    tmp_path: Path, hydra_config: Callable[[DictConfig], None]
) -> None:
    cfg = _compose(COMMAND, tmp_path / "sweep")
    launcher = cfg.hydra.launcher
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "submitit_slurm"
    assert launcher._target_ == SLURM_LAUNCHER
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 240)
    assert launcher.tasks_per_node == 4 and launcher.nodes == 1  # one task per GPU
    assert launcher.cpus_per_task and launcher.mem_per_gpu and launcher.array_parallelism
    assert Path(launcher.submitit_folder).parent == tmp_path / "sweep" / "slurm"
    hydra_config(cfg)
    assert Path(cfg.sweep_csv) == tmp_path / "sweep" / "results.csv"  # the runs' rows, beside the logs
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer["accelerator"] == "gpu"
    assert (trainer["devices"], trainer["num_nodes"]) == (4, 1)  # the DDP ranks are the SLURM tasks


def test_the_command_line_trainer_and_node_count_win(
    tmp_path: Path, hydra_config: Callable[[DictConfig], None]
) -> None:
    cfg = _compose(
        [
            "experiment=500lab_1500unlab",
            *COMMAND,
            "trainer=ddp",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=8",
        ],
        tmp_path,
    )
    hydra_config(cfg)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert cfg.hydra.launcher.tasks_per_node == 8
    assert trainer["strategy"] == "ddp" and (trainer["devices"], trainer["num_nodes"]) == (8, 2)
    assert trainer["precision"] == "32-true"  # the experiment's own setting is kept


def _stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _task(cfg: DictConfig) -> None:  # never runs: nothing is submitted
    raise AssertionError("a job ran")


def test_the_launcher_builds_the_batch_script_without_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit.core.core

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "sbatch_script.sh"
    _stand_in(bin_dir, "srun", "exit 1")  # submitit only checks that srun exists
    _stand_in(bin_dir, "sbatch", f'cp "$1" "{script}"\necho "Submitted batch job 4242"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.core.core.Job, "results", lambda job: [job.job_id])  # no waiting

    sweep_dir = tmp_path / "sweep"
    cfg = _compose(COMMAND, sweep_dir)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__module__ + "." + type(launcher).__name__ == SLURM_LAUNCHER
    launcher.setup(hydra_context=None, task_function=_task, config=cfg)
    runs = [[f"data.n_labelled={n}", f"seed={s}"] for n in (6, 12) for s in (0, 1)]
    assert launcher.launch(runs, initial_job_idx=0) == [f"4242_{i}" for i in range(4)]

    flags = {
        line.split("=", 1)[0].removeprefix("#SBATCH --"): line.split("=", 1)[1]
        for line in script.read_text().splitlines()
        if line.startswith("#SBATCH --") and "=" in line
    }
    assert flags["partition"] == "gpu" and flags["time"] == "240" and flags["job-name"] == f"qasa-{cfg.name}"
    assert flags["gpus-per-node"] == "4" and flags["ntasks-per-node"] == "4" and flags["nodes"] == "1"
    assert flags["cpus-per-task"] == str(cfg.hydra.launcher.cpus_per_task)
    assert flags["mem-per-gpu"] == cfg.hydra.launcher.mem_per_gpu
    assert flags["array"] == f"0-3%{min(4, cfg.hydra.launcher.array_parallelism)}"
    assert Path(flags["output"]).is_relative_to(sweep_dir / "slurm")  # the logs, under the sweep folder
    pickles = list((sweep_dir / "slurm").rglob("*_submitted.pkl"))
    assert len(pickles) == 4  # one pickled run per array task, waiting for a scheduler
