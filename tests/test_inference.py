"""Export of a trained model and its loading with SpeechBrain's inference interfaces.

A tiny randomly initialised SSLSpeakerEncoder stands in for a trained model: it
is written in the training recipe's ``save/model`` layout, exported, and the
exported folder is loaded from disk, from a hub id in a pre-seeded offline
Hugging Face cache, and through ``load_encoder``.
"""

import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition
from speechbrain.utils.fetching import FetchConfig
from transformers import WavLMModel

from lap_speechbrain.export.folder import (
    ExportError,
    export_reference,
    export_training_output,
)
from lap_speechbrain.inference import (
    AudioError,
    LAPSpeakerRecognition,
    load_audio,
    load_encoder,
)
from lap_speechbrain.nnet import SubCenterClassifier

BACKEND = dict(lap_channels=16, num_heads=4, embedding_dim=8, lap_dropout=0.1,
               layer_pooling="max", frame_dropout=0.1)
SPEAKERS = ["id00012", "id00017", "id00050", "id00101", "id00420"]
THRESHOLD = 0.3125


def randomize_(encoder, seed: int = 0) -> None:
    """Makes the backend look trained: perturbed weights, BatchNorm statistics of real inputs.

    With default or random BatchNorm statistics the embedding is dominated by
    the last BatchNorm's shift and barely depends on the input, which would let
    the equality tests below pass for the wrong reasons.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in encoder.backend.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
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


def write_training_output(folder: Path, encoder, classifier, threshold=THRESHOLD) -> Path:
    """The training recipe's artifact: ``<output_folder>/save/model/``."""
    artifact = folder / "save" / "model"
    artifact.mkdir(parents=True)
    torch.save(encoder.state_dict(), artifact / "embedding_model.ckpt")
    torch.save(classifier.state_dict(), artifact / "classifier.ckpt")
    labels = CategoricalEncoder()
    labels.update_from_iterable(SPEAKERS)
    labels.save(artifact / "label_encoder.txt")
    (artifact / "ssl_config.json").write_text(json.dumps(encoder.ssl_model.model.config.to_dict()))
    (artifact / "backend_config.json").write_text(json.dumps(BACKEND))
    classes = classifier.out_neurons
    summary = {"ssl_hub": "tiny", "stages": [  # the training recipe's layout
        {"stage": "frozen", "valid_EER": 0.31, "valid_threshold": 0.2, "classes": 3 * len(SPEAKERS)},
        {"stage": "joint", "valid_EER": 0.25, "valid_threshold": threshold, "classes": classes}]}
    (artifact / "training_summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def trained(make_encoder, tiny_wavlm_large):
    """(in-memory encoder in eval mode, classifier, training output folder)."""
    encoder = make_encoder(tiny_wavlm_large, **BACKEND)
    randomize_(encoder)
    classifier = SubCenterClassifier(8, len(SPEAKERS))
    return encoder, classifier


@pytest.fixture
def training_output(trained, tmp_path):
    encoder, classifier = trained
    return write_training_output(tmp_path / "train_out", encoder, classifier)


@pytest.fixture
def exported(training_output, tmp_path):
    return export_training_output(training_output, tmp_path / "exported")


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
        "README.md", "classifier.ckpt", "embedding_model.ckpt", "hyperparams.yaml", "label_encoder.ckpt"]
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


