"""Tests of lap_speechbrain.export.reference.from_reference on reference-layout checkpoints.

The checkpoints are built here from the layout in docs/lap_spec.md section 7 with
random tensors; the converted backend is compared with the spec-level
implementation in test_lobes.py.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_WAVLM
from test_lobes import reference_backend, single_thread, to_reference_layout  # noqa: F401 (fixture)
from transformers import WavLMConfig, WavLMModel

from lap_speechbrain.export.reference import (
    BACKEND_ARGUMENTS,
    ReferenceCheckpointError,
    from_reference,
)
from lap_speechbrain.lobes import LAPSpeakerBackend
from lap_speechbrain.nnet import SubCenterClassifier

# L 5 (r 2), D 32, h 4, H 16 (attention 8), E 8, 7 classes, K 3
SIZES = dict(L=5, D=32, h=4, H=16, E=8, classes=7, K=3)


def wavlm_config(layers=SIZES["L"] - 1):
    return WavLMConfig(**{**TINY_WAVLM, "num_hidden_layers": layers})


@pytest.fixture(scope="module")
def frontend_state():
    torch.manual_seed(0)
    return WavLMModel(wavlm_config()).state_dict()


def reference_state(frontend, seed=0, L=5, D=32, h=4, H=16, E=8, classes=7, K=3):
    """A reference ``model.state``: every key and shape of docs/lap_spec.md section 7."""
    generator = torch.Generator().manual_seed(seed)
    r, A = L // 2, H // 2

    def rand(*shape, scale=None):
        scale = scale if scale is not None else (shape[1] if len(shape) > 1 else 25) ** -0.5
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    def batch_norm(prefix, size):
        return {
            prefix + ".weight": 1 + rand(size, scale=0.2),
            prefix + ".bias": rand(size, scale=0.2),
            prefix + ".running_mean": rand(size, scale=0.5),
            prefix + ".running_var": 0.5 + rand(size, scale=1.0).abs(),
            prefix + ".num_batches_tracked": torch.tensor(1234),
        }

    lap, spk = "backend.layer_aggregation.", "backend.speaker_network."
    state = {"frontend." + key: value.clone() for key, value in frontend.items()}
    state.update(batch_norm(lap + "in_norm", D))
    state[lap + "in_weight.weight"] = rand(D, D, 1, 1)
    state[lap + "in_weight.bias"] = rand(D, scale=0.2)
    state[lap + "sq_weight"] = rand(h, L, r, scale=0.5)
    state[lap + "sq_bias"] = rand(h, 1, r, scale=0.2)
    state[lap + "ex_weight"] = rand(h, r, L, scale=0.5)
    state[lap + "ex_bias"] = rand(h, 1, L, scale=0.2)
    state[lap + "out_weight.weight"] = rand(H, D, 1)
    state[lap + "out_weight.bias"] = rand(H, scale=0.2)
    state.update(batch_norm(lap + "out_norm", H))
    state[spk + "t_pool.attention.0.weight"] = rand(A, 3 * H, 1)
    state[spk + "t_pool.attention.0.bias"] = rand(A, scale=0.2)
    state.update(batch_norm(spk + "t_pool.attention.2", A))
    state[spk + "t_pool.attention.3.weight"] = rand(H, A, 1)
    state[spk + "t_pool.attention.3.bias"] = rand(H, scale=0.2)
    state.update(batch_norm(spk + "t_pool.norm", 2 * H))
    state[spk + "emb_weight.weight"] = rand(E, 2 * H)
    state[spk + "emb_weight.bias"] = rand(E, scale=0.2)
    state.update(batch_norm(spk + "emb_norm", E))
    state["aam_softmax.weight"] = rand(K, E, classes, scale=1.0)
    return state


@pytest.mark.parametrize("source", ["dict", "ddp", "file"])
def test_round_trip_computes_the_reference_function(source, frontend_state, tmp_path):
    state = reference_state(frontend_state)
    if source == "ddp":
        given = {"module." + key: value for key, value in state.items()}
    elif source == "file":
        given = tmp_path / "model.state"
        torch.save(state, given)
    else:
        given = state
    converted = from_reference(given)
    config = converted["config"]
    assert config == dict(num_layers=5, input_size=32, num_heads=4, squeeze_size=2, lap_channels=16,
                          attention_channels=8, embedding_dim=8, num_classes=7, num_subcenters=3)

    backend = LAPSpeakerBackend(**{key: config[key] for key in BACKEND_ARGUMENTS}).double()
    backend.load_state_dict(converted["backend"], strict=True)
    backend.eval()
    # Same tensors back in the reference layout ...
    backend_keys = [key for key in state if key.startswith("backend.")]
    round_trip = to_reference_layout(backend)
    assert sorted(round_trip) == sorted(backend_keys)
    for key in backend_keys:
        assert torch.equal(round_trip[key], state[key]), key
    # ... and the same function as the spec-level implementation.
    generator = torch.Generator().manual_seed(5)
    hidden_states = torch.randn(5, 3, 24, 32, generator=generator, dtype=torch.float64)
    frames = [24, 17, 8]
    with torch.no_grad():
        ours = backend(hidden_states, torch.tensor(frames, dtype=torch.float64) / 24).squeeze(1)
    expected = reference_backend(state, hidden_states, frames)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)

    frontend = WavLMModel(wavlm_config())
    frontend.load_state_dict(converted["frontend"], strict=True)

    classifier = SubCenterClassifier(8, 7, 3).double()
    classifier.load_state_dict(converted["classifier"], strict=True)
    embeddings = torch.randn(4, 1, 8, generator=generator, dtype=torch.float64)
    weight = state["aam_softmax.weight"]  # (K, E, classes)
    expected = torch.stack(
        [
            torch.stack([F.cosine_similarity(embeddings[:, 0], weight[k, :, c][None], dim=1)
                         for k in range(3)]).amax(dim=0)
            for c in range(7)
        ],
        dim=1,
    )
    torch.testing.assert_close(classifier(embeddings).squeeze(1), expected.float())


def test_legacy_weight_norm_names_are_renamed(frontend_state):
    state = reference_state(frontend_state)
    for new, old in (("parametrizations.weight.original0", "weight_g"),
                     ("parametrizations.weight.original1", "weight_v")):
        state["frontend.encoder.pos_conv_embed.conv." + old] = state.pop(
            "frontend.encoder.pos_conv_embed.conv." + new
        )
    WavLMModel(wavlm_config()).load_state_dict(from_reference(state)["frontend"], strict=True)


def test_single_head_checkpoint_has_no_input_projection(frontend_state):
    state = reference_state(frontend_state, h=1)
    del state["backend.layer_aggregation.in_weight.weight"]
    del state["backend.layer_aggregation.in_weight.bias"]
    converted = from_reference(state)
    config = converted["config"]
    backend = LAPSpeakerBackend(**{key: config[key] for key in BACKEND_ARGUMENTS})
    backend.load_state_dict(converted["backend"], strict=True)


def test_unknown_and_missing_keys_are_listed(frontend_state):
    state = reference_state(frontend_state)
    state["backend.layer_aggregation.extra_gate"] = torch.zeros(3)
    del state["backend.speaker_network.emb_norm.running_var"]
    with pytest.raises(ReferenceCheckpointError) as error:
        from_reference(state)
    message = str(error.value)
    assert "missing keys: ['backend.speaker_network.emb_norm.running_var']" in message
    assert "unknown keys: ['backend.layer_aggregation.extra_gate']" in message


def test_missing_size_key_is_listed(frontend_state):
    state = reference_state(frontend_state)
    del state["backend.layer_aggregation.sq_weight"]
    with pytest.raises(ReferenceCheckpointError, match="backend.layer_aggregation.sq_weight"):
        from_reference(state)
    without_frontend = {k: v for k, v in reference_state(frontend_state).items() if not k.startswith("frontend.")}
    with pytest.raises(ReferenceCheckpointError, match=r"frontend\.\*"):
        from_reference(without_frontend)


def test_inconsistent_checkpoints_are_rejected(frontend_state, tmp_path):
    state = reference_state(frontend_state)
    state["backend.layer_aggregation.ex_bias"] = torch.zeros(4, 1, 6)
    with pytest.raises(ReferenceCheckpointError, match=r"ex_bias \(4, 1, 6\) \(expected \(4, 1, 5\)\)"):
        from_reference(state)
    torch.manual_seed(0)
    deeper = WavLMModel(wavlm_config(layers=5)).state_dict()
    with pytest.raises(ReferenceCheckpointError, match="L=5"):
        from_reference(reference_state(deeper))
    with pytest.raises(FileNotFoundError, match="nothing.state"):
        from_reference(tmp_path / "nothing.state")
    torch.save({"model": reference_state(frontend_state)}, tmp_path / "nested.state")
    with pytest.raises(ReferenceCheckpointError, match="not a flat state dict"):
        from_reference(tmp_path / "nested.state")
