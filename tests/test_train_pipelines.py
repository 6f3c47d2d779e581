"""Unit tests of augmentation, schedules, stage selection and crash-safe checkpoints."""

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.augment.time_domain import AddNoise

from lap_speechbrain.augment import OneCorruptionPerUtterance
from lap_speechbrain.fileio import atomic_write_json
from lap_speechbrain.nnet.schedulers import WarmupCosineScheduler
from lap_speechbrain.training.checkpoints import AtomicCheckpointer
from lap_speechbrain.training.stages import check_stages


def test_one_corruption_per_utterance_keeps_the_batch():
    clean = torch.full((64, 1000), 0.1)
    lengths = torch.ones(64)
    never = OneCorruptionPerUtterance({"white": AddNoise(snr_low=0, snr_high=0)}, prob=0.0)
    assert torch.equal(never(clean, lengths), clean)

    torch.manual_seed(0)
    corrupt = OneCorruptionPerUtterance(
        {"white": AddNoise(snr_low=0, snr_high=0), "gain": torch.nn.Identity()}, prob=0.6
    )
    noisy = corrupt(clean, lengths)
    changed = (noisy != clean).any(dim=1)
    assert noisy.shape == clean.shape
    assert 0.1 < changed.float().mean() < 0.6  # about 0.6 x 1/2 rows get the white noise

    half = OneCorruptionPerUtterance(
        {"white": AddNoise(snr_low=0, snr_high=0)}, prob=1.0, partial=["white"], partial_prob=1.0,
        partial_range=(0.5, 0.5),
    )
    covered = (half(clean, lengths) != clean).float().sum(dim=1)
    assert torch.all(covered == 500)
    with pytest.raises(ValueError, match="music"):
        OneCorruptionPerUtterance({"white": AddNoise()}, partial=["music"])


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
         "epoch_counter"]
    )
    hparams = {"stages": ["frozen", "joint"], "frozen": section, "joint": section}
    assert check_stages({**hparams, "run_stages": ["joint"]}) == ["joint"]
    with pytest.raises(ValueError, match="lmft"):
        check_stages({**hparams, "run_stages": ["frozen", "lmft"]})
    with pytest.raises(ValueError, match="order"):
        check_stages({**hparams, "run_stages": ["joint", "frozen"]})
    with pytest.raises(ValueError, match="epochs"):
        check_stages({**hparams, "joint": {"ssl_frozen": False}, "run_stages": ["joint"]})


def test_babble_sums_several_talkers(tmp_path):
    from lap_speechbrain.augment import AddBabble
    from lap_speechbrain.data.noise import prepare_noise_csvs

    (tmp_path / "speech").mkdir()
    for index in range(4):
        soundfile.write(tmp_path / "speech" / f"{index}.wav", np.full(4000, 0.1, np.float32), 16000, subtype="FLOAT")
    csvs = prepare_noise_csvs(tmp_path / "csv", noise_folders={"babble": tmp_path / "speech"})
    babble = AddBabble(min_speakers=3, max_speakers=3, csv_file=csvs["babble"], snr_low=15, snr_high=15)
    noise, _ = babble._load_noise(torch.full((2, 1), 2000.0), 2000)
    torch.testing.assert_close(noise, torch.full((2, 2000), 0.3))  # three talkers of 0.1 each
    noisy = babble(torch.full((2, 2000), 0.5), torch.ones(2))
    assert noisy.shape == (2, 2000)
    with pytest.raises(ValueError, match="min_speakers"):
        AddBabble(min_speakers=4, max_speakers=3)
