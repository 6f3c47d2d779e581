"""Unit tests of the training data pipeline, schedules and crash-safe checkpoints."""

import csv

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from lap_speechbrain.data.pipelines import (
    change_speed,
    read_crop,
    train_dataset,
    valid_dataset,
)
from lap_speechbrain.fileio import atomic_write_json
from lap_speechbrain.nnet.schedulers import WarmupCosineScheduler
from lap_speechbrain.training.checkpoints import AtomicCheckpointer
from lap_speechbrain.training.stages import check_stages

SPEAKERS = ["spk_b", "spk_a", "spk_c"]


@pytest.fixture
def manifest(tmp_path):
    """Three speakers with two files each; every file is a ramp so crops reveal their offset."""
    rows = []
    for speaker in SPEAKERS:
        for index, seconds in enumerate((0.3, 1.2)):
            path = tmp_path / speaker / f"{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            samples = int(16000 * seconds)
            soundfile.write(path, (np.arange(samples) / samples * 0.9).astype(np.float32), 16000, subtype="FLOAT")
            rows.append({"ID": f"{speaker}/{index}", "duration": seconds, "wav": str(path), "spk_id": speaker})
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["ID", "duration", "wav", "spk_id"])
        writer.writeheader()
        writer.writerows(rows)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(sorted(SPEAKERS))
    return path, encoder, rows


def test_crops_read_a_contiguous_segment_and_wrap_pad_short_files(manifest):
    _, _, rows = manifest
    long_file, short_file = rows[1], rows[0]
    crop = read_crop(long_file["wav"], long_file["duration"], 8000, 16000)
    step = 0.9 / (1.2 * 16000)
    assert crop.shape == (8000,)
    np.testing.assert_allclose(np.diff(crop), step, rtol=1e-3)  # one contiguous piece of the ramp
    short = read_crop(short_file["wav"], short_file["duration"], 8000, 16000)
    whole, _ = soundfile.read(short_file["wav"], dtype="float32")
    np.testing.assert_array_equal(short, np.resize(whole, 8000))


def test_speed_perturbation_moves_labels_to_one_class_per_speed(manifest):
    path, encoder, rows = manifest
    num_speakers = len(SPEAKERS)
    plain = train_dataset(path, encoder, crop_seconds=0.5, sample_rate=16000, speed_factors=(0.9, 1.1), speed_prob=0.0)
    for item, row in zip(plain, rows):
        assert int(item["spk_id_encoded"]) == encoder.encode_label(row["spk_id"])
        assert item["sig"].shape == (8000,)

    perturbed = train_dataset(path, encoder, crop_seconds=0.5, sample_rate=16000, speed_factors=(0.9, 1.1), speed_prob=1.0)
    offsets = set()
    for _ in range(8):
        for item, row in zip(perturbed, rows):
            label = encoder.encode_label(row["spk_id"])
            offset = int(item["spk_id_encoded"]) - label
            assert offset in (num_speakers, 2 * num_speakers)
            assert item["sig"].shape == (8000,)
            offsets.add(offset)
    assert offsets == {num_speakers, 2 * num_speakers}


def test_speed_perturbation_changes_duration_and_pitch():
    tone = torch.sin(2 * torch.pi * 200 * torch.arange(16000) / 16000)
    faster = change_speed(tone, 1.1, 16000)
    slower = change_speed(tone, 0.9, 16000)
    assert abs(len(faster) - 16000 / 1.1) <= 1 and abs(len(slower) - 16000 / 0.9) <= 1
    peak = torch.fft.rfft(faster).abs().argmax() * 16000 / len(faster)
    assert abs(float(peak) - 220) < 3


def test_valid_dataset_names_missing_trial_utterances(manifest):
    path, _, _ = manifest
    dataset = valid_dataset(path, ["spk_a/1", "spk_b/0"], sample_rate=16000, max_seconds=1.0)
    items = {item["id"]: item["sig"] for item in dataset}
    assert sorted(items) == ["spk_a/1", "spk_b/0"] and items["spk_a/1"].shape == (16000,)
    with pytest.raises(ValueError, match="spk_z/0"):
        valid_dataset(path, ["spk_z/0"], sample_rate=16000)


def test_warmup_cosine_schedule_resumes_from_its_checkpoint(tmp_path):
    optimizer = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    schedule = WarmupCosineScheduler(peak_lr=1e-3, final_lr=1e-5, warmup_fraction=0.1)
    schedule.set_total_steps(50)
    lrs = [schedule.apply(optimizer)] + [schedule(optimizer)[1] for _ in range(49)]
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 4
    assert lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotonic decay after warm-up

    restored = WarmupCosineScheduler(peak_lr=1e-3, final_lr=1e-5, warmup_fraction=0.1)
    schedule.current_step = 17
    schedule.save(tmp_path / "lr.ckpt")
    restored.load(tmp_path / "lr.ckpt")
    assert restored.apply(optimizer) == pytest.approx(lrs[17])


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


def test_stage_selection_is_validated():
    section = dict.fromkeys(
        ["ssl_frozen", "epochs", "crop_seconds", "batch_size", "grad_accumulation_factor", "weight_decay",
         "speed_perturb_prob", "augment", "margin_loss", "compute_cost", "margin_schedule", "lr_schedule",
         "epoch_counter", "ssl_layerdrop", "ssl_mask_time_prob", "ssl_mask_time_length"]
    )
    hparams = {"stages": ["frozen", "joint"], "frozen": section, "joint": section}
    assert check_stages({**hparams, "run_stages": ["joint"]}) == ["joint"]
    with pytest.raises(ValueError, match="lmft"):
        check_stages({**hparams, "run_stages": ["frozen", "lmft"]})
    with pytest.raises(ValueError, match="order"):
        check_stages({**hparams, "run_stages": ["joint", "frozen"]})
    with pytest.raises(ValueError, match="epochs"):
        check_stages({**hparams, "joint": {"ssl_frozen": False}, "run_stages": ["joint"]})
