"""Tests of lap_speechbrain.export.reference: the import of checkpoints of the authors' reference
implementation, for all eight combinations of layer aggregation and speaker network.

Reference checkpoints are built here from the layout in docs/lap_spec.md
section 7 (and the reference's networks' key names) with random tensors. The
converted LAP + ASTP backend is compared with the spec-level implementation in
test_lobes.py; ECAPA-TDNN and x-vector with the reference's networks restated
here as plain functions of the reference-layout state dict, one utterance at a
time over its own frames, as the reference embeds an utterance.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_WAVLM
from test_inference import batch, snapshot
from test_lobes import (
    LAP,
    SPK,
    reference_astp,
    reference_backend,
    reference_lap,
    to_reference_layout,
)
from transformers import WavLMConfig, WavLMModel

from lap_speechbrain.export.folder import ExportError, export_reference, read_marker
from lap_speechbrain.export.reference import BACKEND_ARGUMENTS, ReferenceCheckpointError, from_reference
from lap_speechbrain.inference import LAPSpeakerRecognition
from lap_speechbrain.lobes import LAPSpeakerBackend, build_backend
from lap_speechbrain.nnet import SubCenterClassifier

pytestmark = pytest.mark.usefixtures("single_thread")
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
    assert config == dict(aggregation="lap", network="astp", num_layers=5, input_size=32, num_heads=4,
                          squeeze_size=2, lap_channels=16, attention_channels=8, embedding_dim=8, num_classes=7,
                          num_subcenters=3)

    backend = build_backend(**{key: config[key] for key in BACKEND_ARGUMENTS if key in config}).double()
    assert type(backend) is LAPSpeakerBackend
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


def comparison_state(frontend, aggregation, network, seed=1, L=5, D=32):
    """A reference ``model.state`` of superb + astp, or lap/superb + mhfa (64 heads, compression 128)."""
    generator = torch.Generator().manual_seed(seed)
    state = reference_state(frontend, seed=seed, L=L, D=D, H=D if aggregation == "superb" else 16)
    lap = {key[len(LAP):]: value for key, value in state.items() if key.startswith(LAP)}
    state = {key: value for key, value in state.items() if not key.startswith(LAP)}
    if network == "astp":
        state[LAP + "layer_weights"] = torch.randn(L, generator=generator, dtype=torch.float64)
        return state
    state = {key: value for key, value in state.items() if not key.startswith(SPK)}
    for prefix in ("l_pool_k.", "l_pool_v."):
        if aggregation == "superb":
            state[SPK + prefix + "layer_weights"] = torch.randn(L, generator=generator, dtype=torch.float64)
        else:  # the value LAP gets other weights than the key LAP
            scale = 1.0 if prefix == "l_pool_k." else 0.5
            state.update({SPK + prefix + key: value * scale if key.endswith("weight") and value.dim() > 1 else value
                          for key, value in lap.items()})
    channels = D if aggregation == "superb" else 16
    for name, shape in (("cmp_linear_k", (128, channels)), ("cmp_linear_v", (128, channels)),
                        ("att_head", (64, 128)), ("pooling_fc", (8, 64 * 128))):
        state[f"{SPK}{name}.weight"] = torch.randn(*shape, generator=generator, dtype=torch.float64) / shape[1] ** 0.5
        state[f"{SPK}{name}.bias"] = 0.1 * torch.randn(shape[0], generator=generator, dtype=torch.float64)
    state["aam_softmax.weight"] = torch.randn(3, 8, 7, generator=generator, dtype=torch.float64)
    return state


def reference_aggregation(state, prefix, hidden_states):
    """The reference's LAP or SUPERB under ``prefix``: (L, B, T, D) -> (B, C, T)."""
    if prefix + "layer_weights" in state:
        weights = torch.softmax(state[prefix + "layer_weights"], dim=0)
        return torch.einsum("l,lbtd->bdt", weights, hidden_states)
    renamed = {LAP + key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return reference_lap(renamed, hidden_states)[0]


def reference_mhfa(state, hidden_states, frames):
    """The reference's MHFA in eval mode, one utterance at a time over its valid frames. (B, E)."""
    keys = reference_aggregation(state, SPK + "l_pool_k.", hidden_states).transpose(1, 2)
    values = reference_aggregation(state, SPK + "l_pool_v.", hidden_states).transpose(1, 2)

    def linear(name, x):
        return x @ state[f"{SPK}{name}.weight"].T + state[f"{SPK}{name}.bias"]

    embeddings = []
    for index, count in enumerate(frames):
        k = linear("cmp_linear_k", keys[index, :count])  # (T, c)
        v = linear("cmp_linear_v", values[index, :count])
        attention = torch.softmax(linear("att_head", k), dim=0)  # (T, heads), over time
        pooled = attention.T @ v  # (heads, c)
        embeddings.append(linear("pooling_fc", pooled.reshape(-1)))
    return torch.stack(embeddings)


@pytest.mark.parametrize("aggregation, network", [("superb", "astp"), ("superb", "mhfa"), ("lap", "mhfa")])
def test_comparison_checkpoints_import_and_compute_the_reference_function(frontend_state, aggregation, network):
    state = comparison_state(frontend_state, aggregation, network)
    converted = from_reference({"module." + key: value for key, value in state.items()})
    config = converted["config"]
    assert (config["aggregation"], config["network"], config["num_layers"], config["input_size"]) == (
        aggregation, network, 5, 32)
    backend = build_backend(**{key: config[key] for key in BACKEND_ARGUMENTS if key in config}).double()
    backend.load_state_dict(converted["backend"], strict=True)
    backend.eval()
    generator = torch.Generator().manual_seed(5)
    hidden_states = torch.randn(5, 3, 24, 32, generator=generator, dtype=torch.float64)
    frames = [24, 17, 8]
    with torch.no_grad():
        ours = backend(hidden_states, torch.tensor(frames, dtype=torch.float64) / 24).squeeze(1)
    if network == "astp":
        expected = reference_astp(state, reference_aggregation(state, LAP, hidden_states), frames)
    else:
        expected = reference_mhfa(state, hidden_states, frames)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    SubCenterClassifier(8, 7, 3).load_state_dict(converted["classifier"], strict=True)


def test_imported_superb_mhfa_exports_and_loads(tiny_wavlm_large, tmp_path):
    frontend = WavLMModel.from_pretrained(tiny_wavlm_large)
    layers = frontend.config.num_hidden_layers + 1
    state = comparison_state(frontend.state_dict(), "superb", "mhfa", L=layers)
    torch.save({key: value.float() if value.is_floating_point() else value for key, value in state.items()},
               tmp_path / "model.state")
    folder = export_reference(tmp_path / "model.state", tiny_wavlm_large, tmp_path / "imported")
    model = LAPSpeakerRecognition.from_hparams(source=str(folder))
    assert (model.hparams.aggregation, model.hparams.network, model.hparams.embedding_dim) == ("superb", "mhfa", 8)
    wavs, lens = batch(seed=3)
    assert model.encode_batch(wavs, lens).shape == (len(wavs), 1, 8)


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
    backend = build_backend(**{key: config[key] for key in BACKEND_ARGUMENTS if key in config})
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


def test_reference_checkpoint_export_computes_the_reference_formulation(tiny_wavlm_large, tmp_path):
    frontend = WavLMModel.from_pretrained(tiny_wavlm_large).eval()
    layers = frontend.config.num_hidden_layers + 1
    state = reference_state(frontend.state_dict(), L=layers, D=32, h=4, H=16, E=8, classes=7, K=3)
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    torch.save(state, tmp_path / "model.state")
    folder = export_reference(tmp_path / "model.state", tiny_wavlm_large, tmp_path / "from_reference",
                              threshold=0.5)
    model = LAPSpeakerRecognition.from_hparams(source=str(folder))
    assert model.threshold == 0.5
    assert read_marker(folder)["source"]["path"] == str((tmp_path / "model.state").resolve())
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


def test_reference_export_refuses_its_own_input_folder(tiny_wavlm_large, tmp_path):
    frontend = WavLMModel.from_pretrained(tiny_wavlm_large)
    (tmp_path / "refs").mkdir()
    torch.save(reference_state(frontend.state_dict(), L=frontend.config.num_hidden_layers + 1),
               tmp_path / "refs" / "model.state")
    before = snapshot(tmp_path / "refs")
    with pytest.raises(ExportError, match="contains its source"):
        export_reference(tmp_path / "refs" / "model.state", tiny_wavlm_large, tmp_path / "refs", overwrite=True)
    assert snapshot(tmp_path / "refs") == before



ECAPA_CHANNELS, ECAPA_SCALE, ECAPA_AGGREGATED, ECAPA_ATTENTION, SE_CHANNELS = 512, 8, 1536, 128, 128
XVECTOR_HIDDEN, XVECTOR_STATISTICS = 512, 1500
XVECTOR_KERNELS, XVECTOR_DILATIONS = (5, 3, 3, 1, 1), (1, 2, 3, 1, 1)


def random_layers(shapes, generator):
    """Reference-layout tensors for {name: shape}: a weight and a bias, or for a one-element shape
    (a BatchNorm's channels) its parameters and buffers."""
    state = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # a BatchNorm
            (size,) = shape
            state[name + ".weight"] = 1 + 0.2 * torch.randn(size, generator=generator, dtype=torch.float64)
            state[name + ".bias"] = 0.2 * torch.randn(size, generator=generator, dtype=torch.float64)
            state[name + ".running_mean"] = 0.5 * torch.randn(size, generator=generator, dtype=torch.float64)
            state[name + ".running_var"] = 0.5 + torch.rand(size, generator=generator, dtype=torch.float64)
            state[name + ".num_batches_tracked"] = torch.tensor(77)
        else:
            fan_in = shape[1] * (shape[2] if len(shape) > 2 else 1)
            state[name + ".weight"] = torch.randn(*shape, generator=generator, dtype=torch.float64) / fan_in**0.5
            state[name + ".bias"] = 0.1 * torch.randn(shape[0], generator=generator, dtype=torch.float64)
    return state


def ecapa_shapes(frames, embedding):
    channels, width = ECAPA_CHANNELS, ECAPA_CHANNELS // ECAPA_SCALE
    shapes = {"layer1.conv": (channels, frames, 5), "layer1.bn": (channels,)}
    for block in (2, 3, 4):
        prefix = f"layer{block}.se_res2block."
        shapes.update({prefix + "0.conv": (channels, channels, 1), prefix + "0.bn": (channels,)})
        for index in range(ECAPA_SCALE - 1):
            shapes.update({f"{prefix}1.convs.{index}": (width, width, 3), f"{prefix}1.bns.{index}": (width,)})
        shapes.update({prefix + "2.conv": (channels, channels, 1), prefix + "2.bn": (channels,),
                       prefix + "3.linear1": (SE_CHANNELS, channels), prefix + "3.linear2": (channels, SE_CHANNELS)})
    shapes.update({"conv": (ECAPA_AGGREGATED, 3 * channels, 1),
                   "pool.linear1": (ECAPA_ATTENTION, 3 * ECAPA_AGGREGATED, 1),
                   "pool.linear2": (ECAPA_AGGREGATED, ECAPA_ATTENTION, 1),
                   "bn": (2 * ECAPA_AGGREGATED,), "linear": (embedding, 2 * ECAPA_AGGREGATED)})
    return shapes


def xvector_shapes(frames, embedding):
    inputs = [frames] + [XVECTOR_HIDDEN] * 4
    outputs = [XVECTOR_HIDDEN] * 4 + [XVECTOR_STATISTICS]
    shapes = {}
    for layer, (size_in, size_out, kernel) in enumerate(zip(inputs, outputs, XVECTOR_KERNELS)):
        shapes.update({f"layers.{3 * layer}": (size_out, size_in, kernel), f"layers.{3 * layer + 2}": (size_out,)})
    shapes.update({"linear1": (embedding, 2 * XVECTOR_STATISTICS), "linear2": (embedding, embedding)})
    return shapes


def tdnn_state(frontend, aggregation, network, seed=3, embedding=8, L=5):
    """A reference ``model.state`` of lap/superb + ecapa-tdnn or x-vector (SSL width 32)."""
    if aggregation == "lap":
        state = reference_state(frontend, seed=seed, L=L)
    else:
        state = comparison_state(frontend, aggregation, "astp", seed=seed, L=L)
    state = {key: value for key, value in state.items() if not key.startswith(SPK)}
    frames = 32 if aggregation == "superb" else 16  # the SSL width or LAP's output
    shapes = (ecapa_shapes if network == "ecapa-tdnn" else xvector_shapes)(frames, embedding)
    generator = torch.Generator().manual_seed(seed)
    state.update({SPK + key: value for key, value in random_layers(shapes, generator).items()})
    return state


def batch_norm(state, prefix, x):
    """Eval-mode BatchNorm over the channels of (C, T) or (C,)."""
    shape = (-1, 1) if x.dim() == 2 else (-1,)
    mean, var = state[prefix + ".running_mean"].view(shape), state[prefix + ".running_var"].view(shape)
    scale, shift = state[prefix + ".weight"].view(shape), state[prefix + ".bias"].view(shape)
    return (x - mean) / torch.sqrt(var + 1e-5) * scale + shift


def conv(state, prefix, x, padding=0, dilation=1):
    """A reference Conv1d (zero padding) on (C, T)."""
    return F.conv1d(x[None], state[prefix + ".weight"], state[prefix + ".bias"], padding=padding,
                    dilation=dilation)[0]


def linear(state, prefix, x):
    return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]


