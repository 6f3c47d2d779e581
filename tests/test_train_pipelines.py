"""Unit tests of the training data pipeline."""

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
