"""Tests of SSLSpeakerEncoder on tiny random WavLMs (conftest fixtures, L 3, D 32).

Hidden states: the reference ran on transformers 4.x; whatever version is
installed, the encoder must give the stack 4.x gives (written out below as
``states_as_transformers_4``), also under LayerDrop.

Padding: Large-type WavLM (LayerNorm CNN, stable layer norm) is padding-neutral
given the attention mask, so the encoder runs padded batches batched. Base-type
WavLM normalises its first CNN layer with GroupNorm over the whole padded
signal, so its valid frames change with padding; the encoder runs such padded
batches one utterance at a time. Both must give the embedding of the utterance
alone.
"""

import pytest
import torch
import transformers
from torch import nn

pytestmark = pytest.mark.usefixtures("single_thread")
LENGTHS = (8000, 5600, 3200)  # samples at 16 kHz


def utterances(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(count, generator=generator) for count in LENGTHS]


def padded_batch(waves, padding):
    longest = max(wave.shape[0] for wave in waves)
    if padding == "zeros":
        batch = torch.zeros(len(waves), longest)
    else:
        batch = torch.empty(len(waves), longest).uniform_(-1, 1)
    for index, wave in enumerate(waves):
        batch[index, : wave.shape[0]] = wave
    lengths = torch.tensor([wave.shape[0] / longest for wave in waves])
    return batch, lengths


def random_projection(embeddings):
    """A loss whose gradient reaches through the embedding BatchNorm (a sum
    of squares of BatchNorm outputs is constant in train mode)."""
    weights = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(0))
    return (embeddings * weights).sum()


def states_as_transformers_4(model, wavs, dropped=()):
    """The hidden states of an HF WavLMModel (no padding mask) as transformers 4.x
    returns them: the state before each transformer layer, then the final state,
    which for stable-layer-norm models is after the encoder's LayerNorm. Layers in
    ``dropped`` are skipped (LayerDrop): their state repeats. Dropout as the
    modules' modes have it."""
    features = model.feature_extractor(wavs).transpose(1, 2)
    hidden, _ = model.feature_projection(features)
    encoder = model.encoder
    stable = model.config.do_stable_layer_norm
    hidden = hidden + encoder.pos_conv_embed(hidden)
    if not stable:
        hidden = encoder.layer_norm(hidden)
    hidden = encoder.dropout(hidden)
    states, bias = [], None
    for index, layer in enumerate(encoder.layers):
        states.append(hidden)
        if index not in dropped:
            extra = {} if stable else {"index": index}
            hidden, bias = layer(hidden, position_bias=bias, **extra)[:2]
    if stable:
        hidden = encoder.layer_norm(hidden)
    states.append(hidden)
    return torch.stack(states)


def train_only_layerdrop_and_masking(encoder):
    """Train mode for the SSL model and its encoder (LayerDrop, SpecAugment), eval
    mode (no dropout) for every other module, so training runs are comparable."""
    model = encoder.ssl_model.model
    for module in encoder.ssl_model.modules():
        module.training = False
    encoder.ssl_model.training = model.training = model.encoder.training = True
    return model


def test_sizes_come_from_the_model_config(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large)
    assert (encoder.num_layers, encoder.input_size) == (3, 32)
    assert encoder.backend.lap.squeeze_weight.shape == (4, 3, 1)
    assert encoder.ssl_model.model.config.layerdrop == 0.0  # until a stage sets it
    embeddings = encoder.eval()(torch.randn(2, 4000))
    assert embeddings.shape == (2, 1, 8)


@pytest.mark.parametrize("fixture", ["tiny_wavlm_large", "tiny_wavlm_base"])
@pytest.mark.parametrize("padding", ["zeros", "garbage"])
def test_encoder_is_padding_invariant(fixture, padding, make_encoder, request):
    encoder = make_encoder(request.getfixturevalue(fixture)).eval()
    waves = utterances()
    torch.manual_seed(1)
    batch, lengths = padded_batch(waves, padding)
    with torch.no_grad():
        alone = torch.cat([encoder(wave[None]) for wave in waves])
        padded = encoder(batch, lengths)
    assert (padded - alone).abs().max() < 1e-4


