"""export.reference: import of the reference's ECAPA-TDNN and x-vector checkpoints (its LAP, SUPERB,
ASTP and MHFA imports are tested in test_export.py, whose reference-layout states these build on).

Each imported backend is checked against the reference's networks restated
here as plain functions of the reference-layout state dict, one utterance at a
time over its own frames, as the reference embeds an utterance.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import WavLMModel
from test_export import (  # noqa: F401 (frontend_state is a fixture)
    comparison_state,
    frontend_state,
    reference_aggregation,
    reference_state,
)
from test_lobes import LAP, SPK

from lap_speechbrain.export.folder import export_reference
from lap_speechbrain.export.reference import BACKEND_ARGUMENTS, ReferenceCheckpointError, from_reference
from lap_speechbrain.inference import LAPSpeakerRecognition
from lap_speechbrain.lobes import build_backend
from lap_speechbrain.nnet import SubCenterClassifier

pytestmark = pytest.mark.usefixtures("single_thread")

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
