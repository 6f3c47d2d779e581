"""Tests of the staged training recipe (recipes/train_speaker_embeddings.py) on a tiny generated VoxCeleb tree.

The recipe runs in subprocesses exactly as users run it (the same yaml with
command-line overrides): all stages in order, resume after SIGKILL inside
stage 2, a two-process gloo DDP run, and a second run on a folder in use.
Its settings checks run in-process on the loaded yamls, and the yamls it owns
are checked to build models of any size with every top-level key used.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import speaker_voice, write_audio
from hyperpyyaml import load_hyperpyyaml
from safetensors.torch import load_file
from speechbrain.dataio.encoder import CategoricalEncoder

from lap_speechbrain.fileio import FolderLock
from lap_speechbrain.inference import LAPSpeakerRecognition

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "train_speaker_embeddings.py"
HPARAMS = REPO / "hparams" / "lap_wavlm.yaml"
NUM_SPEAKERS = 6
UTTERANCES = 4
LOG_LINE = re.compile(r"stage: (\w+), epoch: (\d+),")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_wavlm_large):
    """Tiny VoxCeleb-layout tree (6 speakers x 4 utterances of 1-1.5 s), noise and RIR folders."""
    root = tmp_path_factory.mktemp("train_corpus")
    rng = np.random.default_rng(0)
    for speaker in range(NUM_SPEAKERS):
        for utterance in range(UTTERANCES):
            path = root / "vox1" / f"id{10001 + speaker}" / f"video{utterance % 2}" / f"{utterance:05d}.wav"
            write_audio(path, speaker_voice(speaker, 1.0 + 0.25 * (utterance % 3), rng))
    for kind in ("noise", "rir"):
        for index in range(2):
            if kind == "rir":
                decay = np.exp(-np.arange(800) / 150.0)
                signal_ = np.concatenate([[1.0], 0.3 * rng.standard_normal(799) * decay[1:]])
            else:
                signal_ = 0.1 * rng.standard_normal(16000)
            write_audio(root / kind / f"{index}.wav", signal_.astype(np.float32))
    return {"root": root, "wavlm": tiny_wavlm_large}


def recipe_args(corpus, output: Path, **stages) -> list:
    """Command-line arguments of a tiny run of hparams/lap_wavlm.yaml."""
    tiny = "batch_size: 4, crop_seconds: 0.5"
    sections = {
        "frozen": f"{{epochs: 1, {tiny}}}",
        "joint": f"{{epochs: 1, {tiny}}}",
        "lmft": "{epochs: 1, batch_size: 2, grad_accumulation_factor: 2, crop_seconds: 0.75}",
    }
    sections.update(stages)
    root = corpus["root"]
    return [
        str(HPARAMS),
        f"--data_folder={root}",
        f"--vox1_folder={root / 'vox1'}",
        "--vox2_folder=null",
        "--train_sets=[vox1]",
        "--test_trial_lists=[]",
        "--num_valid_speakers=2",
        "--num_valid_trials=12",
        f"--ssl_hub={corpus['wavlm']}",
        f"--output_folder={output}",
        "--lap_channels=16",
        "--num_heads=4",
        "--embedding_dim=8",
        "--num_workers=0",
        "--valid_batch_size=4",
        f"--noise_folders={{noise: {root / 'noise'}, rir: {root / 'rir'}}}",
        "--device=cpu",
        "--noprogressbar",
        *[f"--{name}={value}" for name, value in sections.items()],
    ]


def environment() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    return env


def run_recipe(args, timeout=300, launcher=(sys.executable,)):
    result = subprocess.run(
        [*launcher, str(RECIPE), *args], env=environment(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def logged_epochs(output: Path) -> list:
    """(stage, epoch) of every line of train_log.txt, in order."""
    lines = (output / "train_log.txt").read_text().splitlines()
    return [(m.group(1), int(m.group(2))) for m in map(LOG_LINE.search, lines) if m]


def checkpoints(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.name.startswith("CKPT+"))


def ssl_state(checkpoint: Path) -> dict:
    state = torch.load(checkpoint / "embedding_model.ckpt", weights_only=True)
    return {k[len("ssl_model.model."):]: v for k, v in state.items() if k.startswith("ssl_model.model.")}


def test_all_stages_end_to_end(corpus, tmp_path):
    output = tmp_path / "run"
    result = run_recipe([arg for arg in recipe_args(corpus, output) if arg != "--noprogressbar"])

    assert logged_epochs(output) == [("frozen", 1), ("joint", 1), ("lmft", 1)]
    for stage in ("frozen", "joint", "lmft"):  # the progress bars name the stage, pass and epoch
        assert f"{stage}: train epoch 1" in result.stderr and f"{stage}: valid epoch 1" in result.stderr
    save = output / "save"
    records = {name: json.loads((save / name / "stage_done.json").read_text()) for name in ("frozen", "joint", "lmft")}
    # Speed perturbation (stage 1 only) triples the classes of 4 training speakers, and the
    # later stages keep all of them by default (the reference's classifier).
    assert [records[name]["classes"] for name in ("frozen", "joint", "lmft")] == [12, 12, 12]
    assert records["lmft"]["grad_accumulation_factor"] == 2
    assert (records["frozen"]["peak_lr"], records["lmft"]["warmup_fraction"]) == (1.0e-3, 0.0)

    # Stage 1 leaves WavLM bit-identical; stage 2 changes it (the CNN included).
    pretrained = load_file(Path(corpus["wavlm"]) / "model.safetensors")
    frozen = ssl_state(Path(records["frozen"]["checkpoint"]))
    joint = ssl_state(Path(records["joint"]["checkpoint"]))
    assert set(frozen) == set(pretrained)
    assert all(torch.equal(frozen[key], pretrained[key]) for key in pretrained)
    changed = [key for key in pretrained if not torch.equal(joint[key], pretrained[key])]
    assert any(key.startswith("feature_extractor.") for key in changed)
    assert any(key.startswith("encoder.layers.") for key in changed)

    # One model format: <output_folder>/model is an exported folder that SpeechBrain loads.
    model = output / "model"
    assert not (save / "model").exists()
    assert {"README.md", "classifier.ckpt", "embedding_model.ckpt", "hyperparams.yaml",
            "label_encoder.ckpt"} <= {p.name for p in model.iterdir()}
    exported = torch.load(model / "embedding_model.ckpt", weights_only=True)
    selected = torch.load(Path(records["lmft"]["checkpoint"]) / "embedding_model.ckpt", weights_only=True)
    assert exported.keys() == selected.keys() and all(torch.equal(exported[k], selected[k]) for k in exported)
    assert torch.load(model / "classifier.ckpt", weights_only=True)["weight"].shape == (12 * 3, 8)
    speakers = CategoricalEncoder()
    speakers.load(save / "label_encoder.txt")
    names = [speakers.ind2lab[i] for i in range(len(speakers))]
    labels = CategoricalEncoder()
    labels.load(model / "label_encoder.ckpt")
    assert [labels.ind2lab[i] for i in range(len(labels))] == (
        names + [f"{n}@speed1" for n in names] + [f"{n}@speed2" for n in names])
    loaded = LAPSpeakerRecognition.from_hparams(source=str(model), savedir=str(tmp_path / "loaded"))
    assert loaded.threshold == pytest.approx(records["lmft"]["valid_threshold"])
    assert loaded.mods.embedding_model.backend_config == {
        "aggregation": "lap", "network": "astp", "lap_channels": 16, "num_heads": 4, "embedding_dim": 8, "lap_dropout": 0.1,
        "layer_pooling": "max", "frame_dropout": 0.1}
    assert loaded.mods.embedding_model.input_size == 32
    card = (model / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["datasets"] == ["voxceleb"]  # model_card_datasets
    assert '"stage": "lmft"' in card  # the training summary


@pytest.mark.parametrize("aggregation, network", [("superb", "ecapa-tdnn"), ("lap", "mhfa")])
def test_comparison_systems_train_all_stages_export_and_load(corpus, tmp_path, aggregation, network):
    """Two of the paper's other systems through the same recipe and yaml, chosen by its two keys
    (the SUPERB baseline with the largest network, and two LAPs inside MHFA); all eight train,
    export and load in tests/test_export.py."""
    output = tmp_path / "run"
    args = [arg for arg in recipe_args(corpus, output) if not arg.startswith("--embedding_dim=")]
    run_recipe(args + [f"--aggregation={aggregation}", f"--network={network}"])  # the yaml's embedding_dim: null
    assert logged_epochs(output) == [("frozen", 1), ("joint", 1), ("lmft", 1)]
    loaded = LAPSpeakerRecognition.from_hparams(source=str(output / "model"), savedir=str(tmp_path / "loaded"))
    config = loaded.mods.embedding_model.backend_config
    assert (config["aggregation"], config["network"]) == (aggregation, network)
    embedding_dim = {"ecapa-tdnn": 192, "mhfa": 256}[network]  # the reference's, as the yaml leaves it null
    assert config["embedding_dim"] == embedding_dim
    wav = torch.from_numpy(speaker_voice(0, 1.0, np.random.default_rng(1)))
    assert loaded.encode_batch(wav[None]).shape == (1, 1, embedding_dim)


def test_resume_after_sigkill_in_stage_2(corpus, tmp_path):
    output = tmp_path / "run"
    # Stage 2: 2 epochs of 8 optimiser steps, an intra-epoch checkpoint after every step;
    # the kill comes at the first one, well before the end of the epoch.
    args = recipe_args(corpus, output, joint="{epochs: 2, batch_size: 2, crop_seconds: 0.5}")
    args += ["--run_stages=[frozen,joint]", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1",
             "--keep_speed_classes=False"]
    process = subprocess.Popen(
        [sys.executable, str(RECIPE), *args], env=environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    joint = output / "save" / "joint"
    deadline = time.time() + 240
    try:
        while not (joint.exists() and checkpoints(joint)):
            assert process.poll() is None, "the recipe ended before writing a stage-2 checkpoint"
            assert time.time() < deadline, "no stage-2 checkpoint within 240 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (joint / "stage_done.json").exists()
    assert logged_epochs(output) == [("frozen", 1)]
    # What kills inside atomic writes leave (hidden staging and old copies), and a user's file.
    leftovers = [output / ".model.k2j3h4l5", output / ".model.old.x0x0x0x0", joint / ".stage_done.json.abcd_123"]
    for path in leftovers:
        (path / "model").mkdir(parents=True)
    (output / ".model.keep").mkdir()

    run_recipe(args)
    assert not any(path.exists() for path in leftovers) and (output / ".model.keep").is_dir()
    # No stage or epoch ran twice, and the killed epoch was finished, not restarted.
    assert logged_epochs(output) == [("frozen", 1), ("joint", 1), ("joint", 2)]
    final = json.loads((joint / "stage_done.json").read_text())
    latest = max(checkpoints(joint), key=lambda p: p.name)
    steps = 2 * (16 // 2)  # epochs x optimiser steps per epoch (16 training utterances)
    assert torch.load(latest / "margin_schedule.ckpt", weights_only=True)["current_step"] == steps
    assert torch.load(latest / "lr_schedule.ckpt", weights_only=True)["last_epoch"] == steps
    assert (latest / "epoch_counter.ckpt").read_text() == "2"
    assert final["stage"] == "joint" and Path(final["checkpoint"]).exists()
    assert not [p for p in joint.iterdir() if p.name.startswith(".")], "staging leftovers"
    # keep_speed_classes=False: stage 2 rebuilds the classifier with the 4 speakers.
    frozen = json.loads((output / "save" / "frozen" / "stage_done.json").read_text())
    assert (frozen["classes"], final["classes"]) == (12, 4)
    assert torch.load(output / "model" / "classifier.ckpt", weights_only=True)["weight"].shape == (4 * 3, 8)


def test_two_process_gloo_ddp_bf16(corpus, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is not installed next to the Python interpreter"
    output = tmp_path / "ddp"
    args = recipe_args(corpus, output, frozen="{epochs: 1, batch_size: 2, crop_seconds: 0.5}",
                       joint="{epochs: 1, batch_size: 2, crop_seconds: 0.5}")
    args += ["--run_stages=[frozen,joint]", "--distributed_backend=gloo", "--precision=bf16"]
    # The evaluation after training is shared by both processes (issue 13.2).
    files = [f"id{10001 + speaker}/video{u % 2}/{u:05d}.wav" for speaker in range(3) for u in range(2)]
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n" for i, a in enumerate(files) for b in files[i + 1:]
    ))
    evaluation = output / "evaluation"
    # The yaml's `evaluation: null` cannot be overridden by a mapping: a copy sets it.
    hparams = tmp_path / "lap_wavlm.yaml"
    hparams.write_text(HPARAMS.read_text().replace("\nevaluation: null\n", (
        f"\nevaluation:\n    trial_lists: {{t: {trials}}}\n    data_folder: {corpus['root'] / 'vox1'}\n"
        f"    output_folder: {evaluation}\n    pretrained_savedir: {evaluation / 'model'}\n"
        "    sample_rate: 16000\n    p_targets: [0.01, 0.05]\n    num_workers: 0\n"
    )))
    args[0] = str(hparams)
    run_recipe(args, launcher=(torchrun, "--standalone", "--nproc_per_node=2"))
    assert list(json.loads((evaluation / "results.json").read_text())["t"]) == ["cosine"]
    (cache,) = (evaluation / "embeddings").iterdir()
    for rank in (0, 1):  # 6 utterances, 3 embedded by each process
        shards = sorted(cache.glob(f"shard-00{rank}-*.npz"))
        assert sum(len(np.load(shard)["identities"]) for shard in shards) == 3

    # Logged once (main process), one checkpoint per stage, complete and loadable.
    assert logged_epochs(output) == [("frozen", 1), ("joint", 1)]
    for stage in ("frozen", "joint"):
        folder = output / "save" / stage
        (checkpoint,) = checkpoints(folder)
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]
        record = json.loads((folder / "stage_done.json").read_text())
        assert Path(record["checkpoint"]) == checkpoint
        assert record["processes"] == 2 and record["precision"] == "bf16"
        state = torch.load(checkpoint / "embedding_model.ckpt", weights_only=True)
        assert not any(key.startswith("module.") for key in state)
        assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())
        # 16 utterances / (2 processes x batch 2) = 4 optimiser steps on each process.
        assert torch.load(checkpoint / "lr_schedule.ckpt", weights_only=True)["last_epoch"] == 4


def test_a_second_run_on_a_folder_in_use_stops_at_once(corpus, tmp_path):
    output = tmp_path / "busy"
    with FolderLock(output):  # another run holds the folder
        result = subprocess.run(
            [sys.executable, str(RECIPE), *recipe_args(corpus, output)],
            env=environment(), capture_output=True, text=True, timeout=120,
        )
    assert result.returncode != 0
    assert f"{output} is in use by another run (PID {os.getpid()}" in result.stderr
    assert sorted(p.name for p in output.iterdir()) == [".lock"]  # nothing prepared or written


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


def loaded(name: str, overrides: dict, tmp_path: Path, wavlm: str):
    """A training yaml loaded with overrides as the recipe loads it; returns (hparams, file)."""
    overrides = {"output_folder": str(tmp_path / "out"), "ssl_hub": wavlm, "lap_channels": 16,
                 "num_heads": 4, "embedding_dim": 8, **overrides}
    if name == "lap_wavlm.yaml":
        overrides.setdefault("data_folder", str(tmp_path))
    with open(REPO / "hparams" / name) as handle:
        return load_hyperpyyaml(handle, yaml.safe_dump(overrides)), str(REPO / "hparams" / name)


@pytest.mark.parametrize("overrides, message", [
    ({"frozen": {"epoch": 1}}, r"frozen\.epoch \(valid keys of frozen: \[.*'epochs'"),
    ({"joint": {"margin_schedule": {"final_margni": 0.2}}}, r"joint\.margin_schedule\.final_margni"),
    ({"synthetic_corpus": {"num_speakers": 4}}, r"synthetic_corpus\.num_speakers"),
    ({"num_worker": 2}, r"num_worker \(valid keys of the yaml: \[.*'num_workers'"),
])
def test_misspelled_settings_stop_before_the_yaml_is_loaded(recipe, overrides, message):
    with pytest.raises(ValueError, match=message):
        recipe.check_overrides(str(REPO / "hparams" / "demo.yaml"), yaml.safe_dump(overrides))


def test_overrides_of_open_mappings_and_known_keys_pass(recipe):
    overrides = {"frozen": {"epochs": 1}, "evaluation": {"trial_lists": {"extra": "x.txt"}}}
    recipe.check_overrides(str(REPO / "hparams" / "demo.yaml"), yaml.safe_dump(overrides))
    recipe.check_overrides(str(REPO / "hparams" / "lap_wavlm.yaml"), "{noise_folders: {rir: /data/rirs}}")


@pytest.mark.parametrize("name, overrides, message", [
    ("lap_wavlm.yaml", {"run_stages": ["frozen", "jiont"]}, r"unknown stages \['jiont'\]"),
    ("lap_wavlm.yaml", {"frozen": {"epochs": 0}}, r"frozen: epochs=0; expected an integer >= 1"),
    ("lap_wavlm.yaml", {"lmft": {"batch_size": -4}}, r"lmft: batch_size=-4; expected an integer >= 1"),
    ("lap_wavlm.yaml", {"joint": {"speed_perturb_prob": 1.5}}, r"speed_perturb_prob=1.5; expected a probability"),
    ("lap_wavlm.yaml", {"frozen": {"augment": "yes"}}, r"augment='yes'; expected True or False"),
    ("lap_wavlm.yaml", {"keep_speed_classes": "no"}, r"keep_speed_classes='no'"),
    ("lap_wavlm.yaml", {"data_prep": "kaldi"}, r"data_prep='kaldi'; expected one of"),
    ("lap_wavlm.yaml", {}, r"musan_folder, rir_folder and noise_folders are all unset"),
    ("demo.yaml", {"data_prep": "custom"}, r"data_prep='custom' needs the keys \[.*'musan_folder'"),
])
def test_settings_that_cannot_work_stop_before_data_preparation(recipe, corpus, tmp_path, name, overrides, message):
    hparams, path = loaded(name, overrides, tmp_path, corpus["wavlm"])
    with pytest.raises(ValueError, match=message):
        recipe.check_settings(hparams, path)


def test_valid_settings_pass_and_return_the_stages(recipe, corpus, tmp_path):
    hparams, path = loaded(
        "lap_wavlm.yaml",
        {"noise_folders": {"rir": str(tmp_path)}, "run_stages": ["joint", "lmft"], "frozen": {"epochs": 3}},
        tmp_path, corpus["wavlm"],
    )
    assert recipe.check_settings(hparams, path) == ["joint", "lmft"]
    assert hparams["frozen"]["epoch_counter"].limit == 3


def test_a_stage_section_without_a_setting_is_refused(recipe, corpus, tmp_path):
    hparams, path = loaded("lap_wavlm.yaml", {"noise_folders": {"rir": str(tmp_path)}}, tmp_path, corpus["wavlm"])
    del hparams["joint"]["epochs"]
    with pytest.raises(ValueError, match=r"section 'joint' lacks \['epochs'\]"):
        recipe.check_settings(hparams, path)


def test_an_export_folder_over_the_run_is_refused_before_training(recipe, corpus, tmp_path):
    """Issue 15.2: --export_folder=<output_folder> would replace the run's checkpoints at the end."""
    hparams, path = loaded("demo.yaml", {}, tmp_path, corpus["wavlm"])
    hparams["export_folder"] = hparams["output_folder"]
    with pytest.raises(ValueError, match=re.escape(str(Path(hparams["output_folder"]).absolute()))):
        recipe.check_settings(hparams, path)
    hparams["export_folder"] = str(Path(hparams["output_folder"]) / "exported_model")  # the demo's own choice
    recipe.check_settings(hparams, path)


# ---------------------------------------------------------------- the yamls it owns
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