@pytest.mark.parametrize("fixture", ["tiny_wavlm_base", "tiny_wavlm_large"])
def test_rows_shorter_than_the_receptive_field_raise_naming_them(fixture, make_encoder, request):
    """Issue 12: one rule for both model types (Base-type failed inside its CNN, Large-type embedded padding)."""
    encoder = make_encoder(request.getfixturevalue(fixture)).eval()
    assert encoder.min_samples == 400
    wavs = 0.1 * torch.randn(3, 4000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([4000.0, 399.0, 400.0]) / 4000
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"rows \[1\] of the batch have \[399\] samples, fewer than the "
                                               r"400 samples the model needs"):
            encoder(wavs, lengths)
        with pytest.raises(RuntimeError, match=r"rows \[0, 1\] of the batch have \[399, 399\] samples"):
            encoder(wavs[:2, :399])  # unpadded
        assert torch.isfinite(encoder(wavs[[0, 2]], lengths[[0, 2]])).all()  # 400 samples: one frame


def test_the_x_vector_network_raises_the_minimum_to_its_seven_frames(make_encoder, tiny_wavlm_large):
    """Its dilated convolutions drop 6 frames, as the reference's: 400 + 6 x 320 samples, by the same rule."""
    encoder = make_encoder(tiny_wavlm_large, network="x-vector").eval()
    assert encoder.min_samples == 2320
    wavs = 0.1 * torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"rows \[1\] of the batch have \[2319\] samples, fewer than the "
                                               r"2320 samples the model needs"):
            encoder(wavs, torch.tensor([4000.0, 2319.0]) / 4000)
        assert torch.isfinite(encoder(wavs[:, :2320])).all()
        with pytest.raises(RuntimeError, match="the x-vector network needs at least 7 frames, got 6"):
            encoder.backend.network(torch.randn(1, 6, encoder.backend.network.blocks[0].in_channels))


@pytest.mark.parametrize("padding", ["zeros", "garbage"])
def test_masked_group_norm_batches_base_type_exactly(padding, tiny_wavlm_base, make_encoder):
    """Issue 13.5: one batched call, first-layer GroupNorm over valid frames, equals one at a time."""
    encoder = make_encoder(tiny_wavlm_base).eval()
    waves = utterances()
    batch, lengths = padded_batch(waves, padding)
    calls = []
    handle = encoder.ssl_model.model.register_forward_hook(lambda module, args, output: calls.append(1))
    with torch.no_grad():
        per_utterance = encoder.hidden_states(batch, lengths)
        encoder.group_norm_batching = "masked"
        masked = encoder.hidden_states(batch, lengths)
    handle.remove()
    assert len(calls) == len(waves) + 1  # three calls one at a time, then one batched
    frames = encoder.frame_lengths(batch, lengths, masked.shape[2]) * masked.shape[2]
    for row, count in enumerate(torch.round(frames).long().tolist()):
        difference = (masked[:, row, :count] - per_utterance[:, row, :count]).abs().max()
        assert difference < 1e-5
    with torch.no_grad():
        alone = torch.cat([encoder(wave[None]) for wave in waves])
        assert (encoder(batch, lengths) - alone).abs().max() < 1e-5
    encoder.group_norm_batching = "neither"
    with pytest.raises(ValueError, match="group_norm_batching must be"):
        encoder(batch, lengths)


def test_base_type_wavlm_itself_is_not_padding_neutral(tiny_wavlm_base, make_encoder):
    """Why the encoder runs padded Base-type batches per utterance: the HF model
    run batched changes the valid frames of the shorter utterances."""
    encoder = make_encoder(tiny_wavlm_base).eval()
    waves = utterances()
    batch, lengths = padded_batch(waves, "zeros")
    with torch.no_grad():
        batched = encoder.ssl_model(batch, lengths)  # the wrapper, batched: (B, T, D)
        alone = encoder.ssl_model(waves[2][None])
    frames = alone.shape[1]
    assert (batched[2:3, :frames] - alone).abs().max() > 1e-3


def test_frame_lengths_follow_the_cnn(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large)
    batch, lengths = padded_batch(utterances(), "zeros")
    frames = encoder.ssl_model.model._get_feat_extract_output_lengths(torch.tensor(LENGTHS))
    relative = encoder.frame_lengths(batch, lengths, int(frames[0]))
    assert torch.equal(torch.round(relative * frames[0]).long(), frames)


def test_frozen_encoder_stays_in_eval_mode_and_gets_no_gradients(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large, frozen=True)
    modules = nn.ModuleDict({"embedding_model": encoder})
    modules.train()  # what Brain.fit does every epoch
    assert encoder.backend.training
    assert not any(module.training for module in encoder.ssl_model.modules())
    states = encoder.hidden_states(torch.randn(2, 4000))
    assert not states.requires_grad
    random_projection(encoder(torch.randn(2, 4000))).backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.ssl_model.parameters())
    assert all(p.grad is not None for p in encoder.backend.parameters())


