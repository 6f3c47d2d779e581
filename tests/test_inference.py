"""Loading exported models with SpeechBrain's inference interfaces and load_encoder.

A tiny randomly initialised SSLSpeakerEncoder stands in for a trained model:
it is written as training writes it (``export_model`` into ``<run>/model``
next to a copy of the training yaml), then loaded from disk, from a hub id in
a pre-seeded offline Hugging Face cache, and through ``load_encoder``.
"""

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import write_voices
from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition
from speechbrain.utils.fetching import FetchConfig

from lap_speechbrain.export.folder import export_model
from lap_speechbrain.inference import AudioError, LAPSpeakerRecognition, load_audio, load_encoder
from lap_speechbrain.inference.interfaces import SAVEDIR_MARKER
from lap_speechbrain.nnet import SubCenterClassifier
from lap_speechbrain.scoring.embeddings import chunk_waveform

ROOT = Path(__file__).resolve().parents[1]
BACKEND = dict(lap_channels=16, num_heads=4, embedding_dim=8, lap_dropout=0.1,
               layer_pooling="max", frame_dropout=0.1)
SPEAKERS = ["id00012", "id00017", "id00050", "id00101", "id00420"]
THRESHOLD = 0.3125
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def randomize_(encoder, seed: int = 0) -> None:
    """Makes the backend look trained: perturbed weights, BatchNorm statistics of real inputs.

    With default or random BatchNorm statistics the embedding is dominated by
    the last BatchNorm's shift and barely depends on the input, which would let
    the equality tests below pass for the wrong reasons.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in encoder.backend.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    # The calibration pass runs in train mode (dropout, layer drop): seed the global
    # generator too, so the model does not depend on which tests ran before.
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for parameter in encoder.backend.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration batch
        encoder.train()
        tones = torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * torch.tensor([[110.0], [440.0], [1250.0]]))
        encoder(torch.cat([0.1 * torch.randn(5, 16000, generator=generator), 0.3 * tones]))
        for norm in norms:
            norm.momentum = 0.1
    encoder.eval()


def write_training_output(folder: Path, encoder, classifier, threshold=THRESHOLD, **export) -> Path:
    """A training output folder as training leaves it: ``model/`` (an export) and the rest.

    ``model/`` is written with ``export_model`` as the training recipe does;
    the training yaml copy, a log and a checkpoint stand for the rest.
    """
    folder.mkdir(parents=True)
    shutil.copyfile(ROOT / "hparams" / "demo.yaml", folder / "hyperparams.yaml")
    (folder / "train_log.txt").write_text("epoch: 1, train loss: 9.1\n")
    (folder / "save" / "frozen" / "CKPT+1").mkdir(parents=True)
    torch.save(encoder.state_dict(), folder / "save" / "frozen" / "CKPT+1" / "embedding_model.ckpt")
    summary = {"ssl_hub": "tiny", "stages": [
        {"stage": "frozen", "valid_EER": 0.31, "valid_threshold": 0.2},
        {"stage": "joint", "valid_EER": 0.25, "valid_threshold": threshold}]}
    labels = SPEAKERS * (classifier.out_neurons // len(SPEAKERS))
    labels = SPEAKERS + [f"{s}@speed{i // len(SPEAKERS)}" for i, s in enumerate(labels) if i >= len(SPEAKERS)]
    export_model(
        folder / "model",
        encoder.ssl_model.model.config.to_dict(),
        BACKEND,
        encoder.state_dict(),
        classifier.state_dict(),
        labels,
        threshold,
        training_summary=summary,
        origin=f"trained with lap-speechbrain's recipe (output folder `{folder.name}`)",
        datasets=["voxceleb"],
        overwrite=True,
        **export,
    )
    return folder


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (links not followed) -> SHA-256 of its content."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file() and not path.is_symlink()
    }


def seed_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Puts ``folder`` into a Hugging Face cache as ``repo_id`` at ``HUB_COMMIT``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / HUB_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)


def batch(seed=0, lengths=(16000, 11200, 6400)):
    """A padded batch of random 'speech' and its relative lengths."""
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        wavs[row, :length] = 0.1 * torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.float32) / max(lengths)


def test_exported_folder_gives_the_training_embeddings(trained, exported):
    encoder, _ = trained
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "classifier.ckpt", "custom_interface.py", "embedding_model.ckpt", "hyperparams.yaml",
        "hyperparams_standalone.yaml", "label_encoder.ckpt", "lap_export.json", "trained_with.ckpt",
        "training_summary.json"]
    model = EncoderClassifier.from_hparams(source=str(exported))
    wavs, lens = batch()
    with torch.no_grad():
        expected = encoder(wavs, lens)
    embeddings = model.encode_batch(wavs, lens)
    assert embeddings.shape == (3, 1, 8)
    assert (embeddings - expected).abs().max() < 1e-5
    # The embeddings depend on the input (so the equality above is not trivial).
    assert torch.nn.functional.cosine_similarity(embeddings[0], embeddings[1:], dim=-1).max() < 0.99
    _, _, index, labels = model.classify_batch(wavs, lens)
    assert labels == [SPEAKERS[i] for i in index.tolist()]
    # The SSL model was built from the embedded config: the weights are the trained ones.
    trained_state = encoder.state_dict()
    for key, value in model.mods.embedding_model.state_dict().items():
        assert torch.equal(value, trained_state[key]), key


def test_padded_batch_equals_one_at_a_time(exported):
    model = EncoderClassifier.from_hparams(source=str(exported))
    wavs, lens = batch(seed=1)
    batched = model.encode_batch(wavs, lens)
    for row, length in enumerate((lens * wavs.shape[1]).round().long().tolist()):
        alone = model.encode_batch(wavs[row : row + 1, :length])
        assert (alone[0] - batched[row]).abs().max() < 1e-5


def test_verify_files_accepts_8k_stereo_and_uses_the_calibrated_threshold(exported, tmp_path):
    first, second = write_voices(tmp_path / "audio")
    model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    assert model.threshold == THRESHOLD  # the threshold training passed to export_model
    score, decision = model.verify_files(str(first), str(second))
    assert bool(decision) == bool(score >= THRESHOLD)
    # Same score as embedding the resampled, mixed-down waveforms by hand.
    reference = torch.nn.functional.cosine_similarity(
        model.encode_batch(load_audio(first)[None]), model.encode_batch(load_audio(second)[None]), dim=-1)
    assert abs(float(score) - float(reference)) < 1e-5
    # Plain SpeechBrain loads the same folder (with its own audio loader, default threshold).
    plain = SpeakerRecognition.from_hparams(source=str(exported))
    plain_score, _ = plain.verify_files(str(first), str(second))
    assert abs(float(plain_score) - float(score)) < 1e-3
    scores, decisions = model.verify_batch(*batch()[:1], *batch(seed=2)[:1], threshold=-1.0)
    assert bool(decisions.all())


def test_a_score_equal_to_the_threshold_is_the_same_speaker(exported, tmp_path):
    first, second = write_voices(tmp_path / "audio")
    model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    score, _ = model.verify_files(first, second)
    at = float(score)  # a float32 value: exactly representable
    above = float(np.nextafter(np.float32(at), np.float32(2)))
    assert bool(model.verify_files(first, second, threshold=at)[1])
    assert not bool(model.verify_files(first, second, threshold=above)[1])
    wavs1, wavs2 = load_audio(first)[None], load_audio(second)[None]
    assert bool(model.verify_batch(wavs1, wavs2, threshold=float(model.verify_batch(wavs1, wavs2)[0]))[1])


def test_long_files_are_embedded_in_chunks_of_bounded_length(exported, tmp_path, monkeypatch):
    assert LAPSpeakerRecognition.from_hparams(source=str(exported)).hparams.max_chunk_seconds == 60
    # The same rule with a bound the tiny test can afford: 0.5 s instead of 60 s.
    model = LAPSpeakerRecognition.from_hparams(source=str(exported), overrides={"max_chunk_seconds": 0.5})
    seen = []
    forward = type(model.mods.embedding_model).forward

    def spy(module, wavs, lengths=None):
        seen.append(wavs.shape[-1])
        return forward(module, wavs, lengths)

    monkeypatch.setattr(type(model.mods.embedding_model), "forward", spy)
    rng = np.random.default_rng(3)
    sf.write(tmp_path / "long.wav", (rng.standard_normal(12000) * 0.1).astype(np.float32), 8000)
    waveform = load_audio(tmp_path / "long.wav")
    embedding = model.encode_file(tmp_path / "long.wav")
    assert seen == [8000] * 3  # ceil(1.5 s / 0.5 s) = 3 equal chunks, one at a time
    expected = torch.cat([model.encode_batch(chunk[None]) for chunk in chunk_waveform(waveform, 8000)])
    torch.testing.assert_close(embedding, expected.mean(dim=0, keepdim=True))
    seen.clear()
    score, _ = model.verify_files(tmp_path / "long.wav", tmp_path / "long.wav")
    assert max(seen) == 8000 and abs(float(score) - 1) < 1e-5


def test_normalize_needs_a_stored_mean(trained, exported, tmp_path):
    model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    wavs, lens = batch()
    with pytest.raises(ValueError, match="stores no training-set mean embedding"):
        model.encode_batch(wavs, lens, normalize=True)
    with pytest.raises(ValueError, match="stores no training-set mean embedding"):
        model.encode_waveform(torch.randn(16000), normalize=True)
    encoder, classifier = trained
    mean = [0.5] * 8
    with_mean = write_training_output(tmp_path / "with_mean", encoder, classifier, embedding_mean=mean)
    model = LAPSpeakerRecognition.from_hparams(source=str(with_mean / "model"))
    raw = model.encode_batch(wavs, lens)
    torch.testing.assert_close(model.encode_batch(wavs, lens, normalize=True), raw - torch.tensor(mean))


def test_hub_id_loads_from_an_offline_cache_without_network(exported, tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    seed_hub_cache(cache, "lap-org/lap-wavlm-tiny", exported)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = LAPSpeakerRecognition.from_hparams(
        source="lap-org/lap-wavlm-tiny",
        savedir=str(tmp_path / "pretrained"),
        fetch_config=FetchConfig(huggingface_cache_dir=str(cache), allow_network=False),
    )
    local = EncoderClassifier.from_hparams(source=str(exported))
    wavs, lens = batch()
    assert torch.equal(model.encode_batch(wavs, lens), local.encode_batch(wavs, lens))
    assert (tmp_path / "pretrained" / "embedding_model.ckpt").exists()


def test_missing_label_encoder_fails_loudly(exported):
    (exported / "label_encoder.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="label_encoder"):
        EncoderClassifier.from_hparams(source=str(exported))


def test_checkpoints_are_weights_only_loadable(exported):
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        state = torch.load(exported / name, weights_only=True)
        assert all(isinstance(value, torch.Tensor) for value in state.values())


def test_load_encoder_reads_a_training_output_folder_in_place(trained, training_output, tmp_path):
    encoder, classifier = trained
    before = snapshot(training_output)
    model = load_encoder(training_output, savedir=tmp_path / "savedir")
    assert isinstance(model, LAPSpeakerRecognition) and model.threshold == THRESHOLD
    wavs, lens = batch()
    with torch.no_grad():
        assert (model.encode_batch(wavs, lens) - encoder(wavs, lens)).abs().max() < 1e-5
    # Nothing written: not into the run, not into savedir (it only serves hub ids).
    assert snapshot(training_output) == before and not (tmp_path / "savedir").exists()
    # A newer model in the run is what the next load gives (no cached copy to go stale).
    export_model(training_output / "model", encoder.ssl_model.model.config.to_dict(), BACKEND,
                 encoder.state_dict(), classifier.state_dict(), SPEAKERS, 0.75, overwrite=True)
    assert load_encoder(training_output, savedir=tmp_path / "savedir").threshold == 0.75
    # The model folder itself loads too.
    assert load_encoder(training_output / "model").threshold == 0.75


def test_savedir_never_replaces_a_training_output_folder(training_output, exported, tmp_path, monkeypatch):
    before = snapshot(training_output)
    load_encoder(training_output, savedir=training_output)  # issue 15.1: used to delete the run
    load_encoder(exported, savedir=training_output)
    assert snapshot(training_output) == before
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    seed_hub_cache(tmp_path / "hf_cache", "lap-org/tiny", exported)
    with pytest.raises(ValueError, match=f"savedir {training_output} is not empty"):
        load_encoder("lap-org/tiny", savedir=training_output)
    assert snapshot(training_output) == before


def test_a_reused_savedir_serves_the_model_asked_for(make_encoder, tiny_wavlm_large, tmp_path, monkeypatch):
    runs = {}
    for seed, name in enumerate(("run_a", "run_b")):
        encoder = make_encoder(tiny_wavlm_large, **BACKEND)
        randomize_(encoder, seed=seed)
        runs[name] = write_training_output(tmp_path / name, encoder, SubCenterClassifier(8, len(SPEAKERS)))
    wavs, lens = batch()
    expected = {name: EncoderClassifier.from_hparams(source=str(run / "model")).encode_batch(wavs, lens)
                for name, run in runs.items()}
    assert (expected["run_a"] - expected["run_b"]).abs().max() > 1e-2
    # Local runs: read in place, whatever savedir says.
    for name, run in runs.items():
        assert torch.equal(load_encoder(run, savedir=tmp_path / "shared").encode_batch(wavs, lens), expected[name])
    # Hub ids: the savedir's links are renewed for each model.
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    for name, run in runs.items():
        seed_hub_cache(cache, f"lap-org/{name}", run / "model")
    for name in runs:
        model = load_encoder(f"lap-org/{name}", savedir=tmp_path / "shared")
        assert torch.equal(model.encode_batch(wavs, lens), expected[name]), name
    marker = tmp_path / "shared" / SAVEDIR_MARKER
    assert json.loads(marker.read_text()) == {"source": "lap-org/run_b"}
    marker.write_text("{damaged")  # damaged by hand: the folder is still ours, its marker is rewritten
    load_encoder("lap-org/run_a", savedir=tmp_path / "shared")
    assert json.loads(marker.read_text()) == {"source": "lap-org/run_a"}


def test_load_encoder_names_what_is_missing(training_output, tmp_path):
    shutil.rmtree(training_output / "model")  # a run that has not finished
    with pytest.raises(FileNotFoundError, match="training output folder without model/"):
        load_encoder(training_output)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither an exported model folder"):
        load_encoder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_encoder(tmp_path / "typo" / "run")


def test_bad_audio_gives_errors_naming_the_file(tmp_path):
    with pytest.raises(AudioError, match=r"missing\.wav: no such audio file"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(AudioError, match=r"text\.wav: cannot be read as audio"):
        load_audio(tmp_path / "text.wav")
    sf.write(tmp_path / "short.wav", np.zeros(300, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"short\.wav: too short, 300 samples"):
        load_audio(tmp_path / "short.wav")
    sf.write(tmp_path / "short8k.wav", np.zeros((150, 2), dtype=np.int16), 8000)
    with pytest.raises(AudioError, match=r"short8k\.wav: too short, 300 samples at 16000 Hz"):
        load_audio(tmp_path / "short8k.wav")
    assert load_audio(tmp_path / "short8k.wav", min_samples=300).shape == (300,)


def test_implausible_header_sample_rates_are_refused(tmp_path):
    # Issue 15.7: a 2 KB wav claiming 1 Hz became 1000 s of audio (20 GB in the model).
    sf.write(tmp_path / "one_hz.wav", np.zeros(1000, dtype=np.int16), 1)
    with pytest.raises(AudioError, match=r"one_hz\.wav: sample rate 1 Hz in its header"):
        load_audio(tmp_path / "one_hz.wav")
    sf.write(tmp_path / "odd.wav", np.zeros(44101, dtype=np.int16), 44101)
    with pytest.raises(AudioError, match=r"odd\.wav: resampling its unusual sample rate 44101 Hz"):
        load_audio(tmp_path / "odd.wav")
    sf.write(tmp_path / "cd.wav", np.zeros(44100, dtype=np.int16), 44100)
    assert load_audio(tmp_path / "cd.wav").shape == (16000,)


def write_non_finite(folder: Path) -> dict:
    """Float wavs holding a NaN, an inf and a -inf sample, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, value in (("nan", np.nan), ("inf", np.inf), ("minus_inf", -np.inf)):
        samples = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
        samples[1234] = value
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], samples, 16000, subtype="FLOAT")
    return paths


