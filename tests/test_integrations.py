"""pyannote.audio's diarization pipeline with a LAP model as its speaker embedding.

No pyannote weights exist offline, so the segmentation network is a small,
randomly initialised ``PyanNet`` with the powerset specifications of
pyannote's released segmentation models, and VBx gets a PLDA that whitens
nothing (identity transforms). The embedding is a tiny exported LAP model.
"""

import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from speechbrain.inference.speaker import EncoderClassifier

pytest.importorskip("pyannote.audio")

from pyannote.audio.core.plda import PLDA  # noqa: E402
from pyannote.audio.core.task import Problem, Resolution, Specifications  # noqa: E402
from pyannote.audio.models.segmentation import PyanNet  # noqa: E402
from pyannote.audio.pipelines import SpeakerDiarization  # noqa: E402
from pyannote.audio.pipelines.speaker_verification import PretrainedSpeakerEmbedding  # noqa: E402

from lap_speechbrain.demo.synthetic_speech import sample_speakers, speak_duration  # noqa: E402
from lap_speechbrain.integrations.pyannote import LAPPyannoteEmbedding, model_folder  # noqa: E402

SAMPLE_RATE = 16000
CHUNK_SECONDS = 5.0


def conversation(seed: int = 0, turns=(2.5, 1.5, 3.0, 2.0, 1.5)) -> torch.Tensor:
    """(1, N) two synthetic speakers taking turns, with pauses and a little noise."""
    rng = np.random.default_rng(seed)
    speakers = sample_speakers(rng, 2)
    pause = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    pieces = []
    for turn, seconds in enumerate(turns):
        pieces += [speak_duration(speakers[turn % 2], seconds, rng)[0], pause]
    wav = np.concatenate(pieces)
    wav = wav + 0.003 * rng.standard_normal(len(wav)).astype(np.float32)
    return torch.from_numpy(wav)[None]


def random_segmentation(seed: int = 0) -> PyanNet:
    """A small random PyanNet with the released models' powerset output (3 speakers, 2 at once)."""
    torch.manual_seed(seed)
    model = PyanNet(lstm={"hidden_size": 32, "num_layers": 1}, linear={"hidden_size": 32, "num_layers": 1})
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=CHUNK_SECONDS,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    model.setup()  # adds the classifier layer for these specifications
    return model.eval()


def flat_plda(folder: Path, dimension: int) -> PLDA:
    """A PLDA with identity transforms: lets VBx run on embeddings no PLDA was trained for."""
    np.savez(folder / "xvec_transform.npz", mean1=np.zeros(dimension), mean2=np.zeros(dimension),
             lda=np.eye(dimension))
    np.savez(folder / "plda.npz", mu=np.zeros(dimension), tr=np.eye(dimension), psi=np.ones(dimension))
    return PLDA(folder / "xvec_transform.npz", folder / "plda.npz", lda_dimension=dimension)


