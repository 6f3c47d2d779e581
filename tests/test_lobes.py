"""Tests of LAP, the LAP + ASTP backend and the weighted layer sum.

This module also holds an independent implementation of LAP + ASTP written
plainly from docs/lap_spec.md sections 2 and 3 (einsum and a loop over utterances),
reading the reference implementation's checkpoint layout (section 7). The
project's modules are compared with it here, and ``test_convert.py`` uses it to
check that converted reference checkpoints compute the same function.
"""

import pytest
import torch
from torch import nn

from lap_speechbrain.lobes import (
    LAPSpeakerBackend,
    LayerAttentivePooling,
    WeightedLayerSum,
)

BN_EPS = 1e-5  # torch's BatchNorm default, as in the reference
LAP = "backend.layer_aggregation."
SPK = "backend.speaker_network."

# A small backend: L 5 (squeeze width 2), D 32, 4 heads, H 16, 8-d embedding.
SMALL = dict(num_layers=5, input_size=32, lap_channels=16, num_heads=4, embedding_dim=8)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread for these tiny tensors: on a shared, oversubscribed
    machine two OpenMP threads make small ops up to 50x slower. The other
    core-test modules import this fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------
# The independent implementation (docs/lap_spec.md sections 2-3, reference layout)
# ----------------------------------------------------------------------------
def batch_norm(x, state, prefix, dim, batch_stats=False):
    """BatchNorm over channel axis ``dim``: running statistics, or (training)
    the biased statistics over every other axis."""
    shape = [1] * x.dim()
    shape[dim] = -1
    if batch_stats:
        axes = [axis for axis in range(x.dim()) if axis != dim]
        mean = x.mean(dim=axes, keepdim=True)
        var = x.var(dim=axes, unbiased=False, keepdim=True)
    else:
        mean = state[prefix + ".running_mean"].view(shape)
        var = state[prefix + ".running_var"].view(shape)
    normalised = (x - mean) / torch.sqrt(var + BN_EPS)
    return normalised * state[prefix + ".weight"].view(shape) + state[prefix + ".bias"].view(shape)


