"""Tests of lap_speechbrain.augment: the reference's corruptions, levels measured on synthetic signals.

docs/lap_spec.md section 5: one corruption per utterance (p = 0.6) among five
equally likely kinds; every noise file at its own SNR against the speech, which
is never rescaled; coverage of all of the segment (p = 1/3), 40-60 % or 20-40 %
of it; reverberation by a unit-energy RIR from a random channel.
"""

import math

import numpy as np
import pytest
import soundfile
import torch
from conftest import write_audio
from speechbrain.augment.time_domain import AddNoise

from lap_speechbrain.augment import AddNoiseSources, ConvolveRIR, OneCorruptionPerUtterance
from lap_speechbrain.data.noise import prepare_noise_csvs

pytestmark = pytest.mark.usefixtures("single_thread")
RATE = 16000


def noise_csv(folder, signals, kind="noise"):
    """Writes each (samples,) or (samples, channels) signal as a float wav and lists them."""
    for index, signal in enumerate(signals):
        write_audio(folder / kind / f"{index}.wav", np.asarray(signal, np.float32), RATE, subtype="FLOAT")
    return prepare_noise_csvs(folder / f"{kind}_csv", noise_folders={kind: folder / kind})[kind]


def white_noise_files(folder, count, seconds=3.0, seed=0):
    """Loud enough that the power floor (1e-4, as the reference) is negligible."""
    rng = np.random.default_rng(seed)
    return noise_csv(folder, [rng.standard_normal(int(seconds * RATE)) * (0.5 + 0.2 * i) for i in range(count)])


def speech_like(rows=4, samples=2 * RATE, seed=0):
    """Tones of constant amplitude: the same level in every part of the segment."""
    generator = torch.Generator().manual_seed(seed)
    time_axis = torch.arange(samples) / RATE
    pitch = 100 + 200 * torch.rand(rows, 1, generator=generator)
    return 0.3 * torch.sin(2 * math.pi * pitch * time_axis)


def power_db(signal):
    return 10 * torch.log10(signal.double().square().mean(dim=-1))


class Mark(torch.nn.Module):
    """Adds a constant and records how it was called."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.calls = []

    def forward(self, wavs, lengths, full_length=False):
        self.calls.append(full_length)
        return wavs + self.value


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
    with pytest.raises(ValueError, match="combination 'tv'.*unknown: \\['music'\\]"):
        OneCorruptionPerUtterance({"babble": AddNoise()}, combinations={"tv": ["babble", "music"]})


def test_five_kinds_are_equally_likely_and_tv_is_babble_then_music_over_everything():
    marks = {"rir": Mark(1.0), "noise": Mark(10.0), "music": Mark(100.0), "babble": Mark(1000.0)}
    corrupt = OneCorruptionPerUtterance(marks, prob=0.6, combinations={"tv": ["babble", "music"]})
    torch.manual_seed(0)
    rows = 20000
    added = corrupt(torch.zeros(rows, 1), torch.ones(rows))[:, 0]
    shares = {value: float((added == value).float().mean()) for value in (0.0, 1.0, 10.0, 100.0, 1000.0, 1100.0)}
    assert shares[0.0] == pytest.approx(0.4, abs=0.02)
    for value in (1.0, 10.0, 100.0, 1000.0, 1100.0):  # rir, noise, music, babble, TV
        assert shares[value] == pytest.approx(0.6 / 5, abs=0.015)
    # Each module ran once on its own sub-batch, and once more as a part of TV, covering everything.
    assert marks["rir"].calls == [False] and marks["noise"].calls == [False]
    assert marks["babble"].calls == [False, True] and marks["music"].calls == [False, True]


def test_each_babble_talker_is_at_its_snr_against_the_speech(tmp_path):
    """Five talkers at 15 dB each: together 15 - 10 log10(5) = 8 dB below the speech
    (SpeechBrain-style babble scales the sum to 15 dB, 7 dB weaker)."""
    csv_file = white_noise_files(tmp_path, count=9)
    speech = speech_like()
    lengths = torch.ones(len(speech))
    torch.manual_seed(0)
    one = AddNoiseSources(csv_file, snr_low=15, snr_high=15, coverage=[(1.0, 1.0)])
    single = one(speech, lengths) - speech
    torch.testing.assert_close(power_db(speech) - power_db(single), torch.full((4,), 15.0, dtype=torch.float64),
                               atol=0.01, rtol=0)
    babble = AddNoiseSources(csv_file, snr_low=15, snr_high=15, min_sources=5, max_sources=5,
                             coverage=[(1.0, 1.0)])
    crowd = babble(speech, lengths) - speech
    expected = 15 - 10 * math.log10(5)
    torch.testing.assert_close(power_db(speech) - power_db(crowd), torch.full((4,), expected, dtype=torch.float64),
                               atol=0.3, rtol=0)


def test_partial_noise_leaves_the_speech_level_unchanged(tmp_path):
    """Half the segment covered at 0 dB: outside the window the output is the
    speech itself; inside, the noise has the speech's power. (SpeechBrain's
    AddNoise scales the speech by 1/2 at 0 dB: a 6 dB step at the window's edge.)"""
    csv_file = white_noise_files(tmp_path, count=3)
    speech = speech_like()
    torch.manual_seed(0)
    add = AddNoiseSources(csv_file, snr_low=0, snr_high=0, coverage=[(0.5, 0.5)])
    noise = add(speech, torch.ones(len(speech))) - speech
    for row in range(len(speech)):
        window = noise[row] != 0
        assert int(window.sum()) == speech.shape[1] // 2
        covered = torch.nonzero(window).squeeze(1)
        assert int(covered[-1] - covered[0]) + 1 == len(covered)  # one contiguous window
        assert float(power_db(speech[row]) - power_db(noise[row, window])) == pytest.approx(0.0, abs=0.01)
    assert torch.equal((speech + noise)[noise == 0], speech[noise == 0])