def masked_alone(model: EncoderClassifier, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``encode_batch`` on the samples a frame mask keeps, alone (frames stretched evenly over the samples)."""
    keep = torch.nn.functional.interpolate(mask[None, None].float(), size=waveform.shape[-1])[0, 0] > 0.5
    return model.encode_batch(waveform.reshape(-1)[keep][None])[0, 0]


@pytest.mark.parametrize("clustering", ["AgglomerativeClustering", "VBxClustering"])
def test_diarization_pipeline_runs_on_lap_embeddings_of_the_masked_audio(make_exported, tmp_path, clustering):
    folder, _ = make_exported()
    embedding = LAPPyannoteEmbedding(folder)
    pipeline = SpeakerDiarization(
        segmentation=random_segmentation(),
        segmentation_step=0.5,
        embedding=embedding,
        embedding_batch_size=4,
        clustering=clustering,
        plda=flat_plda(tmp_path, embedding.dimension),
    )
    parameters = pipeline.default_parameters()
    if clustering == "AgglomerativeClustering":
        parameters["clustering"] = {"method": "centroid", "min_cluster_size": 2, "threshold": 0.7}
    pipeline.instantiate(parameters)
    audio = {"waveform": conversation(), "sample_rate": SAMPLE_RATE}
    artifacts = {}

    def hook(step, artifact, file=None, total=None, completed=None):
        if completed is None:  # the step's result, not a progress report
            artifacts[step] = artifact

    output = pipeline(audio, num_speakers=2, hook=hook)

    turns = list(output.speaker_diarization.itertracks(yield_label=True))  # as the README prints them
    assert {speaker for _, _, speaker in turns} == set(output.speaker_diarization.labels())
    assert len(output.speaker_diarization.labels()) == 2
    assert output.speaker_embeddings.shape == (2, embedding.dimension)
    assert np.isfinite(output.speaker_embeddings).all()
    # Each (chunk, local speaker) embedding the pipeline computed is our
    # encode_batch on that chunk's audio under that speaker's mask.
    segmentation = artifacts["segmentation"]
    num_chunks, _, num_speakers = segmentation.data.shape
    embeddings = artifacts["embeddings"]  # (num_chunks, num_speakers, dimension)
    compared = 0
    for chunk in range(num_chunks):
        waveform, _ = pipeline._audio.crop(audio, segmentation.sliding_window[chunk], mode="pad")
        for speaker in range(num_speakers):
            mask = torch.from_numpy(np.nan_to_num(segmentation.data[chunk, :, speaker]))
            kept = int((torch.nn.functional.interpolate(mask[None, None], size=waveform.shape[-1]) > 0.5).sum())
            if kept < embedding.min_num_samples:
                assert np.isnan(embeddings[chunk, speaker]).all()
                continue
            expected = masked_alone(embedding.encoder, waveform, mask).numpy()
            assert np.abs(embeddings[chunk, speaker] - expected).max() < 1e-5
            compared += 1
    assert compared >= num_chunks  # the random segmentation kept speech in most chunks


def test_pyannote_wrapper_masks_rows_and_finds_the_receptive_field(make_exported):
    folder, _ = make_exported()
    # What SpeakerDiarization builds from its ``embedding`` argument.
    embedding = LAPPyannoteEmbedding(folder)
    wrapper = PretrainedSpeakerEmbedding(embedding)
    assert (wrapper.sample_rate, wrapper.dimension, wrapper.metric) == (SAMPLE_RATE, 8, "cosine")
    # pyannote's own bisection (RuntimeError below the limit) finds the stored receptive field.
    assert wrapper.min_num_samples == 400
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(3, 1, 32000, generator=generator)
    frames = 100
    masks = torch.zeros(3, frames)
    masks[0, 10:60] = 1.0
    masks[1, :] = 1.0
    masks[1, 40:45] = 0.0
    masks[2, 50:51] = 1.0  # 320 samples: shorter than the receptive field
    embeddings = wrapper(waveforms, masks)
    assert embeddings.shape == (3, 8)
    for row in (0, 1):
        expected = masked_alone(embedding.encoder, waveforms[row], masks[row]).numpy()
        assert np.abs(embeddings[row] - expected).max() < 1e-5
    assert np.isnan(embeddings[2]).all()
    with pytest.raises(RuntimeError, match="399 samples is shorter than the model's receptive field"):
        wrapper.model_(torch.zeros(1, 1, 399))


def seed_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Puts ``folder`` into a Hugging Face cache as ``repo_id`` at ``commit``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_two_hub_models_in_one_cache_dir_stay_distinct(make_exported, tmp_path, monkeypatch):
    import huggingface_hub.constants

    first, first_trained = make_exported("first", seed=0)
    second, second_trained = make_exported("second", seed=1)
    hub_cache = tmp_path / "hf_cache"
    seed_hub_cache(hub_cache, "lap-org/lap-first", first, "1" * 40)
    seed_hub_cache(hub_cache, "lap-org/lap-second", second, "2" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    cache_dir = tmp_path / "pyannote_cache"
    repos = ("lap-org/lap-first", "lap-org/lap-second")
    # One after the other, in one cache folder, with a torch.device as pyannote passes it.
    loaded = [LAPPyannoteEmbedding(repo, device=torch.device("cpu"), cache_dir=cache_dir) for repo in repos]
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(model_folder(r, cache_dir).name for r in repos)
    waveforms = 0.1 * torch.randn(2, 1, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeddings = [model(waveforms) for model in loaded]
        for trained, got in zip((first_trained, second_trained), embeddings):
            assert (got - trained(waveforms[:, 0], torch.ones(2))[:, 0]).abs().max() < 1e-5
    assert (embeddings[0] - embeddings[1]).abs().max() > 1e-2


def test_moving_the_model_moves_encode_batch_inputs(make_exported):
    folder, _ = make_exported()
    embedding = LAPPyannoteEmbedding(folder)
    assert embedding.encoder.device == "cpu"
    embedding.to(torch.device("meta"))  # any device other than the one it was loaded on
    assert embedding.encoder.device == "meta"
    assert next(embedding.encoder.parameters()).device.type == "meta"


def test_missing_pyannote_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "lap_speechbrain.integrations.pyannote")
    monkeypatch.setitem(sys.modules, "pyannote.audio", None)
    with pytest.raises(ImportError, match=r'pip install "lap_speechbrain\[pyannote\]"'):
        importlib.import_module("lap_speechbrain.integrations.pyannote")
