"""Tests of SSLSpeakerEncoder on tiny random WavLMs (conftest fixtures, L 3, D 32).

Padding: Large-type WavLM (LayerNorm CNN, stable layer norm) is padding-neutral
given the attention mask, so the encoder runs padded batches batched. Base-type
WavLM normalises its first CNN layer with GroupNorm over the whole padded
signal, so its valid frames change with padding; the encoder runs such padded
batches one utterance at a time. Both must give the embedding of the utterance
alone.
"""

import pytest
import torch
from test_lobes import single_thread  # noqa: F401 (autouse fixture)
from torch import nn

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


def test_sizes_come_from_the_model_config(tiny_wavlm_large, make_encoder):
    encoder = make_encoder(tiny_wavlm_large)
    assert (encoder.num_layers, encoder.input_size) == (3, 32)
    assert encoder.backend.lap.squeeze_weight.shape == (4, 3, 1)
    assert encoder.ssl_model.model.config.layerdrop == 0.0
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


def test_base_type_wavlm_itself_is_not_padding_neutral(tiny_wavlm_base, make_encoder):
    """Why the encoder runs padded Base-type batches per utterance: the HF model
    run batched changes the valid frames of the shorter utterances."""
    encoder = make_encoder(tiny_wavlm_base).eval()
    waves = utterances()
    batch, lengths = padded_batch(waves, "zeros")
    with torch.no_grad():
        batched = encoder.ssl_model(batch, lengths)  # the wrapper, batched
        alone = encoder.ssl_model(waves[2][None])
    frames = alone.shape[2]
    assert (batched[:, 2:3, :frames] - alone).abs().max() > 1e-3


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
    # Parameters the hidden states never depend on are left out (DDP-safe).
    model = encoder.ssl_model.model
    assert not model.encoder.layer_norm.weight.requires_grad
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