def reference_lap(state, hidden_states, layer_pooling="max", batch_stats=False):
    """LAP, section 2. hidden_states (L, B, T, D) -> Y (B, H, T) and alpha (B, h, T, L)."""
    x = hidden_states.permute(1, 3, 2, 0)  # X in R^{B x D x T x L}
    x = batch_norm(x, state, LAP + "in_norm", dim=1, batch_stats=batch_stats)
    heads = state[LAP + "sq_weight"].shape[0]
    if heads > 1:
        w_in = state[LAP + "in_weight.weight"][:, :, 0, 0]
        u = torch.einsum("oi,bitl->botl", w_in, x) + state[LAP + "in_weight.bias"].view(1, -1, 1, 1)
    else:
        u = x
    batch, width, frames, layers = u.shape
    u = u.reshape(batch, heads, width // heads, frames, layers)  # head k owns channels k*d..k*d+d-1
    average, maximum = u.mean(dim=2), u.amax(dim=2)  # (B, h, T, L)

    def excite(z):
        hidden = torch.einsum("bktl,klr->bktr", z, state[LAP + "sq_weight"])
        hidden = torch.relu(hidden + state[LAP + "sq_bias"][:, 0][None, :, None, :])
        out = torch.einsum("bktr,krl->bktl", hidden, state[LAP + "ex_weight"])
        return out + state[LAP + "ex_bias"][:, 0][None, :, None, :]

    alpha = torch.sigmoid(excite(average) + excite(maximum))  # (B, h, T, L)
    gated = alpha.unsqueeze(2) * u  # (B, h, d, T, L)
    if layer_pooling == "max":
        z = gated.amax(dim=-1)
    elif layer_pooling == "mean":
        z = gated.mean(dim=-1)
    else:
        z = gated.sum(dim=-1)
    z = z.reshape(batch, width, frames)
    y = torch.einsum("od,bdt->bot", state[LAP + "out_weight.weight"][:, :, 0], z)
    y = y + state[LAP + "out_weight.bias"].view(1, -1, 1)
    return batch_norm(y, state, LAP + "out_norm", dim=1, batch_stats=batch_stats), alpha


def reference_backend(state, hidden_states, frames, layer_pooling="max"):
    """LAP + ASTP + embedding in eval mode, section 3, one utterance at a time.

    ``frames`` lists each utterance's number of valid frames; only those are used.
    Returns (B, E).
    """
    y, _ = reference_lap(state, hidden_states, layer_pooling)
    pool = SPK + "t_pool."
    embeddings = []
    for index, count in enumerate(frames):
        yb = y[index, :, :count]  # (C, n)
        mu = yb.mean(dim=1, keepdim=True)
        sigma = yb.std(dim=1, unbiased=True, keepdim=True)
        context = torch.cat([yb, mu.expand_as(yb), sigma.expand_as(yb)])  # (3C, n)
        hidden = state[pool + "attention.0.weight"][:, :, 0] @ context
        hidden = torch.relu(hidden + state[pool + "attention.0.bias"][:, None])
        hidden = batch_norm(hidden, state, pool + "attention.2", dim=0)
        logits = state[pool + "attention.3.weight"][:, :, 0] @ hidden  # no tanh
        logits = logits + state[pool + "attention.3.bias"][:, None]
        attention = torch.softmax(logits, dim=1)  # over time, per channel
        mean = (attention * yb).sum(dim=1)
        std = torch.sqrt(((attention * yb * yb).sum(dim=1) - mean**2).clamp(min=1e-4))
        pooled = batch_norm(torch.cat([mean, std]), state, pool + "norm", dim=0)
        embedding = state[SPK + "emb_weight.weight"] @ pooled + state[SPK + "emb_weight.bias"]
        embeddings.append(batch_norm(embedding, state, SPK + "emb_norm", dim=0))
    return torch.stack(embeddings)


def to_reference_layout(backend: LAPSpeakerBackend) -> dict:
    """Our backend's state dict in the reference's names and shapes (section 7)."""
    ours = backend.state_dict()
    state = {}

    def copy_bn(source, target):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            state[f"{target}.{name}"] = ours[f"{source}.{name}"].clone()

    copy_bn("lap.input_norm", LAP + "in_norm")
    if backend.lap.input_projection is not None:
        state[LAP + "in_weight.weight"] = ours["lap.input_projection.weight"][:, :, None, None].clone()
        state[LAP + "in_weight.bias"] = ours["lap.input_projection.bias"].clone()
    for ref, our in (("sq_weight", "squeeze_weight"), ("sq_bias", "squeeze_bias"),
                     ("ex_weight", "excite_weight"), ("ex_bias", "excite_bias")):
        state[LAP + ref] = ours["lap." + our].clone()
    state[LAP + "out_weight.weight"] = ours["lap.output_projection.weight"][:, :, None].clone()
    state[LAP + "out_weight.bias"] = ours["lap.output_projection.bias"].clone()
    copy_bn("lap.output_norm", LAP + "out_norm")
    state[SPK + "t_pool.attention.0.weight"] = ours["pooling.tdnn.conv.conv.weight"].clone()
    state[SPK + "t_pool.attention.0.bias"] = ours["pooling.tdnn.conv.conv.bias"].clone()
    copy_bn("pooling.tdnn.norm.norm", SPK + "t_pool.attention.2")
    state[SPK + "t_pool.attention.3.weight"] = ours["pooling.conv.conv.weight"].clone()
    state[SPK + "t_pool.attention.3.bias"] = ours["pooling.conv.conv.bias"].clone()
    copy_bn("pooling_norm", SPK + "t_pool.norm")
    state[SPK + "emb_weight.weight"] = ours["embedding.weight"].clone()
    state[SPK + "emb_weight.bias"] = ours["embedding.bias"].clone()
    copy_bn("embedding_norm", SPK + "emb_norm")
    return state


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BatchNorm statistics, so that no term is trivial
    (the default init has zero biases and identity BatchNorms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif name.endswith("norm.weight") or name.endswith("norm.norm.weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                tensor.copy_(noise / fan_in**0.5)
            else:
                tensor.copy_(0.2 * noise)
    return module


def small_backend(dtype=torch.float64, **overrides) -> LAPSpeakerBackend:
    return randomize(LAPSpeakerBackend(**{**SMALL, **overrides})).to(dtype).eval()


def hidden(layers=5, batch=3, frames=20, width=32, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(layers, batch, frames, width, generator=generator, dtype=dtype)


# ----------------------------------------------------------------------------
# Shapes and sizes
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("layers,width,expected", [(13, 768, 1_714_480), (25, 1024, 2_312_464)])
def test_parameter_counts(layers, width, expected):
    backend = LAPSpeakerBackend(num_layers=layers, input_size=width)
    assert sum(p.numel() for p in backend.parameters()) == expected


def test_shapes():
    lap = LayerAttentivePooling(num_layers=5, input_size=32, output_size=16, num_heads=4)
    output, gates = lap(hidden(dtype=torch.float32), return_gates=True)
    assert output.shape == (3, 20, 16)
    assert gates.shape == (3, 4, 20, 5)
    assert lap.squeeze_weight.shape == (4, 5, 2)  # r = floor(L / 2)
    backend = LAPSpeakerBackend(**SMALL)
    assert backend(hidden(dtype=torch.float32), torch.tensor([1.0, 0.5, 0.3])).shape == (3, 1, 8)


def test_wrong_sizes_are_rejected():
    lap = LayerAttentivePooling(num_layers=5, input_size=32, output_size=16, num_heads=4)
    with pytest.raises(ValueError, match="L=4"):
        lap(hidden(layers=4, dtype=torch.float32))
    with pytest.raises(ValueError, match="divisible"):
        LayerAttentivePooling(num_layers=5, input_size=30, num_heads=4)
    with pytest.raises(ValueError, match="layer_pooling"):
        LayerAttentivePooling(num_layers=5, input_size=32, layer_pooling="median")


def test_weighted_layer_sum_is_a_softmax_weighted_sum():
    layer_sum = WeightedLayerSum(num_layers=5).double()
    with torch.no_grad():
        layer_sum.layer_weights.copy_(torch.arange(5.0))
    states = hidden()
    weights = torch.exp(torch.arange(5.0, dtype=torch.float64))
    weights = weights / weights.sum()
    expected = sum(weights[l] * states[l] for l in range(5))
    torch.testing.assert_close(layer_sum(states), expected)


# ----------------------------------------------------------------------------
# LAP against the spec
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer_pooling", ["max", "mean", "sum"])
def test_lap_matches_the_spec_in_eval_mode(layer_pooling):
    backend = small_backend(layer_pooling=layer_pooling)
    states = hidden()
    output, gates = backend.lap(states, return_gates=True)
    expected, alpha = reference_lap(to_reference_layout(backend), states, layer_pooling)
    torch.testing.assert_close(output, expected.transpose(1, 2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gates, alpha, rtol=1e-10, atol=1e-10)


def test_layer_poolings_differ_as_defined():
    """max, mean and sum give different outputs on the same weights, and sum is
    L times mean before the (affine) output projection and BatchNorm."""
    outputs = {}
    for pooling in ("max", "mean", "sum"):
        backend = small_backend(layer_pooling=pooling)
        outputs[pooling] = backend.lap(hidden())
    assert not torch.allclose(outputs["max"], outputs["mean"], atol=1e-3)
    lap = backend.lap  # the "sum" one: undo its output BatchNorm and bias
    norm = lap.output_norm

    def pre_projection_pooled(output):
        linear = (output - norm.bias) / norm.weight * torch.sqrt(norm.running_var + norm.eps)
        linear = linear + norm.running_mean - lap.output_projection.bias
        return linear

    torch.testing.assert_close(
        pre_projection_pooled(outputs["sum"]), 5 * pre_projection_pooled(outputs["mean"])
    )


def test_single_head_has_no_input_projection():
    backend = small_backend(num_heads=1)
    assert backend.lap.input_projection is None
    states = hidden()
    expected, _ = reference_lap(to_reference_layout(backend), states)
    torch.testing.assert_close(backend.lap(states), expected.transpose(1, 2))


def test_lap_train_mode_statistics_pool_batch_time_and_layers():
    backend = small_backend(lap_dropout=0.0).train()
    states = hidden()
    reference_state = to_reference_layout(backend)
    expected, _ = reference_lap(reference_state, states, batch_stats=True)
    torch.testing.assert_close(backend.lap(states), expected.transpose(1, 2))


def test_gates_are_in_unit_interval_and_change_over_frames():
    backend = small_backend()
    gates = backend.layer_gates(hidden())
    assert gates.shape == (3, 4, 20, 5)
    assert bool((gates > 0).all() and (gates < 1).all())
    # Every (utterance, head, layer) gate varies along time.
    assert bool((gates.std(dim=2) > 1e-3).all())
    # No softmax over layers: gates of one frame do not sum to one.
    assert not torch.allclose(gates.sum(dim=-1), torch.ones_like(gates[..., 0]))


def test_gate_dropout_only_in_training():
    lap = LayerAttentivePooling(num_layers=5, input_size=32, output_size=16, num_heads=4, dropout=0.5)
    states = hidden(dtype=torch.float32)
    lap.train()
    _, gates = lap(states, return_gates=True)
    assert bool((gates == 0).any())
    lap.eval()
    _, gates = lap(states, return_gates=True)
    assert bool((gates > 0).all())


# ----------------------------------------------------------------------------
# The folded input BatchNorm
# ----------------------------------------------------------------------------
def unfused_projection(norm: nn.BatchNorm1d, linear: nn.Linear, states: torch.Tensor):
    """Plain nn.BatchNorm1d over D (rows = layers x batch x time), then nn.Linear."""
    flat = states.reshape(-1, states.shape[-1])
    return linear(norm(flat)).view(states.shape)


def test_folded_batch_norm_matches_batch_norm_then_linear():
    torch.manual_seed(0)
    lap = randomize(LayerAttentivePooling(5, 32, output_size=16, num_heads=4)).double()
    norm, linear = nn.BatchNorm1d(32).double(), nn.Linear(32, 32).double()
    norm.load_state_dict(lap.input_norm.state_dict())
    linear.load_state_dict(lap.input_projection.state_dict())
    for mode in (True, False, True, True, False):  # train/eval, several steps
        lap.train(mode)
        norm.train(mode)
        states = (3.0 * hidden(seed=int(mode) + 7) + 1.0).requires_grad_()
        states_plain = states.detach().clone().requires_grad_()
        fused = lap._project(states)
        plain = unfused_projection(norm, linear, states_plain)
        torch.testing.assert_close(fused, plain)
        weights = torch.randn_like(plain)
        fused_grads = torch.autograd.grad(
            (fused * weights).sum(),
            [states, lap.input_norm.weight, lap.input_norm.bias,
             lap.input_projection.weight, lap.input_projection.bias],
        )
        plain_grads = torch.autograd.grad(
            (plain * weights).sum(),
            [states_plain, norm.weight, norm.bias, linear.weight, linear.bias],
        )
        for fused_grad, plain_grad in zip(fused_grads, plain_grads):
            torch.testing.assert_close(fused_grad, plain_grad)
        torch.testing.assert_close(lap.input_norm.running_mean, norm.running_mean)
        torch.testing.assert_close(lap.input_norm.running_var, norm.running_var)
        assert int(lap.input_norm.num_batches_tracked) == int(norm.num_batches_tracked)


def test_folded_batch_norm_cumulative_momentum():
    lap = LayerAttentivePooling(5, 32, output_size=16, num_heads=4).double()
    lap.input_norm.momentum = None
    norm = nn.BatchNorm1d(32, momentum=None).double()
    for seed in range(3):
        states = hidden(seed=seed) * (seed + 1)
        lap._project(states)
        norm(states.reshape(-1, 32))
    torch.testing.assert_close(lap.input_norm.running_var, norm.running_var)


def test_folded_projection_gradcheck():
    lap = randomize(LayerAttentivePooling(2, 8, output_size=4, num_heads=2)).double().train()
    states = torch.randn(2, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lap._project, (states,))


# ----------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer_pooling", ["max", "mean", "sum"])
def test_backend_matches_the_spec_in_eval_mode(layer_pooling):
    backend = small_backend(layer_pooling=layer_pooling)
    states = hidden(frames=20)
    frames = [20, 13, 6]
    lengths = torch.tensor(frames, dtype=torch.float64) / 20
    expected = reference_backend(to_reference_layout(backend), states, frames, layer_pooling)
    torch.testing.assert_close(backend(states, lengths).squeeze(1), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("padding", ["zeros", "garbage"])
def test_backend_is_padding_invariant(padding):
    backend = small_backend(dtype=torch.float32)
    frames = [37, 22, 9]
    generator = torch.Generator().manual_seed(3)
    utterances = [torch.randn(5, 1, count, 32, generator=generator) for count in frames]
    alone = torch.cat([backend(utterance) for utterance in utterances]).squeeze(1)
    if padding == "zeros":
        batch = torch.zeros(5, 3, 37, 32)
    else:
        batch = 100 * torch.randn(5, 3, 37, 32, generator=generator)
    for index, utterance in enumerate(utterances):
        batch[:, index, : frames[index]] = utterance[:, 0]
    with torch.no_grad():
        padded = backend(batch, torch.tensor(frames) / 37).squeeze(1)
    assert (padded - alone).abs().max() < 1e-4


def test_backend_trains_and_frame_dropout_is_random():
    torch.manual_seed(0)
    backend = LAPSpeakerBackend(**SMALL, lap_dropout=0.0, frame_dropout=0.5).train()
    states = hidden(dtype=torch.float32)
    lengths = torch.tensor([1.0, 0.6, 0.3])
    first, second = backend(states, lengths), backend(states, lengths)
    assert not torch.allclose(first, second)
    first.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backend.parameters())