def write_voices(folder: Path):
    """An 8 kHz stereo int16 wav and a 16 kHz mono float flac."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((8000, 2)) * 3000).astype(np.int16)
    sf.write(folder / "speaker1.wav", stereo, 8000, subtype="PCM_16")
    sf.write(folder / "speaker2.flac", (rng.standard_normal(20000) * 0.1).astype(np.float32), 16000)
    return folder / "speaker1.wav", folder / "speaker2.flac"


def test_verify_files_accepts_8k_stereo_and_uses_the_calibrated_threshold(exported, tmp_path):
    first, second = write_voices(tmp_path / "audio")
    model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    assert model.threshold == THRESHOLD  # the last stage's validation threshold
    score, decision = model.verify_files(str(first), str(second))
    assert bool(decision) == bool(score > THRESHOLD)
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


def test_hub_id_loads_from_an_offline_cache_without_network(exported, tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--lap-org--lap-wavlm-tiny"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
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


def test_model_card_has_metadata_results_and_a_snippet_that_runs(training_output, tmp_path, monkeypatch):
    results = {"Vox1-O": {  # the scoring recipe's results.json
        "cosine": {"eer": 0.0123, "eer_threshold": 0.41, "min_dcf_0.01": 0.11, "min_dcf_0.05": 0.07},
        "asnorm": {"eer": 0.0101, "eer_threshold": 1.7, "min_dcf_0.01": 0.09, "min_dcf_0.05": 0.06}}}
    (training_output / "results.json").write_text(json.dumps(results))
    folder = export_training_output(training_output, tmp_path / "carded", repo_id="lap-org/lap-wavlm-tiny")
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "speechbrain"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert {"type": "eer", "value": 1.23, "name": "EER (%), cosine"} in metrics
    assert {"type": "min_dcf", "value": 0.07, "name": "minDCF (p=0.05), cosine"} in metrics
    assert "| trials | scoring | EER (%) | minDCF 0.01 | minDCF 0.05 |" in card
    assert "| Vox1-O | asnorm | 1.010 | 0.090 | 0.060 |" in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert '"lap-org/lap-wavlm-tiny"' in snippet
    snippet = snippet.replace('"lap-org/lap-wavlm-tiny"', repr(str(folder)))
    monkeypatch.chdir(tmp_path)
    first, second = write_voices(tmp_path)
    shutil.copy(second, tmp_path / "speaker2.wav")  # the snippet names two wav files
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["embedding"].shape == (1, 1, 8)
    assert isinstance(bool(namespace["same_speaker"]), bool)


def test_export_refuses_a_non_empty_folder_unless_overwrite(training_output, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_training_output(training_output, target)
    assert (target / "notes.txt").exists()
    export_training_output(training_output, target, overwrite=True)
    assert not (target / "notes.txt").exists() and (target / "hyperparams.yaml").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_speed_perturbed_classes_get_labels(trained, tmp_path):
    encoder, _ = trained
    # The last stage trained with speed perturbation: 3 classes per speaker.
    output = write_training_output(tmp_path / "speed", encoder, SubCenterClassifier(8, 3 * len(SPEAKERS)))
    model = EncoderClassifier.from_hparams(source=str(export_training_output(output, tmp_path / "model")))
    assert model.mods.classifier.num_subcenters == 3
    labels = model.hparams.label_encoder
    assert len(labels) == 15 and labels.ind2lab[0] == SPEAKERS[0]
    assert labels.ind2lab[len(SPEAKERS) + 1] == f"{SPEAKERS[1]}@speed1"


def test_incomplete_training_output_is_named(training_output, tmp_path):
    (training_output / "save" / "model" / "classifier.ckpt").unlink()
    with pytest.raises(ExportError, match="classifier.ckpt"):
        export_training_output(training_output, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_missing_label_encoder_fails_loudly(exported):
    (exported / "label_encoder.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="label_encoder"):
        EncoderClassifier.from_hparams(source=str(exported))


def test_checkpoints_are_weights_only_loadable(exported):
    for name in ("embedding_model.ckpt", "classifier.ckpt"):
        state = torch.load(exported / name, weights_only=True)
        assert all(isinstance(value, torch.Tensor) for value in state.values())


def test_load_encoder_exports_a_training_output_folder(trained, training_output, tmp_path):
    encoder, _ = trained
    model = load_encoder(training_output, savedir=tmp_path / "cached_export")
    assert isinstance(model, LAPSpeakerRecognition)
    wavs, lens = batch()
    with torch.no_grad():
        assert (model.encode_batch(wavs, lens) - encoder(wavs, lens)).abs().max() < 1e-5
    # The second call reuses the export; newer training checkpoints are exported again.
    exported_yaml = tmp_path / "cached_export" / "hyperparams.yaml"
    stamp = exported_yaml.stat().st_mtime_ns
    load_encoder(training_output, savedir=tmp_path / "cached_export")
    assert exported_yaml.stat().st_mtime_ns == stamp
    summary = training_output / "save" / "model" / "training_summary.json"
    summary.write_text(json.dumps({"stage3": {"valid_threshold": 0.75}}))
    os.utime(summary, ns=(stamp + 10**9, stamp + 10**9))
    assert load_encoder(training_output, savedir=tmp_path / "cached_export").threshold == 0.75


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


def test_reference_checkpoint_export_computes_the_reference_formulation(tiny_wavlm_large, tmp_path):
    from test_convert import reference_state
    from test_lobes import reference_backend

    frontend = WavLMModel.from_pretrained(tiny_wavlm_large).eval()
    layers = frontend.config.num_hidden_layers + 1
    state = reference_state(frontend.state_dict(), L=layers, D=32, h=4, H=16, E=8, classes=7, K=3)
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    torch.save(state, tmp_path / "model.state")
    folder = export_reference(tmp_path / "model.state", tiny_wavlm_large, tmp_path / "from_reference",
                              threshold=0.5)
    model = LAPSpeakerRecognition.from_hparams(source=str(folder))
    assert model.threshold == 0.5
    wavs, lens = batch(seed=3)
    embeddings = model.encode_batch(wavs, lens).squeeze(1)
    # The reference: raw waveform -> all WavLM hidden states as transformers 4.x returns
    # them (the last after the final LayerNorm; tie_last_hidden_states makes 5.x do the
    # same) -> LAP + ASTP, one utterance at a time.
    frontend.config.tie_last_hidden_states = True
    expected = []
    with torch.no_grad():
        for row, length in enumerate((lens * wavs.shape[1]).round().long().tolist()):
            hidden = frontend(wavs[row : row + 1, :length], output_hidden_states=True).hidden_states
            hidden = torch.stack(hidden).double()
            expected.append(reference_backend(state_double(state), hidden, [hidden.shape[2]])[0])
    torch.testing.assert_close(embeddings.double(), torch.stack(expected), rtol=1e-4, atol=1e-4)
    # The random BatchNorm statistics of the checkpoint shrink the input's effect, but
    # different utterances still differ by far more than the tolerance above.
    assert (embeddings[0] - embeddings[1:]).abs().amax(dim=1).min() > 100 * 1e-4


def state_double(state):
    return {key: value.double() if value.is_floating_point() else value for key, value in state.items()}
