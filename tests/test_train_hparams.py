"""The training yamls load (model-size independent) and every top-level key is used."""

import re
from pathlib import Path

import pytest
from hyperpyyaml import load_hyperpyyaml

REPO = Path(__file__).resolve().parents[1]
YAMLS = ["lap_wavlm.yaml", "demo.yaml"]
# The recipe owns the yaml: it alone reads the keys.
CODE = [REPO / "recipes" / "train_speaker_embeddings.py"]
# Keys read by speechbrain.Brain itself (run options) or by hyperpyyaml.
FRAMEWORK_KEYS = {"precision", "ckpt_interval_minutes", "max_grad_norm", "__set_seed"}


@pytest.mark.parametrize("name", YAMLS)
def test_every_top_level_key_is_used(name):
    text = (REPO / "hparams" / name).read_text()
    keys = re.findall(r"^([A-Za-z_]\w*):", text, flags=re.MULTILINE)
    code = "\n".join(path.read_text() for path in CODE)
    unused = [
        key for key in keys
        if key not in FRAMEWORK_KEYS
        and f"<{key}>" not in text and f"<{key}[" not in text
        and f'"{key}"' not in code and f"hparams.{key}" not in code
    ]
    assert not unused, f"{name}: top-level keys used nowhere: {unused}"


def test_sizes_come_from_the_ssl_model():
    # L and D come from the SSL model's config, never from the yaml (the demo builds its own WavLM).
    text = (REPO / "hparams" / "lap_wavlm.yaml").read_text()
    assert not re.search(r"\b(1024|768)\b|num_layers|hidden_size", text)


# WavLM Base+ is lap_wavlm.yaml with --ssl_hub=microsoft/wavlm-base-plus: one yaml, any size.
@pytest.mark.parametrize("fixture", ["tiny_wavlm_large", "tiny_wavlm_base"])
def test_yaml_builds_the_model_of_any_size(fixture, request, tmp_path):
    source = request.getfixturevalue(fixture)
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"), "ssl_hub": source,
                 "lap_channels": 16, "num_heads": 4, "embedding_dim": 8}
    with open(REPO / "hparams" / "lap_wavlm.yaml") as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    encoder = hparams["embedding_model"]
    assert (encoder.num_layers, encoder.input_size) == (3, 32)
    assert hparams["run_stages"] == ["frozen", "joint", "lmft"]
    frozen, joint, lmft = (hparams[stage] for stage in hparams["stages"])
    assert frozen["margin_schedule"].loss_fn is frozen["margin_loss"] is frozen["compute_cost"].loss_fn
    assert (frozen["ssl_frozen"], joint["ssl_frozen"], lmft["ssl_frozen"]) == (True, False, False)
    assert (frozen["augment"], joint["augment"]) == (True, False)  # stage 2: the paper's reading
    assert lmft["batch_size"] * lmft["grad_accumulation_factor"] == frozen["batch_size"]
    assert hparams["classifier"](input_size=encoder.embedding_dim, out_neurons=5).weight.shape == (15, 8)
    assert hparams["keep_speed_classes"] is True  # the reference keeps stage 1's speed classes
    assert hparams["model_card_datasets"] == ["voxceleb"]


def test_gradients_are_not_clipped_as_in_the_reference(tiny_wavlm_large, tmp_path):
    """SpeechBrain clips the gradient norm at 5.0 unless the yaml says otherwise;
    the reference (clip at 9999) in effect does not clip."""
    import speechbrain as sb
    import torch

    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                 "ssl_hub": tiny_wavlm_large, "lap_channels": 16, "num_heads": 4, "embedding_dim": 8}
    with open(REPO / "hparams" / "lap_wavlm.yaml") as handle:
        hparams = load_hyperpyyaml(handle, overrides)

    def step(brain_hparams):
        layer = torch.nn.Linear(4, 1, bias=False)
        brain = sb.Brain({"layer": layer}, lambda params: torch.optim.SGD(params, lr=1.0),
                         hparams=brain_hparams, run_opts={"device": "cpu"})
        brain.init_optimizers()
        before = layer.weight.detach().clone()
        layer.weight.grad = torch.full_like(before, 50.0)  # norm 100
        brain.optimizers_step()
        return (before - layer.weight.detach()).norm().item()

    assert step(hparams) == pytest.approx(100.0)
    assert step({}) == pytest.approx(5.0)  # what the yaml's key changes
