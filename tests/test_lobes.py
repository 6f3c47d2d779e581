"""Tests of LAP, the backends of build_backend (LAP + ASTP and the comparison systems) and the weighted layer sum.

This module also holds an independent implementation of LAP + ASTP written
plainly from docs/lap_spec.md sections 2 and 3 (einsum and a loop over utterances),
reading the reference implementation's checkpoint layout (section 7). The
project's modules are compared with it here, and ``test_export_reference.py`` uses it to
check that converted reference checkpoints compute the same function.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
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


pytestmark = pytest.mark.usefixtures("single_thread")


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


def reference_lap(state, hidden_states, layer_pooling="max", batch_stats=False, gate_dropout=None):
    """LAP, section 2. hidden_states (L, B, T, D) -> Y (B, H, T) and alpha (B, h, T, L).

    ``gate_dropout``, if given, maps the sigmoid gates (B, h, T, L) to the
    dropped-out ones (step 5, training only)."""
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
    if gate_dropout is not None:
        alpha = gate_dropout(alpha)
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
    return reference_astp(state, y, frames)


def reference_astp(state, y, frames):
    """The reference's ASTP network (pooling and embedding layers) in eval mode on frames
    y (B, C, T), one utterance at a time over its ``frames`` valid frames. Returns (B, E)."""
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
# Gradients, the folded input BatchNorm and memory
# ----------------------------------------------------------------------------
# LayerAttentivePooling parameter -> key in the reference layout (section 7).
LAP_PARAMETERS = {
    "input_norm.weight": "in_norm.weight",
    "input_norm.bias": "in_norm.bias",
    "input_projection.weight": "in_weight.weight",
    "input_projection.bias": "in_weight.bias",
    "squeeze_weight": "sq_weight",
    "squeeze_bias": "sq_bias",
    "excite_weight": "ex_weight",
    "excite_bias": "ex_bias",
    "output_projection.weight": "out_weight.weight",
    "output_projection.bias": "out_weight.bias",
    "output_norm.weight": "out_norm.weight",
    "output_norm.bias": "out_norm.bias",
}


def dropout_as_lap_draws(p):
    """Gate dropout drawn as LAP draws it (nn.Dropout on gates laid out (h, B*T, L)),
    for reference_lap's (B, h, T, L) gates."""
    def apply(alpha):
        batch, heads, frames, layers = alpha.shape
        flat = alpha.permute(1, 0, 2, 3).reshape(heads, batch * frames, layers)
        return F.dropout(flat, p).view(heads, batch, frames, layers).permute(1, 0, 2, 3)
    return apply


def lap_and_spec_gradients(backend, states, train, needs_input, layer_pooling, dropout=0.0):
    """Output, gates and gradients (parameters and, if ``needs_input``, the
    input) of our LAP and of the spec implementation with autograd, for the
    same random weighting of the output and the same dropout draws."""
    lap = backend.lap.train(train)
    reference = to_reference_layout(backend)  # before our pass updates the running stats
    for value in reference.values():
        value.requires_grad_(value.is_floating_point())
    weights = torch.randn(states.shape[1], states.shape[2], lap.output_size, dtype=states.dtype,
                          generator=torch.Generator().manual_seed(5))
    ours_input = states.clone().requires_grad_(needs_input)
    spec_input = states.clone().requires_grad_(needs_input)
    torch.manual_seed(11)
    output, gates = lap(ours_input, return_gates=True)
    (output * weights).sum().backward()
    torch.manual_seed(11)
    expected, alpha = reference_lap(reference, spec_input, layer_pooling, batch_stats=train,
                                    gate_dropout=dropout_as_lap_draws(dropout) if dropout else None)
    (expected.transpose(1, 2) * weights).sum().backward()
    ours = {name: p.grad for name, p in lap.named_parameters()}
    spec = {name: reference[LAP + key].grad.view(lap.get_parameter(name).shape)
            for name, key in LAP_PARAMETERS.items() if name in ours}
    if needs_input:
        ours["input"], spec["input"] = ours_input.grad, spec_input.grad
    return (output, gates, ours), (expected.transpose(1, 2), alpha, spec)