def test_trainable_encoder_trains_and_switches_at_run_time(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large, frozen=False)
    modules = nn.ModuleDict({"embedding_model": encoder})
    modules.train()
    assert encoder.ssl_model.training and encoder.ssl_model.model.training

    def ssl_gradients():
        encoder.zero_grad(set_to_none=True)
        random_projection(encoder(torch.randn(2, 4000))).backward()
        return [p.grad for p in encoder.ssl_model.parameters() if p.requires_grad]

    gradients = ssl_gradients()
    assert gradients and all(g is not None and bool(g.abs().sum() > 0) for g in gradients)
    # The mask embedding is unused while SpecAugment is off: left out (DDP-safe).
    model = encoder.ssl_model.model
    assert not model.masked_spec_embed.requires_grad

    encoder.set_ssl_frozen(True)  # trainable -> frozen (e.g. for evaluation)
    modules.train()
    assert not encoder.ssl_model.training
    assert ssl_gradients() == []
    assert all(p.grad is None for p in encoder.ssl_model.parameters())

    encoder.set_ssl_frozen(False)  # frozen -> trainable (the stage switch)
    assert encoder.ssl_model.training
    gradients = ssl_gradients()
    assert gradients and all(g is not None for g in gradients)


def test_layerdrop_never_changes_the_number_of_layers(tiny_wavlm_large, make_encoder, tmp_path):
    # The fixture's config has layerdrop=0.5: the raw model drops hidden states...
    from speechbrain.integrations.huggingface.wavlm import WavLM

    raw = WavLM(tiny_wavlm_large, save_path=str(tmp_path), output_all_hiddens=True)
    raw.train()
    torch.manual_seed(0)
    assert len({raw(torch.randn(1, 2000)).shape[0] for _ in range(8)}) > 1
    # ... the encoder, trainable and in train mode, never does.
    encoder = make_encoder(tiny_wavlm_large, frozen=False).train()
    counts = {encoder.hidden_states(torch.randn(2, 2000)).shape[0] for _ in range(16)}
    assert counts == {3}


@pytest.mark.parametrize("fixture", ["tiny_wavlm_large", "tiny_wavlm_base"])
def test_hidden_states_are_those_of_transformers_4_whatever_the_version(fixture, make_encoder, request):
    """The stack ends with last_hidden_state (after the final LayerNorm for
    Large-type models) whether the installed transformers returns the 4.x
    hidden states or the 5.x ones; ``tie_last_hidden_states`` makes 5.x return
    4.x's, so both outputs are seen with either version installed."""
    encoder = make_encoder(request.getfixturevalue(fixture)).eval()
    model = encoder.ssl_model.model
    wavs = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = states_as_transformers_4(model, wavs)
        last_hidden_state = model(wavs).last_hidden_state
        torch.testing.assert_close(expected[-1], last_hidden_state)
        for tie_last in (False, True):  # 5.x's own output, then 4.x's
            model.config.tie_last_hidden_states = tie_last
            raw = model(wavs, output_hidden_states=True).hidden_states
            assert len(raw) == encoder.num_layers
            torch.testing.assert_close(encoder.hidden_states(wavs), expected)
    if model.config.do_stable_layer_norm and int(transformers.__version__.split(".")[0]) >= 5:
        # 5.x's own last state (tie_last_hidden_states False, above) is before the LayerNorm.
        model.config.tie_last_hidden_states = False
        with torch.no_grad():
            raw = model(wavs, output_hidden_states=True).hidden_states
        assert (raw[-1] - expected[-1]).abs().max() > 0.1


def test_final_layer_norm_of_large_type_trains_with_the_ssl_model(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large, frozen=False).train()
    norm = encoder.ssl_model.model.encoder.layer_norm
    assert encoder.ssl_model.model.config.do_stable_layer_norm
    random_projection(encoder(torch.randn(2, 4000))).backward()
    assert norm.weight.requires_grad and norm.weight.grad.abs().sum() > 0
    assert norm.bias.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def deeper_wavlms(tmp_path_factory):
    """Tiny Large- and Base-type WavLMs with 4 layers: LayerDrop can skip layers 1-3."""
    from conftest import TINY_WAVLM

    from lap_speechbrain.demo.random_ssl import save_random_wavlm

    folder = tmp_path_factory.mktemp("deeper_wavlm")
    tiny = {**TINY_WAVLM, "num_hidden_layers": 4}
    return {
        "large": save_random_wavlm(folder / "large", do_stable_layer_norm=True, feat_extract_norm="layer", **tiny),
        "base": save_random_wavlm(folder / "base", do_stable_layer_norm=False, feat_extract_norm="group", **tiny),
    }