def reference_ecapa(state, x):
    """The reference's ECAPA-TDNN (global-context ASTP, no embedding BatchNorm) on one utterance (C, T)."""
    def conv_relu_bn(prefix, x, padding=0, dilation=1):
        return batch_norm(state, prefix + ".bn", F.relu(conv(state, prefix + ".conv", x, padding, dilation)))

    def se_res2_block(prefix, x, dilation):
        out = conv_relu_bn(prefix + "0", x)
        groups = torch.split(out, ECAPA_CHANNELS // ECAPA_SCALE, dim=0)
        chained, outputs = groups[0], []
        for index in range(ECAPA_SCALE - 1):  # groups 0..6 in a chain, the last one passed through
            if index:
                chained = chained + groups[index]
            chained = F.relu(conv(state, f"{prefix}1.convs.{index}", chained, dilation, dilation))
            chained = batch_norm(state, f"{prefix}1.bns.{index}", chained)
            outputs.append(chained)
        out = conv_relu_bn(prefix + "2", torch.cat(outputs + [groups[-1]], dim=0))
        gate = torch.sigmoid(linear(state, prefix + "3.linear2", F.relu(linear(state, prefix + "3.linear1",
                                                                                out.mean(dim=1)))))
        return x + out * gate[:, None]

    out = conv_relu_bn(SPK + "layer1", x, padding=2)
    outputs = []
    for block, dilation in ((2, 2), (3, 3), (4, 4)):
        out = se_res2_block(f"{SPK}layer{block}.se_res2block.", out, dilation)
        outputs.append(out)
    out = F.relu(conv(state, SPK + "conv", torch.cat(outputs, dim=0)))
    frames = out.shape[1]
    context = torch.cat([out, out.mean(dim=1, keepdim=True).expand(-1, frames),
                         torch.sqrt(out.var(dim=1, keepdim=True) + 1e-7).expand(-1, frames)], dim=0)
    scores = conv(state, SPK + "pool.linear2", torch.tanh(conv(state, SPK + "pool.linear1", context)))
    attention = torch.softmax(scores, dim=1)
    mean = (attention * out).sum(dim=1)
    std = torch.sqrt(((attention * out**2).sum(dim=1) - mean**2).clamp(min=1e-7))
    return linear(state, SPK + "linear", batch_norm(state, SPK + "bn", torch.cat([mean, std])))


def reference_xvector(state, x):
    """The reference's x-vector in eval mode (the embedding is linear1's output) on one utterance (C, T)."""
    for layer, (kernel, dilation) in enumerate(zip(XVECTOR_KERNELS, XVECTOR_DILATIONS)):
        x = F.relu(conv(state, f"{SPK}layers.{3 * layer}", x, (kernel - 1) // 2, dilation))
        x = batch_norm(state, f"{SPK}layers.{3 * layer + 2}", x)
    statistics = torch.cat([x.mean(dim=1), torch.sqrt(x.var(dim=1) + 1e-7)])
    return linear(state, SPK + "linear1", statistics)


@pytest.mark.parametrize("aggregation", ["superb", "lap"])
@pytest.mark.parametrize("network", ["ecapa-tdnn", "x-vector"])
def test_tdnn_checkpoints_import_and_compute_the_reference_function(frontend_state, aggregation, network):
    state = tdnn_state(frontend_state, aggregation, network)
    converted = from_reference({"module." + key: value for key, value in state.items()})
    config = converted["config"]
    assert (config["aggregation"], config["network"], config["num_layers"], config["input_size"],
            config["embedding_dim"]) == (aggregation, network, 5, 32, 8)
    backend = build_backend(**{key: config[key] for key in BACKEND_ARGUMENTS if key in config}).double()
    backend.load_state_dict(converted["backend"], strict=True)
    backend.eval()
    generator = torch.Generator().manual_seed(5)
    hidden_states = torch.randn(5, 3, 24, 32, generator=generator, dtype=torch.float64)
    aggregated = reference_aggregation(state, LAP, hidden_states)  # (B, C, T)
    reference = reference_ecapa if network == "ecapa-tdnn" else reference_xvector
    with torch.no_grad():
        for index, count in enumerate([24, 17, 8]):  # each utterance alone, as the reference embeds it
            ours = backend(hidden_states[:, index:index + 1, :count]).reshape(-1)
            torch.testing.assert_close(ours, reference(state, aggregated[index, :, :count]), rtol=1e-9, atol=1e-9)
    SubCenterClassifier(8, 7, 3).load_state_dict(converted["classifier"], strict=True)


def test_the_res2net_channel_order_matters(frontend_state):
    """Mapped without the roll (the reference's channels in place), the imported ECAPA-TDNN computes
    another function: the check above can fail."""
    state = tdnn_state(frontend_state, "superb", "ecapa-tdnn")
    converted = from_reference(state)
    config = converted["config"]
    backend = build_backend(**{key: config[key] for key in BACKEND_ARGUMENTS if key in config}).double().eval()
    width = ECAPA_CHANNELS // ECAPA_SCALE
    naive = dict(converted["backend"])
    for key, value in converted["backend"].items():
        if ".tdnn1." in key and value.dim():
            naive[key] = torch.roll(value, -width, dims=0)
        elif ".tdnn2.conv.conv.weight" in key:
            naive[key] = torch.roll(value, -width, dims=1)
    backend.load_state_dict(naive, strict=True)
    hidden_states = torch.randn(5, 1, 24, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ours = backend(hidden_states).reshape(-1)
    expected = reference_ecapa(state, reference_aggregation(state, LAP, hidden_states)[0])
    assert not torch.allclose(ours, expected, rtol=1e-3, atol=1e-3)


def test_tdnn_sizes_other_than_build_backends_are_refused_naming_them(frontend_state):
    state = tdnn_state(frontend_state, "superb", "ecapa-tdnn")
    state[SPK + "layer1.conv.weight"] = torch.zeros(256, 32, 5, dtype=torch.float64)
    with pytest.raises(ReferenceCheckpointError, match=r"ECAPATDNNNetwork channels=256 \(build_backend has the "
                                                       r"reference's 512\)"):
        from_reference(state)
    state = tdnn_state(frontend_state, "lap", "x-vector")
    state[SPK + "layers.12.weight"] = torch.zeros(1000, 512, 1, dtype=torch.float64)
    with pytest.raises(ReferenceCheckpointError, match=r"XvectorNetwork statistics_channels=1000"):
        from_reference(state)


def test_an_imported_x_vector_exports_loads_and_embeds_as_the_reference(tiny_wavlm_large, tmp_path):
    """The whole path of `lap-speechbrain export --reference-checkpoint` for a TDNN network, and the
    x-vector's minimum length carried into the exported yaml."""
    frontend = WavLMModel.from_pretrained(tiny_wavlm_large)
    state = tdnn_state(frontend.state_dict(), "lap", "x-vector", L=frontend.config.num_hidden_layers + 1)
    torch.save({key: value.float() if value.is_floating_point() else value for key, value in state.items()},
               tmp_path / "model.state")
    folder = export_reference(tmp_path / "model.state", tiny_wavlm_large, tmp_path / "imported")
    model = LAPSpeakerRecognition.from_hparams(source=str(folder))
    hparams = model.hparams
    assert (hparams.network, hparams.embedding_dim, hparams.min_audio_samples) == ("x-vector", 8, 2320)
    wav = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(4))
    encoder = model.mods.embedding_model
    with torch.no_grad():
        hidden_states = encoder.hidden_states(wav).double()
        ours = model.encode_batch(wav).reshape(-1).double()
    expected = reference_xvector(state, reference_aggregation(state, LAP, hidden_states)[0])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