def test_coverage_is_all_or_40_to_60_or_20_to_40_percent(tmp_path):
    csv_file = noise_csv(tmp_path, [np.full(RATE, 0.2)])
    add = AddNoiseSources(csv_file, snr_low=5, snr_high=5)
    torch.manual_seed(0)
    fractions = (add(torch.zeros(600, 1000), torch.ones(600)) != 0).float().mean(dim=1)
    full = fractions == 1.0
    half = (fractions >= 0.4) & (fractions <= 0.6)
    third = (fractions >= 0.2) & (fractions < 0.4)
    assert bool((full | half | third).all())
    for share in (full, half, third):
        assert float(share.float().mean()) == pytest.approx(1 / 3, abs=0.06)
    everywhere = add(torch.zeros(50, 1000), torch.ones(50), full_length=True)
    assert bool((everywhere != 0).all())
    # Padding is never touched.
    padded = add(torch.zeros(20, 1000), torch.full((20,), 0.5), full_length=True)
    assert bool((padded[:, 500:] == 0).all() and (padded[:, :500] != 0).all())


def test_noise_is_drawn_by_5_s_pieces_every_3_s_as_the_reference_cuts_musan(tmp_path):
    """A 29 s file is 8 pieces (starts 0, 3, ..., 21 s), a 4 s file one: the long
    file is drawn 8 times in 9. A segment lies inside one piece; a 6 s segment
    (large-margin fine-tuning) repeats its 5 s piece."""
    ramp = np.arange(29 * RATE) / (29 * RATE)  # the value tells the position
    csv_file = noise_csv(tmp_path, [ramp, np.full(4 * RATE, -1.0)])
    files = AddNoiseSources(csv_file, 0, 0).files
    torch.manual_seed(0)
    segments = files.read([files.segment(2 * RATE) for _ in range(900)])
    long_file = [segment for segment in segments if segment[0] >= 0]
    assert len(long_file) / len(segments) == pytest.approx(8 / 9, abs=0.03)
    starts = np.array([round(segment[0] * 29 * RATE) for segment in long_file])
    piece = starts // (3 * RATE)
    assert set(piece.tolist()) == set(range(8))
    assert np.all(starts + 2 * RATE <= piece * 3 * RATE + 5 * RATE)  # inside the piece
    six = files.read([files.segment(6 * RATE) for _ in range(50)])
    for segment in (segment for segment in six if segment[0] >= 0):
        np.testing.assert_array_equal(segment[5 * RATE:], segment[: RATE])
        assert round(segment[0] * 29 * RATE) % (3 * RATE) == 0
    uniform = AddNoiseSources(csv_file, 0, 0, chunk_seconds=None).files
    drawn = uniform.read([uniform.segment(RATE) for _ in range(400)])
    assert np.mean([segment[0] >= 0 for segment in drawn]) == pytest.approx(0.5, abs=0.08)