@pytest.mark.parametrize("kind", ["large", "base"])
def test_layerdrop_keeps_every_state_and_a_dropped_layer_passes_its_input(kind, deeper_wavlms, make_encoder):
    encoder = make_encoder(deeper_wavlms[kind], frozen=False)
    encoder.set_ssl_regularization(layerdrop=0.5, mask_time_prob=0.0, mask_time_length=10)
    model = train_only_layerdrop_and_masking(encoder)
    final_norm = model.encoder.layer_norm if model.config.do_stable_layer_norm else nn.Identity()
    wavs = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    patterns = set()
    for _ in range(12):
        with torch.no_grad():
            states = encoder.hidden_states(wavs)
            assert states.shape[0] == encoder.num_layers == 5
            # Layer i (> 0, as in transformers) was dropped iff its state repeats
            # the previous one (after the final LayerNorm for the last layer).
            last = encoder.num_layers - 2
            dropped = {
                i for i in range(1, last + 1)
                if torch.equal(states[i + 1], final_norm(states[i]) if i == last else states[i])
            }
            model.eval()
            expected = states_as_transformers_4(model, wavs, dropped)
            train_only_layerdrop_and_masking(encoder)
        torch.testing.assert_close(states, expected)
        patterns.add(frozenset(dropped))
    assert len(patterns) > 2  # different layers were dropped in different calls
    encoder.eval()  # never in eval mode
    with torch.no_grad():
        torch.testing.assert_close(encoder.hidden_states(wavs), states_as_transformers_4(model, wavs))


def test_spec_augment_masks_only_while_the_ssl_model_trains(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large, frozen=False)
    model = encoder.ssl_model.model
    # 99 frames: the at most 2 spans of 5 masked frames (the minimum count) reach at most
    # 2 x (5 + 16) frames through the 16-frame positional convolution, never all of them.
    wavs = torch.randn(2, 32000, generator=torch.Generator().manual_seed(0))
    train_only_layerdrop_and_masking(encoder)
    with torch.no_grad():
        clean = encoder.hidden_states(wavs)
    encoder.set_ssl_regularization(layerdrop=0.0, mask_time_prob=0.05, mask_time_length=5)
    assert model.masked_spec_embed.requires_grad  # now used: it trains
    train_only_layerdrop_and_masking(encoder)
    masked = encoder.hidden_states(wavs)
    # Masked frames differ from the clean run already in hidden state 0.
    changed = (masked[0] - clean[0]).abs().amax(dim=-1) > 1e-4
    assert 0 < changed.float().mean() < 1
    random_projection(encoder.backend(masked)).backward()
    assert model.masked_spec_embed.grad.abs().sum() > 0
    with torch.no_grad():
        encoder.eval()
        torch.testing.assert_close(encoder.hidden_states(wavs), clean)
        encoder.set_ssl_frozen(True)
        encoder.train()
        torch.testing.assert_close(encoder.hidden_states(wavs), clean)
    assert not model.masked_spec_embed.requires_grad
    encoder.set_ssl_frozen(False)
    encoder.set_ssl_regularization(layerdrop=0.0, mask_time_prob=0.0, mask_time_length=5)
    assert not model.masked_spec_embed.requires_grad and not model.config.apply_spec_augment
    assert model.config.mask_time_prob > 0  # a model rebuilt from this config keeps its mask embedding


def test_spec_augment_needs_a_mask_embedding(tmp_path, make_encoder):
    from conftest import TINY_WAVLM

    from lap_speechbrain.demo.random_ssl import save_random_wavlm

    source = save_random_wavlm(tmp_path / "no_mask", mask_time_prob=0.0, **TINY_WAVLM)
    encoder = make_encoder(source, frozen=False)
    with pytest.raises(ValueError, match="mask_time_prob=0.05: the SSL model has no mask embedding"):
        encoder.set_ssl_regularization(layerdrop=0.1, mask_time_prob=0.05, mask_time_length=10)
