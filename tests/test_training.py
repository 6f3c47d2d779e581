"""Tests of lap_speechbrain.training: crash-safe checkpoints, stage bookkeeping, override checks, progress bars."""

import re
from pathlib import Path

import pytest
import speechbrain as sb
import torch

from lap_speechbrain import fileio
from lap_speechbrain.fileio import NoSpaceLeftError, atomic_write_json
from lap_speechbrain.nnet import SubCenterClassifier
from lap_speechbrain.training.checkpoints import AtomicCheckpointer
from lap_speechbrain.training.progress import described_progress_bars
from lap_speechbrain.training.settings import check_override_keys, unknown_override_keys
from lap_speechbrain.training.stages import (
    check_stage_order,
    class_labels,
    finished_records,
    load_selected,
    stage_classes,
    stage_record,
    start_record,
    write_stage_record,
)

REPO = Path(__file__).resolve().parents[1]


def test_half_written_checkpoints_are_never_recovered(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    good = checkpointer.save_checkpoint(meta={"EER": 0.2})
    # What a SIGKILL during a save or a delete leaves behind: hidden, incomplete folders.
    for leftover in (".staging+CKPT+2099-01-01+00-00-00+00", ".trash+CKPT+2099-01-01+00-00-00+01"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 4070908800\n")
    assert checkpointer.find_checkpoint().path == good.path
    AtomicCheckpointer(tmp_path, {"model": model})  # a restarted run cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.path.name]

    checkpointer.save_and_keep_only(meta={"EER": 0.3}, min_keys=["EER"], importance_keys=[])
    checkpointer.save_and_keep_only(meta={"EER": 0.4}, min_keys=["EER"], importance_keys=[])
    kept = sorted(c.meta["EER"] for c in checkpointer.list_checkpoints())
    assert kept == [0.2, 0.4]  # the best and the latest
    atomic_write_json(tmp_path / "done.json", {"a": 1})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_full_disk_during_a_checkpoint_names_the_folder_and_frees_the_staging(tmp_path, monkeypatch):
    checkpointer = AtomicCheckpointer(tmp_path, {"model": torch.nn.Linear(2, 2)})
    real_save = torch.save

    def save_until_full(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # the partial file takes the last free space
        raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", save_until_full)
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 0)
    with pytest.raises(NoSpaceLeftError, match=f"no space left on {tmp_path} "):
        checkpointer.save_checkpoint(meta={"EER": 0.1})
    assert list(tmp_path.iterdir()) == []  # no staging folder holds the space
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpointer.save_checkpoint(meta={"EER": 0.1}).path.exists()


class Exploit:
    """A pickle that runs code when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpoint = AtomicCheckpointer(tmp_path, {"model": model}).save_checkpoint(meta={"EER": 0.1})
    marker = tmp_path / "pwned"
    torch.save({"weight": Exploit(marker)}, checkpoint.path / "model.ckpt")
    # SpeechBrain's recovery calls torch.load without weights_only: safe only because
    # torch >= 2.6 defaults to weights_only=True, the floor that setup.py requires.
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointer(tmp_path, {"model": torch.nn.Linear(2, 2)}).recover_if_possible()
    assert not marker.exists()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', (REPO / "setup.py").read_text())
    assert floor and (int(floor.group(1)), int(floor.group(2))) >= (2, 6)


def test_stage_order_is_validated():
    assert check_stage_order(["frozen", "joint"], ["joint"]) == ["joint"]
    with pytest.raises(ValueError, match=r"unknown stages \['lmft'\]; expected .* stages=\['frozen', 'joint'\]"):
        check_stage_order(["frozen", "joint"], ["frozen", "lmft"])
    with pytest.raises(ValueError, match="order"):
        check_stage_order(["frozen", "joint"], ["joint", "frozen"])
    with pytest.raises(ValueError, match="non-empty"):
        check_stage_order(["frozen", "joint"], [])


def test_stage_records_drive_resume(tmp_path):
    stages = ["frozen", "joint", "lmft"]
    assert start_record(tmp_path, stages, "frozen") is None  # the pre-trained SSL model
    with pytest.raises(RuntimeError, match=r"stage 'joint' starts from .* stage 'frozen', which has not finished"):
        start_record(tmp_path, stages, "joint")
    write_stage_record(tmp_path / "frozen", {"stage": "frozen", "classes": 30})
    assert stage_record(tmp_path / "frozen") == {"stage": "frozen", "classes": 30}
    assert start_record(tmp_path, stages, "joint")["stage"] == "frozen"
    write_stage_record(tmp_path / "lmft", {"stage": "lmft"})
    assert [r["stage"] for r in finished_records(tmp_path, stages, "joint")] == ["frozen"]
    assert [r["stage"] for r in finished_records(tmp_path, stages, "lmft")] == ["frozen", "lmft"]


@pytest.mark.parametrize("keep, classes", [(True, 15), (False, 5)])
def test_speed_classes_are_kept_after_stage_1_by_default(tmp_path, keep, classes):
    speakers, speeds = 5, 2
    first = stage_classes(speakers, speeds, speed_perturb=True)
    assert first == 15
    assert stage_classes(speakers, speeds, speed_perturb=False, previous_classes=first,
                         keep_previous_classes=keep) == classes

    # The rows of every class both classifiers have are carried over.
    previous = SubCenterClassifier(8, first, num_subcenters=3)
    encoder = torch.nn.Linear(4, 8)
    torch.save(previous.state_dict(), tmp_path / "classifier.ckpt")
    torch.save(encoder.state_dict(), tmp_path / "embedding_model.ckpt")
    torch.manual_seed(1)
    following, new_encoder = SubCenterClassifier(8, classes, num_subcenters=3), torch.nn.Linear(4, 8)
    load_selected(tmp_path, new_encoder, following)
    assert torch.equal(following.weight, previous.weight[: classes * 3])
    assert torch.equal(new_encoder.weight, encoder.weight)
    # A classifier with more classes than the checkpoint keeps fresh rows for the others.
    larger = SubCenterClassifier(8, 20, num_subcenters=3)
    fresh = larger.weight[45:].clone()
    load_selected(tmp_path, torch.nn.Linear(4, 8), larger)
    assert torch.equal(larger.weight[:45], previous.weight) and torch.equal(larger.weight[45:], fresh)


def test_class_labels_name_each_speed():
    assert class_labels(["a", "b"], 2) == ["a", "b"]
    assert class_labels(["a", "b"], 6)[2:] == ["a@speed1", "b@speed1", "a@speed2", "b@speed2"]
    with pytest.raises(ValueError, match="5 classes are not a multiple of the 2 speakers"):
        class_labels(["a", "b"], 5)


YAML = """\
seed: 1
frozen:
    epochs: 40
    margin_schedule: !new:lap_speechbrain.nnet.MarginScheduler
        final_margin: 0.3
noise_folders: {}
evaluation: null
trial_lists:
    O: veri_test2.txt
"""


def test_overrides_may_only_name_keys_of_the_yaml():
    assert unknown_override_keys(YAML, None) == []
    assert unknown_override_keys(YAML, "{frozen: {epochs: 2, margin_schedule: {final_margin: 0.2}}}") == []
    # Open mappings: empty in the yaml, null in the yaml, or named as open.
    assert unknown_override_keys(YAML, "{noise_folders: {rir: /r}, evaluation: {a: 1}, trial_lists: {X: x}}",
                                 open_keys=("trial_lists",)) == []
    assert unknown_override_keys(YAML, "{frozen: {epoch: 2, margin_schedule: {final_margni: 0.2}}, trial_lists: {X: x}}") == [
        "frozen.epoch (valid keys of frozen: ['epochs', 'margin_schedule'])",
        "frozen.margin_schedule.final_margni (valid keys of frozen.margin_schedule: ['final_margin'])",
        "trial_lists.X (valid keys of trial_lists: ['O'])",
    ]
    with pytest.raises(ValueError, match=r"unknown settings for train.yaml: frozen\.epoch "):
        check_override_keys(YAML, {"frozen": {"epoch": 2}}, source="train.yaml")


class ToyBrain(sb.Brain):
    """A one-layer Brain whose progress bars are named by on_stage_start, as the training recipe's are."""

    def compute_forward(self, batch, stage):
        return self.modules.model(batch)

    def compute_objectives(self, predictions, batch, stage):
        return predictions.pow(2).mean()

    def on_stage_start(self, stage, epoch=None):
        self.bar_description = f"toy: {stage.name.lower()} epoch {epoch}"


def test_progress_bars_name_the_stage_pass_and_epoch(capsys):
    brain = ToyBrain(modules={"model": torch.nn.Linear(2, 1)}, opt_class=lambda params: torch.optim.SGD(params, 0.1),
                     run_opts={"device": "cpu"})
    data = [torch.randn(3, 2) for _ in range(2)]
    with described_progress_bars(lambda: brain.bar_description):
        brain.fit(range(1, 3), data, data[:1])
    bars = capsys.readouterr().err
    for name in ("toy: train epoch 1", "toy: valid epoch 1", "toy: train epoch 2", "toy: valid epoch 2"):
        assert f"{name}: 100%" in bars, bars
    brain.fit(range(3, 4), data, data[:1])  # outside the context: SpeechBrain's plain bars again
    assert "toy:" not in capsys.readouterr().err