def test_files_shorter_than_the_segment_are_repeated(tmp_path):
    short = np.arange(100) / 1000
    files = AddNoiseSources(noise_csv(tmp_path, [short]), 0, 0).files
    segment = files.read([files.segment(250)])[0]
    np.testing.assert_allclose(segment, np.resize(short, 250), atol=1e-7)


def test_a_random_channel_of_multi_channel_files(tmp_path):
    # Two channels: an impulse at sample 0 or at sample 5; DC of 0.1 or 0.3.
    rir = np.zeros((64, 2))
    rir[0, 0], rir[5, 1] = 1.0, 1.0
    reverb = ConvolveRIR(noise_csv(tmp_path, [rir], "rir"))
    noise = AddNoiseSources(noise_csv(tmp_path, [np.stack([np.full(RATE, 0.1), np.full(RATE, 0.3)], 1)]),
                            snr_low=0, snr_high=0, coverage=[(1.0, 1.0)])
    impulse = torch.zeros(40, 100)
    impulse[:, 0] = 1.0
    torch.manual_seed(0)
    peaks = set(reverb(impulse, torch.ones(40)).argmax(dim=1).tolist())
    assert peaks == {0, 5}
    # Speech at 0 dB: the added DC is the same whatever the channel, but the
    # channel is the whole noise file, so check which file channel was read.
    reads = {round(float(noise.files.read([noise.files.segment(10)])[0][0]), 3) for _ in range(40)}
    assert reads == {0.1, 0.3}


def test_reverberation_is_a_plain_convolution_with_a_unit_energy_rir(tmp_path):
    rng = np.random.default_rng(0)
    rir = np.zeros(800)
    rir[30] = 1.0  # direct path after 30 samples: kept, not re-aligned
    rir[31:] = 0.2 * rng.standard_normal(769) * np.exp(-np.arange(769) / 200)
    reverb = ConvolveRIR(noise_csv(tmp_path, [0.5 * rir], "rir"))
    speech = speech_like(rows=3, samples=4000)
    lengths = torch.tensor([1.0, 1.0, 0.5])
    output = reverb(speech, lengths)
    unit = rir / np.sqrt(np.sum(rir**2))
    for row, count in enumerate((4000, 4000, 2000)):
        expected = np.convolve(speech[row, :count].numpy(), unit)[:count]
        np.testing.assert_allclose(output[row, :count].numpy(), expected, atol=1e-5)
    assert torch.equal(output[2, 2000:], speech[2, 2000:])


def test_settings_and_files_are_checked(tmp_path):
    csv_file = noise_csv(tmp_path, [np.zeros(RATE)])
    with pytest.raises(ValueError, match="min_sources=5, max_sources=4"):
        AddNoiseSources(csv_file, 0, 5, min_sources=5, max_sources=4)
    with pytest.raises(ValueError, match="coverage"):
        AddNoiseSources(csv_file, 0, 5, coverage=[(0.6, 0.4)])
    soundfile.write(tmp_path / "noise" / "0.wav", np.zeros(800, np.float32), 8000)
    add = AddNoiseSources(csv_file, 0, 5)
    with pytest.raises(ValueError, match=r"0\.wav .*8000 Hz, expected 16000 Hz"):
        add(torch.ones(1, 100), torch.ones(1))
