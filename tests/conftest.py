"""Shared fixtures and helpers: tiny random WavLM models built offline once per session,
tiny trained-looking models, one thread for small tensors, and synthetic audio."""

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pytest
import soundfile
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_WAVLM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    num_buckets=32,
    max_bucket_distance=64,
)
SAMPLE_RATE = 16000


def speaker_voice(speaker: int, seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A harmonic tone with a speaker-dependent pitch and spectral tilt, plus a little noise.

    Different ``speaker`` values are told apart by a model; ``rng`` varies the
    phases and the noise, so every utterance differs.
    """
    time_axis = np.arange(int(sample_rate * seconds)) / sample_rate
    pitch = 90.0 + 35.0 * speaker
    harmonics = sum(
        np.sin(2 * np.pi * pitch * k * time_axis + rng.uniform(0, 2 * np.pi)) / k ** (1 + 0.2 * speaker)
        for k in range(1, 6)
    )
    return (0.1 * harmonics + 0.01 * rng.standard_normal(len(time_axis))).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: Optional[str] = None) -> Path:
    """Writes (N,) or (N, channels) samples to ``path``, creating its folder; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sample_rate, subtype=subtype)
    return path


def write_voices(folder: Path) -> Tuple[Path, Path]:
    """Two differently formatted inputs: an 8 kHz stereo int16 wav and a 16 kHz mono float flac."""
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((8000, 2)) * 3000).astype(np.int16)
    first = write_audio(Path(folder) / "speaker1.wav", stereo, 8000, subtype="PCM_16")
    second = write_audio(Path(folder) / "speaker2.flac", (rng.standard_normal(20000) * 0.1).astype(np.float32))
    return first, second


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for tiny tensors: on a shared, oversubscribed machine
    two OpenMP threads make small ops up to 50x slower. Modules of small-tensor
    tests request it with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_wavlm_large(tmp_path_factory) -> str:
    """Folder of a tiny Large-type WavLM (stable layer norm, LayerNorm CNN)."""
    from lap_speechbrain.demo.random_ssl import save_random_wavlm

    return save_random_wavlm(
        tmp_path_factory.mktemp("wavlm_large"),
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        layerdrop=0.5,
        **TINY_WAVLM,
    )


@pytest.fixture(scope="session")
def tiny_wavlm_base(tmp_path_factory) -> str:
    """Folder of a tiny Base-type WavLM (GroupNorm in the first CNN layer)."""
    from lap_speechbrain.demo.random_ssl import save_random_wavlm

    return save_random_wavlm(
        tmp_path_factory.mktemp("wavlm_base"),
        do_stable_layer_norm=False,
        feat_extract_norm="group",
        layerdrop=0.5,
        **TINY_WAVLM,
    )


@pytest.fixture
def make_encoder(tmp_path):
    """Builds an SSLSpeakerEncoder on a tiny WavLM folder."""
    from speechbrain.integrations.huggingface.wavlm import WavLM

    from lap_speechbrain.lobes import SSLSpeakerEncoder

    def build(source: str, frozen: bool = True, **backend) -> SSLSpeakerEncoder:
        backend = {"lap_channels": 16, "num_heads": 4, "embedding_dim": 8, **backend}
        ssl = WavLM(source, save_path=str(tmp_path / "ssl_cache"))
        return SSLSpeakerEncoder(ssl, frozen=frozen, **backend)

    return build


@pytest.fixture
def trained(make_encoder, tiny_wavlm_large):
    """(tiny encoder made to look trained, in eval mode; its classifier) of test_inference."""
    from test_inference import BACKEND, SPEAKERS, randomize_

    from lap_speechbrain.nnet import SubCenterClassifier

    encoder = make_encoder(tiny_wavlm_large, **BACKEND)
    randomize_(encoder)
    return encoder, SubCenterClassifier(8, len(SPEAKERS))


@pytest.fixture
def training_output(trained, tmp_path):
    """A training output folder as training leaves it (test_inference.write_training_output)."""
    from test_inference import write_training_output

    encoder, classifier = trained
    return write_training_output(tmp_path / "train_out", encoder, classifier)


@pytest.fixture
def exported(training_output):
    """The exported folder training wrote: ``<training output>/model``."""
    return training_output / "model"


@pytest.fixture
def make_training_output(make_encoder, tiny_wavlm_large, tmp_path):
    """Writes training output folders of tiny models that look trained, as tests/test_inference.py does.

    ``make_training_output(name, seed)`` returns (folder, the in-memory encoder
    in eval mode); different seeds give different backend weights.
    """
    from test_inference import BACKEND, SPEAKERS, randomize_, write_training_output

    from lap_speechbrain.nnet import SubCenterClassifier

    def build(name: str = "training", seed: int = 0):
        encoder = make_encoder(tiny_wavlm_large, **BACKEND)
        randomize_(encoder, seed)
        classifier = SubCenterClassifier(BACKEND["embedding_dim"], len(SPEAKERS))
        return write_training_output(tmp_path / name, encoder, classifier), encoder

    return build


@pytest.fixture
def make_exported(make_training_output, tmp_path):
    """``make_exported(name, seed)``: (exported folder, in-memory encoder) of a tiny model."""
    from lap_speechbrain.export.folder import export_training_output

    def build(name: str = "exported", seed: int = 0):
        output, encoder = make_training_output(f"{name}_training", seed)
        return export_training_output(output, tmp_path / name), encoder

    return build