def test_non_finite_audio_is_refused_at_every_entry_point(exported, tmp_path):
    """Issue 14: NaN/inf audio gave "score nan ... different speakers"; now an error naming the file or row."""
    from lap_speechbrain.data.audio import NonFiniteError

    good, _ = write_voices(tmp_path / "audio")
    bad = write_non_finite(tmp_path / "bad")
    model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    for name, path in bad.items():
        with pytest.raises(NonFiniteError, match=rf"{name}\.wav: 1 of 8000 samples are NaN or infinite"):
            load_audio(path)
        with pytest.raises(NonFiniteError, match=rf"{name}\.wav: 1 of 8000 samples"):
            model.verify_files(good, path)
        with pytest.raises(NonFiniteError, match=rf"{name}\.wav: 1 of 8000 samples"):
            model.encode_file(path)
    wavs, lens = batch()
    wavs[2, 100] = float("nan")
    with pytest.raises(NonFiniteError, match=r"encode_batch: row \[2\] of the batch holds NaN"):
        model.encode_batch(wavs, lens)
    with pytest.raises(NonFiniteError, match=r"encode_batch: row \[2\] of the batch holds NaN"):
        model.verify_batch(batch()[0], wavs)
    # Plain SpeechBrain classes refuse it too: the exported compute_features checks.
    plain = EncoderClassifier.from_hparams(source=str(exported))
    with pytest.raises(NonFiniteError, match=r"encode_batch: row \[2\] of the batch holds NaN"):
        plain.encode_batch(wavs, lens)
    # Finite batches pass unchanged.
    assert torch.isfinite(model.encode_batch(*batch())).all()


