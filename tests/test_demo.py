"""The demo wing: the synthetic corpus (formats, disjoint speakers, degradation rates, determinism and
caching), the MFCC baseline, and a shortened run of the offline demo end to end."""

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lap_speechbrain.data.manifest import read_csv
from lap_speechbrain.data.noise import NOISE_FIELDS
from lap_speechbrain.demo.mfcc_baseline import mfcc_baseline_embeddings
from lap_speechbrain.demo.synthetic import NOISE_TYPES, prepare_synthetic_corpus
from lap_speechbrain.demo.synthetic_effects import (
    Room,
    band_limit,
    coloured_noise,
    room_impulse_response,
)
from lap_speechbrain.demo.synthetic_speech import (
    SAMPLE_RATE,
    sample_speakers,
    speak_duration,
)

TINY = dict(
    num_train_speakers=3,
    num_valid_speakers=2,
    num_test_speakers=3,
    utterances_per_speaker=4,
    sessions_per_speaker=2,
    min_duration=1.0,
    max_duration=2.0,
    noise_probability=0.5,
    snr_low=5.0,
    snr_high=20.0,
    reverb_probability=0.5,
    bandlimit_probability=0.25,
    num_test_trials=12,
    num_valid_trials=6,
    num_rooms=2,
    num_augmentation_files=1,
    seed=7,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny corpus generated on two worker processes."""
    folder = tmp_path_factory.mktemp("synthetic")
    return folder, prepare_synthetic_corpus(folder, num_workers=2, **TINY)


@pytest.fixture(scope="module")
def corpus_again(tmp_path_factory):
    """The same corpus (same seed) generated in one process."""
    folder = tmp_path_factory.mktemp("synthetic_again")
    return folder, prepare_synthetic_corpus(folder, num_workers=1, **TINY)


def _wavs(folder: Path):
    return sorted(path.relative_to(folder) for path in folder.rglob("*.wav"))


def _metadata(folder: Path):
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_formats(corpus):
    folder, paths = corpus
    for key in ("train", "valid"):
        rows = read_csv(paths[key])
        assert rows and list(rows[0]) == ["ID", "duration", "wav", "spk_id"]
        for row in rows:
            assert Path(row["wav"]).is_file()
            assert row["ID"] == Path(row["wav"]).relative_to(paths["train_audio"]).with_suffix("").as_posix()
            assert row["spk_id"] == row["ID"].split("/")[0]
    for kind in ("noise", "babble", "rir"):
        rows = read_csv(paths[kind], required=NOISE_FIELDS)
        assert rows and all(Path(row["wav"]).is_file() for row in rows)
    wavs = list((folder / "audio").rglob("*.wav"))
    assert len(wavs) == 8 * TINY["utterances_per_speaker"]
    for wav in wavs:
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert TINY["min_duration"] <= info.frames / SAMPLE_RATE <= TINY["max_duration"]
        assert len(wav.relative_to(folder / "audio").parts) == 4  # split/speaker/session/utt.wav


def _read_trials(path):
    trials = [line.split() for line in Path(path).read_text().splitlines()]
    assert all(len(trial) == 3 and trial[0] in ("0", "1") for trial in trials)
    return trials


def test_trial_lists(corpus):
    _, paths = corpus
    for trials_key, root_key, count in (
        ("test_trials", "test_audio", TINY["num_test_trials"]),
        ("valid_trials", "train_audio", TINY["num_valid_trials"]),
    ):
        trials = _read_trials(paths[trials_key])
        assert len(trials) == count
        assert Counter(label for label, _, _ in trials) == {"1": count // 2, "0": count - count // 2}
        for label, enrol, test in trials:
            assert enrol.endswith(".wav") and enrol != test
            assert (Path(paths[root_key]) / enrol).is_file() and (Path(paths[root_key]) / test).is_file()
            assert (enrol.split("/")[0] == test.split("/")[0]) == (label == "1")


def test_speakers_are_disjoint(corpus):
    folder, paths = corpus
    train = {row["spk_id"] for row in read_csv(paths["train"])}
    valid = {row["spk_id"] for row in read_csv(paths["valid"])}
    test = {path.name for path in Path(paths["test_audio"]).iterdir()}
    assert (len(train), len(valid), len(test)) == (3, 2, 3)
    assert not (train & valid or train & test or valid & test)
    # Every speaker has its own espeak voice, and keeps it in all its utterances.
    voices = {}
    for row in _metadata(folder):
        assert voices.setdefault(row["spk_id"], row["voice"]) == row["voice"]
    assert len(set(voices.values())) == 8


def test_degradations_at_configured_rates(corpus):
    folder, _ = corpus
    rows = _metadata(folder)
    for split in ("train", "test"):
        split_rows = [row for row in rows if row["split"] == split]
        count = len(split_rows)
        noisy = [row for row in split_rows if row["noise"] != "none"]
        assert len(noisy) == round(TINY["noise_probability"] * count)
        assert sum(row["room"] != "" for row in split_rows) == round(TINY["reverb_probability"] * count)
        assert sum(row["band_limited"] == "1" for row in split_rows) == round(
            TINY["bandlimit_probability"] * count
        )
        for row in noisy:
            assert row["noise"] in NOISE_TYPES
            assert TINY["snr_low"] <= float(row["snr_db"]) <= TINY["snr_high"]
        assert all(row["snr_db"] == "" for row in split_rows if row["noise"] == "none")
        assert all((row["room"] == "") == (row["rt60"] == "") for row in split_rows)


def _high_band_share(path) -> float:
    """Share of the energy above 3.8 kHz."""
    audio, _ = soundfile.read(str(path))
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    return spectrum[np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE) > 3800].sum() / spectrum.sum()


def test_band_limiting_is_in_the_audio(corpus):
    folder, _ = corpus
    rows = _metadata(folder)
    limited = [_high_band_share(row["wav"]) for row in rows if row["band_limited"] == "1"]
    full = [_high_band_share(row["wav"]) for row in rows if row["band_limited"] == "0"]
    # Synthetic speech has little energy up there anyway; band-limited files have none.
    assert max(limited) < 0.1 * np.median(full)


def test_same_seed_gives_identical_files(corpus, corpus_again):
    (first, first_paths), (second, second_paths) = corpus, corpus_again
    assert _wavs(first) == _wavs(second)
    for relative in _wavs(first):
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    for key in ("test_trials", "valid_trials"):
        assert Path(first_paths[key]).read_text() == Path(second_paths[key]).read_text()
    strip = lambda rows: [{k: v for k, v in row.items() if k != "wav"} for row in rows]  # noqa: E731
    assert strip(_metadata(first)) == strip(_metadata(second))


def test_other_seed_differs_and_new_options_regenerate(corpus, tmp_path):
    folder, _ = corpus
    options = {**TINY, "seed": 8}
    prepare_synthetic_corpus(tmp_path, num_workers=1, **options)
    assert _wavs(tmp_path) == _wavs(folder)  # same layout...
    same = [(tmp_path / r).read_bytes() == (folder / r).read_bytes() for r in _wavs(folder)]
    assert not any(same)  # ...different audio

    before = _mtimes(tmp_path)
    paths = prepare_synthetic_corpus(tmp_path, num_workers=1, **{**options, "num_test_trials": 8})
    assert len(_read_trials(paths["test_trials"])) == 8
    wav = next(path for path in before if path.suffix == ".wav")
    assert wav.stat().st_mtime_ns != before[wav]  # rewritten, not reused


def _mtimes(folder: Path):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_second_call_reuses_and_broken_corpus_is_regenerated(corpus_again):
    folder, paths = corpus_again
    before = _mtimes(folder)
    assert prepare_synthetic_corpus(folder, num_workers=1, **TINY) == paths
    assert _mtimes(folder) == before

    # A run killed mid-way: the options file (written last) is missing and files are lost.
    victim = folder / Path(read_csv(paths["train"])[0]["wav"]).relative_to(folder)
    victim_bytes = victim.read_bytes()
    victim.unlink()
    (folder / "synthetic_corpus.json").unlink()
    assert prepare_synthetic_corpus(folder, num_workers=1, **TINY) == paths
    assert victim.read_bytes() == victim_bytes
    assert (folder / "synthetic_corpus.json").is_file()


def test_bad_options_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="noise_probability=1.5"):
        prepare_synthetic_corpus(tmp_path, **{**TINY, "noise_probability": 1.5})
    with pytest.raises(ValueError, match="num_test_trials=1000"):
        prepare_synthetic_corpus(tmp_path, **{**TINY, "num_test_trials": 1000})
    with pytest.raises(ValueError, match="min_duration=3.0"):
        prepare_synthetic_corpus(tmp_path, **{**TINY, "min_duration": 3.0})
    assert not any(tmp_path.iterdir())  # nothing written


def test_speech_has_requested_duration_and_varies():
    speaker = sample_speakers(np.random.default_rng(0), 1)[0]
    first, text = speak_duration(speaker, 1.5, np.random.default_rng(1))
    second, other_text = speak_duration(speaker, 1.5, np.random.default_rng(2))
    assert first.shape == second.shape == (int(1.5 * SAMPLE_RATE),)
    assert text != other_text
    assert np.sqrt(np.mean(first**2)) > 0.01  # speech, not silence


@pytest.mark.parametrize("colour, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_colours_have_their_spectral_slope(colour, slope):
    noise = coloured_noise(np.random.default_rng(0), 2**16, colour)
    power = np.abs(np.fft.rfft(noise)) ** 2
    frequencies = np.fft.rfftfreq(len(noise))
    band = (frequencies > 0.001) & (frequencies < 0.4)
    fitted = np.polyfit(np.log10(frequencies[band]), np.log10(power[band]), 1)[0]
    assert abs(fitted - slope) < 0.1


def test_room_reverberation_time():
    def rt60(rir):  # Schroeder backward integration, -5 to -25 dB, extrapolated to 60 dB
        energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
        decay = 10 * np.log10(energy / energy[0])
        return 3 * (np.argmax(decay < -25) - np.argmax(decay < -5)) / SAMPLE_RATE

    for target in (0.3, 0.6):
        room = Room((6.0, 4.0, 2.8), target, (1.5, 1.2, 1.6), (4.0, 3.0, 1.2))
        assert abs(rt60(room_impulse_response(room, np.random.default_rng(0))) - target) < 0.25 * target


def test_band_limit_removes_out_of_band_tones():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # one second: FFT bin k is k Hz
    tones = np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 6000 * t) + np.sin(2 * np.pi * 100 * t)
    spectrum = np.abs(np.fft.rfft(band_limit(tones.astype(np.float32))))
    reference = np.abs(np.fft.rfft(np.sin(2 * np.pi * 1000 * t)))[1000]
    assert abs(20 * np.log10(spectrum[1000] / reference)) < 1.0  # pass band kept
    assert 20 * np.log10(spectrum[6000] / reference) < -40.0  # above the band removed
    assert 20 * np.log10(spectrum[100] / reference) < -20.0  # below the band attenuated


def test_mfcc_baseline_separates_clean_speakers(tmp_path):
    speakers = sample_speakers(np.random.default_rng(3), 2)
    paths = []
    for s, speaker in enumerate(speakers):
        for u in range(2):
            wav, _ = speak_duration(speaker, 2.0, np.random.default_rng([s, u]))
            paths.append(tmp_path / f"{s}_{u}.wav")
            soundfile.write(paths[-1], wav, SAMPLE_RATE)
    embeddings = mfcc_baseline_embeddings(paths, desc="")
    assert embeddings.shape == (4, 40)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert min(cosine[0, 1], cosine[2, 3]) > max(cosine[0, 2], cosine[0, 3], cosine[1, 2], cosine[1, 3])
    soundfile.write(tmp_path / "8k.wav", np.zeros(800), 8000)
    with pytest.raises(ValueError, match="8k.wav"):
        mfcc_baseline_embeddings([tmp_path / "8k.wav"], desc="")


# ---------------------------------------------------------------- the demo, end to end
REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "--synthetic_corpus": "{num_train_speakers: 4, num_valid_speakers: 3, num_test_speakers: 3, "
    "utterances_per_speaker: 4, sessions_per_speaker: 2, min_duration: 1.0, max_duration: 2.0, "
    "num_test_trials: 12, num_valid_trials: 8, num_rooms: 2, num_augmentation_files: 2, num_workers: 1}",
    "--frozen": "{epochs: 1, batch_size: 4}",
    "--joint": "{epochs: 1, batch_size: 4}",
    "--lmft": "{batch_size: 4, grad_accumulation_factor: 1, crop_seconds: 1.5}",
    "--evaluation": "{cohort_utterances_per_speaker: 2, top_n: 2, qmf_pairs: 16}",
    "--verify_examples": "1",
}


def test_demo_runs_end_to_end(tmp_path):
    output = tmp_path / "demo"
    command = [
        sys.executable, str(REPO / "recipes" / "train_speaker_embeddings.py"), str(REPO / "hparams" / "demo.yaml"),
        f"--data_folder={tmp_path / 'corpus'}", f"--output_folder={output}",
    ] + [f"{flag}={value}" for flag, value in SMALL.items()]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    # The results table of all three scoring conditions, and the baseline beside it.
    table = (output / "evaluation" / "results.md").read_text()
    for condition in ("cosine", "AS-Norm", "AS-Norm + QMF"):
        assert f"| {condition} |" in table
    assert "MFCC mean+std cosine (no training)" in run.stdout
    # verify_files on one same-speaker and one different-speaker test pair.
    verified = [line for line in run.stdout.splitlines() if line.startswith("verify_files ")]
    assert len(verified) == 2
    assert "(same speaker)" in verified[0] and "(different speakers)" in verified[1]
    assert "exported model:" in run.stdout

    # The exported model loads as users load it and embeds a test file.
    from speechbrain.inference.speaker import EncoderClassifier

    from lap_speechbrain.inference import load_audio

    exported = output / "exported_model"
    assert (exported / "README.md").is_file()
    encoder = EncoderClassifier.from_hparams(source=str(exported), savedir=str(tmp_path / "loaded"))
    test_file = next((tmp_path / "corpus" / "audio" / "test").rglob("*.wav"))
    embedding = encoder.encode_batch(load_audio(test_file)[None])
    assert embedding.shape == (1, 1, 128)
    assert torch.isfinite(embedding).all()
