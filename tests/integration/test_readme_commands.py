"""Every command in the README's shell blocks is real: make targets exist, ``qasa-vqa`` command lines
parse with the real parser, and every ``python -m qasa_vqa.<entry point>`` line composes its Hydra
config with exactly the overrides written (a misspelt key, group or option fails here).

The commands that need no dataset or weights run as written: the ``qasa-vqa split`` lines on label files
the test generates under the names they use, and ``make -n`` over every make target. Synopsis lines
(``[--option]``, ``...``, ``a|b``) are left out; they describe, they are not run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from qasa_vqa.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"qasa_vqa.train": "train", "qasa_vqa.pretrain": "pretrain", "qasa_vqa.evaluate": "eval"}


def _commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "[--" in line or "..." in line or re.search(r"\w\|\w", line.split("#")[0]):
                continue
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                command, words = words[:cut], words[cut + 1 :]
                while command and re.fullmatch(r"[A-Z_]+=.*", command[0]):  # VAR=value prefixes
                    command = command[1:]
                if command and command[0] in ("torchrun", "srun") and "-m" in command:  # launchers
                    command = ["python", *command[command.index("-m") :]]
                if command:
                    commands.append(command)
    return commands


COMMANDS = _commands()


def _id(words: list[str]) -> str:
    return " ".join(words)[:80]


def test_the_readme_has_commands_of_every_kind() -> None:
    kinds = {words[0] if words[0] != "python" else words[2].split(".")[-1] for words in COMMANDS}
    assert {"make", "qasa-vqa", "train", "pretrain", "evaluate"} <= kinds, kinds
    assert COMMANDS[0] == ["make", "demo"] and COMMANDS[1] == ["make", "test"], (
        "the two set-up commands first"
    )


@pytest.mark.parametrize("words", [w for w in COMMANDS if w[0] == "make"], ids=_id)
def test_make_targets_exist(words: list[str]) -> None:
    targets = set(re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert set(words[1:]) <= targets, f"{words}: not a target of the Makefile ({sorted(targets)})"


@pytest.mark.parametrize(
    "words", [w for w in COMMANDS if w[0] == "qasa-vqa" or w[:3] == ["python", "-m", "qasa_vqa"]], ids=_id
)
def test_command_lines_parse(words: list[str]) -> None:
    argv = words[1:] if words[0] == "qasa-vqa" else words[3:]
    build_parser().parse_args(argv)  # exits (fails the test) on an unknown command or option


def _single_run(overrides: list[str]) -> list[str]:
    """The first run of a multirun line: ``key=a,b,c`` -> ``key=a`` (lists in brackets are kept)."""
    out = []
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else override)
    return out


@pytest.mark.parametrize(
    "words", [w for w in COMMANDS if w[:2] == ["python", "-m"] and w[2] in CONFIGS], ids=_id
)
def test_entry_point_overrides_compose(words: list[str]) -> None:
    overrides = _single_run([w for w in words[3:] if w != "-m"])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=CONFIGS[words[2]], overrides=overrides)
    assert cfg.get("name")


def _sandbox(folder: Path) -> None:
    """The label files the README's split commands name, generated: the QASA pool JSON (1,999 entries)
    and an LSVQ-style FAST-VQA label file (2,400 entries)."""
    rng = np.random.default_rng(0)
    pool = [{"filename": f"yfcc-batch1/{i}.mp4", "label": float(rng.uniform(20, 90))} for i in range(1999)]
    (folder / "semisupervised.json").write_text(json.dumps(pool))
    lines = [f"yfcc-batch2/{i}.mp4, 10.0, 30.0, {rng.uniform(20, 90):.3f}" for i in range(2400)]
    (folder / "labels_train.txt").write_text("\n".join(lines) + "\n")


RUNNABLE = [w for w in COMMANDS if w[:2] == ["qasa-vqa", "split"]]


@pytest.mark.parametrize("words", RUNNABLE, ids=_id)
def test_split_commands_run_as_written(
    words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sandbox(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(words[1:]) == 0
    out = Path(words[words.index("--out") + 1])
    split = json.loads(out.read_text())
    assert split and out.stat().st_size > 0


def test_make_lines_dry_run() -> None:
    targets = sorted({t for w in COMMANDS if w[0] == "make" for t in w[1:]})
    result = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "qasa_vqa.demo" in result.stdout and "pytest" in result.stdout