@pytest.mark.parametrize("layer_pooling", ["max", "mean", "sum"])
@pytest.mark.parametrize("num_heads", [4, 1])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("needs_input", [False, True], ids=["stage1", "stage2"])
def test_lap_gradients_match_the_spec(layer_pooling, num_heads, train, needs_input):
    """Outputs and every gradient equal autograd through the spec implementation,
    frozen (stage 1) or with the input's gradient (stage 2), with batch or running
    statistics (which the hand-written backward handles differently)."""
    backend = small_backend(layer_pooling=layer_pooling, num_heads=num_heads, lap_dropout=0.0)
    ours, spec = lap_and_spec_gradients(backend, 2.0 * hidden() + 0.5, train, needs_input, layer_pooling)
    torch.testing.assert_close(ours[0], spec[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[1], spec[1], rtol=1e-10, atol=1e-10)
    assert ours[2].keys() == spec[2].keys()
    for name in spec[2]:
        torch.testing.assert_close(ours[2][name], spec[2][name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("layer_pooling", ["max", "mean"])
def test_lap_gate_dropout_draws_and_gradients(layer_pooling):
    """Gate dropout draws what nn.Dropout on the gates draws, and the backward
    pass uses the same mask (ties between dropped layers included)."""
    backend = small_backend(layer_pooling=layer_pooling, lap_dropout=0.4)
    ours, spec = lap_and_spec_gradients(backend, hidden(), True, True, layer_pooling, dropout=0.4)
    assert bool((ours[1] == 0).any())
    torch.testing.assert_close(ours[0], spec[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[1], spec[1], rtol=1e-10, atol=1e-10)
    for name in spec[2]:
        torch.testing.assert_close(ours[2][name], spec[2][name], rtol=1e-9, atol=1e-10, msg=name)


def test_folded_batch_norm_statistics_match_batch_norm():
    """Running statistics over train/eval steps equal those of nn.BatchNorm1d on
    the rows (layers x batch x time), and the output follows the statistics of each mode."""
    lap = randomize(LayerAttentivePooling(5, 32, output_size=16, num_heads=4, dropout=0.0)).double()
    norm = nn.BatchNorm1d(32).double()
    norm.load_state_dict(lap.input_norm.state_dict())
    backend = small_backend(lap_dropout=0.0)
    backend.lap = lap
    for step, mode in enumerate((True, False, True, True, False)):
        lap.train(mode)
        norm.train(mode)
        states = 3.0 * hidden(seed=step + 7) + 1.0
        expected, _ = reference_lap(to_reference_layout(backend), states, batch_stats=mode)
        torch.testing.assert_close(lap(states), expected.transpose(1, 2))
        norm(states.reshape(-1, 32))
        torch.testing.assert_close(lap.input_norm.running_mean, norm.running_mean)
        torch.testing.assert_close(lap.input_norm.running_var, norm.running_var)
        assert int(lap.input_norm.num_batches_tracked) == int(norm.num_batches_tracked)


def test_folded_batch_norm_cumulative_momentum():
    lap = LayerAttentivePooling(5, 32, output_size=16, num_heads=4).double()
    lap.input_norm.momentum = None
    norm = nn.BatchNorm1d(32, momentum=None).double()
    for seed in range(3):
        states = hidden(seed=seed) * (seed + 1)
        lap(states)
        norm(states.reshape(-1, 32))
    torch.testing.assert_close(lap.input_norm.running_var, norm.running_var)


@pytest.mark.parametrize("train", [True, False])
def test_lap_gradcheck(train):
    lap = randomize(LayerAttentivePooling(3, 8, output_size=4, num_heads=2, dropout=0.0)).double()
    lap.train(train)
    states = torch.randn(3, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lap, (states,))


def test_bf16_statistics_need_no_fp32_copy():
    """bf16 statistics are accumulated block by block in fp32 and equal those of
    an fp32 copy (the running mean after one step from zero is 0.1 x the mean)."""
    lap = LayerAttentivePooling(5, 32, output_size=16, num_heads=4)
    states = (3.0 * hidden(dtype=torch.float32) + 1.0).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lap(states)
    variance, mean = torch.var_mean(states.float().reshape(-1, 32), dim=0)
    torch.testing.assert_close(lap.input_norm.running_mean, 0.1 * mean)
    torch.testing.assert_close(lap.input_norm.running_var, 0.9 + 0.1 * variance)


@pytest.fixture(scope="module")
def backend_memory():
    """benchmarks/backend_memory.py: the plain formulation and the peak-memory measurement."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "backend_memory.py"
    spec = importlib.util.spec_from_file_location("backend_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Small, with WavLM-Large-like proportions: 64 channels per head, H / (L D) 2 %.
MEMORY_SHAPE = dict(num_layers=13, width=256, frames=50, num_heads=4, lap_channels=64)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", [1, 2])
def test_lap_peak_memory_is_at_most_twice_its_input(backend_memory, precision, stage):
    """Peak memory of LAP + ASTP forward + backward (CPU allocator events) is at
    most 2x the hidden states in both stages and precisions; the plain autograd
    formulation measured the same way needs more (4x and up)."""
    ratios = {}
    # The plain formulation's peak hardly depends on the batch: a small one is enough.
    for formulation, batch in (("lean", 16), ("plain", 4)):
        case = backend_memory.Case(formulation, stage, precision, batch=batch,
                                   device=torch.device("cpu"), **MEMORY_SHAPE)
        ratios[formulation] = case.peak_ratio()
    assert ratios["lean"] <= 2.0, ratios
    assert ratios["plain"] > 3.5, ratios


@pytest.mark.parametrize("stage", [1, 2])
def test_lap_bf16_matches_the_plain_formulation(backend_memory, stage):
    """Under bf16 autocast the lean LAP gives the plain formulation's output
    exactly and its gradients within bf16 rounding."""
    results = []
    for formulation in ("lean", "plain"):
        case = backend_memory.Case(formulation, stage, "bf16", batch=4,
                                   device=torch.device("cpu"), **MEMORY_SHAPE)
        case.backend.lap.dropout = 0.0
        case.backend.pooling.frame_dropout = 0.0
        case.backend.zero_grad(set_to_none=True)
        case.states.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            frames = (case.backend.lap(case.states) if formulation == "lean"
                      else backend_memory.plain_lap(case.backend, case.states))
        weights = torch.randn(frames.shape, generator=torch.Generator().manual_seed(2))
        (frames.float() * weights).sum().backward()
        grads = {name: p.grad for name, p in case.backend.lap.named_parameters()}
        if stage == 2:
            grads["input"] = case.states.grad
        results.append((frames, grads))
    (lean, lean_grads), (plain, plain_grads) = results
    assert torch.equal(lean, plain)
    assert lean_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        difference = (lean_grads[name].float() - grad.float()).norm() / grad.float().norm()
        assert difference < 2e-2, (name, float(difference))


def test_lap_keeps_no_input_sized_tensor_for_backward():
    """What autograd keeps between forward and backward (saved tensors other than
    the input itself) is a small fraction of the input: no projection, no gated
    tensor, no fp32 copy of a bf16 input."""
    lap = LayerAttentivePooling(13, 256, output_size=64, num_heads=4)
    for dtype in (torch.float32, torch.bfloat16):
        states = torch.randn(13, 4, 50, 256).to(dtype).requires_grad_()
        saved = []
        parameters = {p.data_ptr() for p in lap.parameters()} | {states.data_ptr()}

        def pack(tensor):
            if tensor.data_ptr() not in parameters:
                saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                lap.train()(states)
        assert sum(saved) < 0.5 * states.numel() * states.element_size(), (dtype, sum(saved))


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


# The reference's back-end parameter counts (SSL model excluded) for WavLM Base+ (L 13, D 768)
# and WavLM Large (L 25, D 1024): issue 11 and the README table.
REFERENCE_PARAMETERS = {
    ("superb", "astp"): (1_480_141, 2_497_625),
    ("superb", "x-vector"): (6_378_913, 7_034_285),
    ("superb", "ecapa-tdnn"): (7_952_013, 8_607_385),
    ("superb", "mhfa"): (2_302_554, 2_368_114),
    ("lap", "astp"): (1_714_480, 2_312_464),
    ("lap", "x-vector"): (6_713_220, 7_311_204),
    ("lap", "ecapa-tdnn"): (8_286_320, 8_884_304),
    ("lap", "mhfa"): (4_216_352, 5_412_320),
}


def test_every_backend_has_the_reference_parameter_count_at_both_sizes():
    from lap_speechbrain.lobes import build_backend

    counts = {}
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for aggregation, network in REFERENCE_PARAMETERS:
            counts[aggregation, network] = tuple(
                sum(p.numel() for p in build_backend(aggregation, network, layers, width).parameters())
                for layers, width in ((13, 768), (25, 1024))
            )
    assert counts == REFERENCE_PARAMETERS


@pytest.mark.parametrize("aggregation, network", list(REFERENCE_PARAMETERS))
def test_every_backend_embeds_padded_batches_and_trains(aggregation, network):
    from lap_speechbrain.lobes import build_backend

    torch.manual_seed(0)
    backend = build_backend(aggregation, network, 5, 32, lap_channels=16, num_heads=4, embedding_dim=8)
    hidden_states = torch.randn(5, 3, 30, 32)
    lengths = torch.tensor([1.0, 0.7, 0.4])
    backend.train()
    embeddings = backend(hidden_states, lengths)
    assert embeddings.shape == (3, 1, 8)
    embeddings.square().sum().backward()
    assert all(p.grad is not None for p in backend.parameters() if p.requires_grad)
    backend.eval()
    with torch.no_grad():
        assert backend(hidden_states, lengths).shape == (3, 1, 8)


def test_build_backend_names_the_wrong_choice():
    from lap_speechbrain.lobes import build_backend

    with pytest.raises(ValueError, match=r"aggregation='weighted'; expected one of \('lap', 'superb'\)"):
        build_backend("weighted", "astp", 5, 32)
    with pytest.raises(ValueError, match=r"network='resnet'; expected one of \('astp', 'ecapa-tdnn'"):
        build_backend("lap", "resnet", 5, 32)


def test_lap_astp_from_build_backend_is_the_lap_speaker_backend():
    """Same class, keys and seeded weights as LAPSpeakerBackend, so earlier checkpoints load."""
    from lap_speechbrain.lobes import build_backend

    torch.manual_seed(3)
    built = build_backend("lap", "astp", **SMALL)
    torch.manual_seed(3)
    direct = LAPSpeakerBackend(**SMALL)
    assert type(built) is LAPSpeakerBackend
    assert list(built.state_dict()) == list(direct.state_dict())
    assert all(torch.equal(built.state_dict()[k], direct.state_dict()[k]) for k in direct.state_dict())
    assert next(iter(direct.state_dict())).startswith("lap.")


@pytest.mark.parametrize("network", ["astp", "mhfa"])
def test_superb_backends_ignore_padded_frames(network):
    """With the frame-wise weighted sum, an utterance embeds the same alone and in a padded batch."""
    from lap_speechbrain.lobes import build_backend

    torch.manual_seed(0)
    backend = build_backend("superb", network, 5, 32, embedding_dim=8).eval()
    with torch.no_grad():
        for parameter in backend.parameters():  # non-trivial layer weights and norms
            parameter.add_(0.1 * torch.randn_like(parameter))
        states = torch.randn(5, 2, 30, 32) * 7.0  # garbage in the padding
        utterance = torch.randn(5, 1, 20, 32)
        states[:, :1, :20] = utterance
        alone = backend(utterance)
        batched = backend(states, torch.tensor([20 / 30, 1.0]))
    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-5)


def test_xvector_trains_through_the_reference_second_layer_and_embeds_with_the_first():
    from lap_speechbrain.lobes import XvectorNetwork

    torch.manual_seed(0)
    network = XvectorNetwork(16, embedding_dim=8, hidden_channels=12, statistics_channels=20)
    frames = torch.randn(2, 25, 16)
    network.eval()
    embedding = network(frames)
    network.train()
    for module in network.modules():  # BatchNorms keep their running statistics for the comparison
        if isinstance(module, nn.BatchNorm1d):
            module.eval()
    trained = network(frames)
    expected = network.training_projection(torch.relu(embedding))
    torch.testing.assert_close(trained, expected)