def test_a_non_finite_embedding_or_score_is_an_error_not_a_verdict(exported, tmp_path, monkeypatch):
    """Finite audio that still gives NaN (e.g. an overflow in the model): no NaN score decides anything."""
    from lap_speechbrain.data.audio import NonFiniteError

    first, second = write_voices(tmp_path / "audio")
    model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    forward = type(model.mods.embedding_model).forward
    monkeypatch.setattr(type(model.mods.embedding_model), "forward",
                        lambda module, wavs, lengths=None: forward(module, wavs, lengths) * float("nan"))
    with pytest.raises(NonFiniteError, match=r"speaker1\.wav: encode_batch: the model's embeddings: row \[0\]"):
        model.verify_files(first, second)
    with pytest.raises(NonFiniteError, match=r"the model's embeddings: rows \[0, 1, 2\] of the batch hold NaN"):
        model.verify_batch(*batch()[:1], *batch(seed=2)[:1])


class Pickled:
    """An arbitrary object in place of a state dict."""


def test_damaged_model_folders_give_errors_naming_the_file(exported, tmp_path):
    """Attack table (issue 14): these escaped as yaml/KeyError/unpickling tracebacks or did not name the file."""
    from lap_speechbrain.inference.modules import CheckpointError

    def damaged(name, file, write):
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        write(folder / file)
        return folder

    cases = [
        (damaged("garbage", "hyperparams.yaml", lambda p: p.write_text(": : [\n")), ValueError,
         r"garbage: its hyperparams.yaml is not valid yaml"),
        (damaged("half", "hyperparams.yaml", lambda p: p.write_text(p.read_text()[:1500])), ValueError,
         r"half: its hyperparams.yaml lacks the key 'pretrainer'"),
        (damaged("cut", "embedding_model.ckpt", lambda p: p.write_bytes(p.read_bytes()[:1000])), CheckpointError,
         r"cut/embedding_model.ckpt: not a readable state dict"),
        (damaged("pickled", "classifier.ckpt", lambda p: torch.save(Pickled(), p)), CheckpointError,
         r"pickled/classifier.ckpt: not a readable state dict"),
        (damaged("classes", "classifier.ckpt", lambda p: torch.save({"weight": torch.zeros(12, 8)}, p)),
         CheckpointError, r"classes/classifier.ckpt does not fit the model hyperparams.yaml builds"),
    ]
    for folder, error, message in cases:
        with pytest.raises(error, match=message):
            load_encoder(folder)
    with pytest.raises(OSError, match=r"nobody/no-such-model: cannot load this hub model"):
        load_encoder("nobody/no-such-model")
