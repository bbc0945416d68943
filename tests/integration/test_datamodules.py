"""DataModules: the Lightning contract (prepare_data writes, setup reads), batch shapes of docs/method.md
4.2 / 5.1 / 2.2, the labelled-driven epoch with a cycling unlabelled stream, and a real Trainer run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from corpora import write_labelled_clips, write_version_tree
from qasa_vqa.data.datamodules import ManifestSource, PretrainDataModule, SemiSupervisedDataModule
from qasa_vqa.data.splits import SplitError
from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.errors import QasaVqaError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labelled_clips(tmp_path_factory.mktemp("corpus"), 9, frames=72)


def _module(corpus: Path, tmp_path: Path, **options) -> SemiSupervisedDataModule:
    settings = {
        "n_labelled": 4,
        "n_unlabelled": 3,
        "n_validation": 1,
        "split_dir": tmp_path / "splits",
        "batch_size": 2,
        "test_sets": {"mine": {"manifest": corpus}},
    }
    settings.update(options)
    return SemiSupervisedDataModule({"manifest": corpus}, **settings)


def _state(module) -> dict:
    return {key: repr(value) for key, value in vars(module).items()}


def test_prepare_data_writes_the_split_and_keeps_no_state(corpus: Path, tmp_path: Path) -> None:
    module = _module(corpus, tmp_path)
    before = _state(module)
    module.prepare_data()
    assert _state(module) == before
    assert module.split_file.parent == tmp_path / "splits"
    assert module.split_file.name == "manifest_random_4lab_1val_3unlab_seed0.json"
    payload = json.loads(module.split_file.read_text())
    assert payload["counts"] == {"labelled": 4, "validation": 1, "unlabelled": 3}
    content = module.split_file.read_bytes()
    _module(corpus, tmp_path).prepare_data()  # a second process finds the file and leaves it
    assert module.split_file.read_bytes() == content


def test_setup_needs_the_split_file_and_the_same_manifest(corpus: Path, tmp_path: Path) -> None:
    module = _module(corpus, tmp_path)
    with pytest.raises(SplitError, match="no split file yet; call prepare_data"):
        module.setup("fit")
    module.prepare_data()
    changed = tmp_path / "manifest.csv"
    changed.write_text(corpus.read_text().replace(",10\n", ",11\n"))
    moved = SemiSupervisedDataModule(
        {"manifest": changed, "root": corpus.parent},
        split_file=module.split_file,
        n_labelled=4,
        n_unlabelled=3,
    )
    with pytest.raises(SplitError, match=r"another version of .*manifest\.csv"):
        moved.setup("fit")


def test_train_batches_have_the_shapes_of_the_paper(corpus: Path, tmp_path: Path) -> None:
    module = _module(corpus, tmp_path)
    module.prepare_data()
    module.setup("fit")
    loader = module.train_dataloader()
    batches = iter(loader)
    assert len(loader) == 2  # 4 labelled / batch 2 drive the epoch; the unlabelled loader follows
    batch, _, _ = next(batches)
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    assert labelled["frag_v"].shape == (2, 3, 32, 224, 224)
    assert labelled["frag_a"].shape == (2, 3, 32, 224, 224)
    assert labelled["resize_v"].shape == (2, 32, 3, 224, 224)
    assert labelled["resize_a"].shape == (2, 8, 3, 224, 224)
    assert labelled["mos"].shape == (2,) and labelled["mos"].dtype == torch.float32
    assert unlabelled["frag_v"].shape == (2, 3, 32, 224, 224) and "mos" not in unlabelled
    split_paths = {name: {r.path for r in getattr(module.split, name)} for name in ("labelled", "unlabelled")}
    assert set(labelled["path"]) <= split_paths["labelled"]
    assert set(unlabelled["path"]) <= split_paths["unlabelled"]


def test_validation_and_test_loaders(corpus: Path, tmp_path: Path) -> None:
    module = _module(corpus, tmp_path, val_sets={"extra": ManifestSource(corpus)})
    module.prepare_data()
    module.setup("fit")
    assert module.val_names == ["validation", "extra"]
    loaders = module.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [1, 9]
    batch = next(iter(loaders[0]))
    assert batch["frag"].shape == (1, 3, 64, 224, 224) and batch["resize"].shape == (1, 64, 3, 224, 224)
    assert batch["path"] == [module.split.validation[0].path]
    module.setup("test")
    assert module.test_names == ["mine"] and len(module.test_dataloader()[0]) == 9


def test_official_strategy_gives_the_paper_split(tmp_path: Path) -> None:
    pool = tmp_path / "semisupervised.json"
    pool.write_text(json.dumps([{"filename": f"b/{i}.mp4", "label": 20 + i % 60} for i in range(1999)]))
    module = SemiSupervisedDataModule({"manifest": pool}, strategy="official", split_dir=tmp_path)
    module.prepare_data()
    module.setup("fit")
    assert module.split_file.name == "semisupervised_official-qasa.json"
    assert len(module.datasets["labelled"]) == 500 and len(module.datasets["unlabelled"]) == 1499
    assert module.split.labelled[1].path == "b/4.mp4"
    loader = module.train_dataloader()
    iter(loader)
    assert len(loader) == 83  # 500 // 6, as in the paper


def test_bad_settings_are_reported(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="unknown split strategy 'best'"):
        _module(corpus, tmp_path, strategy="best")
    module = _module(corpus, tmp_path, n_labelled=1, n_unlabelled=2, batch_size=2)
    module.prepare_data()
    module.setup("fit")
    with pytest.raises(
        SplitError, match="1 labelled videos over 1 process\\(es\\) do not fill one batch of 2"
    ):
        module.train_dataloader()


class _Recorder(LightningModule):
    """Records which videos each training step saw; learns nothing of note."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[str], list[str]]] = []

    def training_step(self, batch, batch_idx):
        labelled, unlabelled = batch["labelled"], batch["unlabelled"]
        assert labelled["frag_v"].shape[1:] == (3, 32, 224, 224)
        self.seen.append((self.current_epoch, list(labelled["path"]), list(unlabelled["path"])))
        return (self.weight - labelled["mos"].mean()) ** 2 + 0 * unlabelled["frag_a"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_two_epochs(datamodule, root: Path, recorder: LightningModule | None = None) -> LightningModule:
    recorder = recorder or _Recorder()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    trainer.fit(recorder, datamodule=datamodule)
    return recorder


def test_two_workers_two_epochs_with_a_trainer(corpus: Path, tmp_path: Path) -> None:
    module = _module(corpus, tmp_path, n_validation=0, n_unlabelled=5, num_workers=2)
    recorder = _fit_two_epochs(module, tmp_path)
    assert [epoch for epoch, _, _ in recorder.seen] == [0, 0, 1, 1]
    by_epoch = [[p for e, paths, _ in recorder.seen if e == epoch for p in paths] for epoch in (0, 1)]
    assert sorted(by_epoch[0]) == sorted(by_epoch[1])  # every labelled video, once per epoch
    assert by_epoch[0] != by_epoch[1]  # reshuffled (set_epoch reached the sampler)
    stream = [path for _, _, paths in recorder.seen for path in paths]
    assert len(stream) == 8 and sorted(stream[:5]) == sorted({r.path for r in module.split.unlabelled})
    again = _fit_two_epochs(
        _module(corpus, tmp_path, n_validation=0, n_unlabelled=5, num_workers=2), tmp_path
    )
    assert again.seen == recorder.seen  # the same seed gives the same batches


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_version_tree(tmp_path_factory.mktemp("tree"), scenes=3, frames=72)


def test_pretrain_batches_have_the_shapes_of_the_reference(tree: Path) -> None:
    module = PretrainDataModule(tree, batch_size=2)
    before = copy.copy(vars(module))
    module.prepare_data()
    assert vars(module) == before
    module.setup("fit")
    loader = module.train_dataloader()
    assert len(loader) == 2  # 3 scenes, batches of 2, the last one short
    batch = next(iter(loader))
    assert batch["view1"].shape == (2, 10, 3, 32, 224, 224)
    assert batch["view2"].shape == (2, 10, 3, 32, 224, 224)
    assert batch["versions"].shape == (2, 10) and (batch["versions"][:, 0] == 0).all()


def test_pretrain_without_a_tree_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(QasaVqaError, match="qasa-vqa demo-data"):
        PretrainDataModule(tmp_path / "missing").prepare_data()


class _FakeTrainer:
    """What the DataModule reads of a DDP trainer: the world size and this process's rank."""

    def __init__(self, world_size: int, global_rank: int) -> None:
        self.world_size, self.global_rank = world_size, global_rank


def test_ddp_ranks_see_disjoint_videos_and_the_same_number_of_batches(corpus: Path, tmp_path: Path) -> None:
    views = {"segments": 2, "frames_per_segment": 2, "grid": 2, "patch": 16, "size": 32}
    seen, unlabelled = [], []
    for rank in range(2):
        module = _module(corpus, tmp_path, n_labelled=4, n_unlabelled=4, n_validation=0, views=views)
        module.trainer = _FakeTrainer(2, rank)
        module.prepare_data()
        module.setup("fit")
        loader = module.train_dataloader()
        batches = [batch for batch, _, _ in loader]
        assert len(batches) == 1  # 4 labelled / 2 ranks / batch 2
        seen.append([path for batch in batches for path in batch["labelled"]["path"]])
        unlabelled.append([path for batch in batches for path in batch["unlabelled"]["path"]])
    assert not set(seen[0]) & set(seen[1]) and not set(unlabelled[0]) & set(unlabelled[1])
    assert sorted(seen[0] + seen[1]) == sorted(r.path for r in module.split.labelled)


def test_too_few_unlabelled_videos_for_a_batch_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    """One unlabelled video cannot fill a batch of 2: the authors' cyclic iterator over a drop_last loader
    would wait forever; here the message says what to change."""
    module = _module(corpus, tmp_path, n_labelled=4, n_unlabelled=1, n_validation=0)
    module.prepare_data()
    module.setup("fit")
    with pytest.raises(SplitError, match="1 unlabelled videos over 1 process"):
        module.train_dataloader()


def test_sources_can_pick_a_split_of_a_plain_csv(corpus: Path, tmp_path: Path) -> None:
    rows = corpus.read_text().splitlines()
    tagged = tmp_path / "tagged.csv"
    tagged.write_text(
        "path,mos,split\n"
        + "".join(f"{row},{'test' if i >= 6 else 'train'}\n" for i, row in enumerate(rows[1:]))
    )
    module = SemiSupervisedDataModule(
        {"manifest": tagged, "root": corpus.parent, "split": "train"},
        n_labelled=4,
        split_dir=tmp_path / "splits",
        test_sets={"held-out": {"manifest": tagged, "root": corpus.parent, "split": "test"}},
    )
    module.prepare_data()
    module.setup()
    assert module.split_file.name == "tagged-train_random_4lab_0val_allunlab_seed0.json"
    assert module.split.inputs["manifest_split"] == "train" and len(module.split.unlabelled) == 2
    train_paths = {r.path for r in module.split.labelled + module.split.unlabelled}
    test_paths = [r.path for r in module.datasets["test/held-out"].records]
    assert test_paths == ["clips/c6.mp4", "clips/c7.mp4", "clips/c8.mp4"] and not train_paths & set(
        test_paths
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    knobs = {"scenes": 5, "variants": 3, "frames": 40, "width": 128, "height": 96, "tree_scenes": 3}
    return generate_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", seed=0, progress=False, **knobs)


def test_two_workers_two_epochs_on_the_demo_corpus(demo, tmp_path: Path) -> None:
    module = SemiSupervisedDataModule(
        {"manifest": demo.manifest, "split": "train"},
        n_labelled=4,
        n_validation=1,
        split_dir=tmp_path,
        test_sets={"demo-test": {"manifest": demo.manifest, "split": "test"}},
        batch_size=2,
        num_workers=2,
    )
    recorder = _fit_two_epochs(module, tmp_path)
    assert [epoch for epoch, _, _ in recorder.seen] == [0, 0, 1, 1]
    assert len(module.split.unlabelled) == demo.num_train - 5
    module.setup("test")
    batch = next(iter(module.test_dataloader()[0]))
    assert batch["frag"].shape == (1, 3, 64, 224, 224) and 0 <= batch["mos"].item() <= 1


class _PretrainRecorder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[str], torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, list(batch["scene"]), batch["versions"].clone()))
        return (self.weight - batch["view1"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_pretraining_two_workers_two_epochs_on_the_demo_tree(demo, tmp_path: Path) -> None:
    module = PretrainDataModule(demo.tree_dir, batch_size=2, clip_len=8, grid=7, patch=16, num_workers=2)
    recorder = _fit_two_epochs(module, tmp_path, _PretrainRecorder())
    assert [epoch for epoch, _, _ in recorder.seen] == [0, 0, 1, 1]  # 3 scenes: a batch of 2 and of 1
    for epoch in (0, 1):
        scenes = [s for e, names, _ in recorder.seen if e == epoch for s in names]
        assert sorted(scenes) == sorted(f"{name}.mp4" for name in demo.tree_scenes)
    versions = torch.cat([v for _, _, v in recorder.seen])
    assert versions.shape == (6, 10) and (versions[:, 0] == 0).all()


def test_pin_memory_auto_pins_only_with_cuda_and_the_split_is_prepared_once(tmp_path: Path) -> None:
    module = SemiSupervisedDataModule({"manifest": tmp_path / "m.csv"}, n_labelled=2, pin_memory="auto")
    assert module.pin_memory is torch.cuda.is_available()
    assert module.prepare_data_per_node is False  # global rank 0 writes the split; every rank reads it
    with pytest.raises(ValueError, match="pin_memory"):
        SemiSupervisedDataModule({"manifest": tmp_path / "m.csv"}, n_labelled=2, pin_memory="sometimes")
