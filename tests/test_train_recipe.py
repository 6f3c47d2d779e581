"""End-to-end tests of the staged training recipe on a tiny generated VoxCeleb tree.

The recipe runs in subprocesses exactly as users run it (the same yaml with
command-line overrides): all stages in order, resume after SIGKILL inside
stage 2, and a two-process gloo DDP run.
"""

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
import soundfile
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_speaker_embeddings.py"
HPARAMS = REPO / "hparams" / "lap_wavlm.yaml"
NUM_SPEAKERS = 6
UTTERANCES = 4
LOG_LINE = re.compile(r"stage: (\w+), epoch: (\d+),")


def speaker_signal(speaker: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone with a speaker-dependent pitch and spectral tilt, plus noise."""
    time_axis = np.arange(int(16000 * seconds)) / 16000
    pitch = 90.0 + 35.0 * speaker
    harmonics = sum(
        np.sin(2 * np.pi * pitch * k * time_axis + rng.uniform(0, 2 * np.pi)) / k ** (1 + 0.2 * speaker)
        for k in range(1, 6)
    )
    return (0.1 * harmonics + 0.01 * rng.standard_normal(len(time_axis))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_wavlm_large):
    """Tiny VoxCeleb-layout tree (6 speakers x 4 utterances of 1-1.5 s), noise and RIR folders."""
    root = tmp_path_factory.mktemp("train_corpus")
    rng = np.random.default_rng(0)
    for speaker in range(NUM_SPEAKERS):
        for utterance in range(UTTERANCES):
            path = root / "vox1" / f"id{10001 + speaker}" / f"video{utterance % 2}" / f"{utterance:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, speaker_signal(speaker, 1.0 + 0.25 * (utterance % 3), rng), 16000)
    for kind in ("noise", "rir"):
        (root / kind).mkdir()
        for index in range(2):
            if kind == "rir":
                decay = np.exp(-np.arange(800) / 150.0)
                signal_ = np.concatenate([[1.0], 0.3 * rng.standard_normal(799) * decay[1:]])
            else:
                signal_ = 0.1 * rng.standard_normal(16000)
            soundfile.write(root / kind / f"{index}.wav", signal_.astype(np.float32), 16000)
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
    run_recipe(recipe_args(corpus, output))

    assert logged_epochs(output) == [("frozen", 1), ("joint", 1), ("lmft", 1)]
    save = output / "save"
    records = {name: json.loads((save / name / "stage_done.json").read_text()) for name in ("frozen", "joint", "lmft")}
    # Speed perturbation (stage 1 only) triples the classes; 4 training speakers remain.
    assert [records[name]["classes"] for name in ("frozen", "joint", "lmft")] == [12, 4, 4]
    assert records["lmft"]["grad_accumulation_factor"] == 2

    # Stage 1 leaves WavLM bit-identical; stage 2 changes it (the CNN included).
    pretrained = load_file(Path(corpus["wavlm"]) / "model.safetensors")
    frozen = ssl_state(Path(records["frozen"]["checkpoint"]))
    joint = ssl_state(Path(records["joint"]["checkpoint"]))
    assert set(frozen) == set(pretrained)
    assert all(torch.equal(frozen[key], pretrained[key]) for key in pretrained)
    changed = [key for key in pretrained if not torch.equal(joint[key], pretrained[key])]
    assert any(key.startswith("feature_extractor.") for key in changed)
    assert any(key.startswith("encoder.layers.") for key in changed)

    model = save / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "backend_config.json", "classifier.ckpt", "embedding_model.ckpt",
        "label_encoder.txt", "ssl_config.json", "training_summary.json",
    ]
    backend = json.loads((model / "backend_config.json").read_text())
    assert backend == {"lap_channels": 16, "num_heads": 4, "embedding_dim": 8, "lap_dropout": 0.1,
                       "layer_pooling": "max", "frame_dropout": 0.1}
    assert json.loads((model / "ssl_config.json").read_text())["hidden_size"] == 32
    summary = json.loads((model / "training_summary.json").read_text())
    assert [stage["stage"] for stage in summary["stages"]] == ["frozen", "joint", "lmft"]
    exported = torch.load(model / "embedding_model.ckpt", weights_only=True)
    selected = torch.load(Path(records["lmft"]["checkpoint"]) / "embedding_model.ckpt", weights_only=True)
    assert exported.keys() == selected.keys() and all(torch.equal(exported[k], selected[k]) for k in exported)
    assert (model / "label_encoder.txt").read_text() == (save / "label_encoder.txt").read_text()
    assert torch.load(model / "classifier.ckpt", weights_only=True)["weight"].shape == (4 * 3, 8)


def test_resume_after_sigkill_in_stage_2(corpus, tmp_path):
    output = tmp_path / "run"
    # Stage 2: 2 epochs of 8 optimiser steps, an intra-epoch checkpoint after every step;
    # the kill comes at the first one, well before the end of the epoch.
    args = recipe_args(corpus, output, joint="{epochs: 2, batch_size: 2, crop_seconds: 0.5}")
    args += ["--run_stages=[frozen,joint]", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1"]
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

    run_recipe(args)
    # No stage or epoch ran twice, and the killed epoch was finished, not restarted.
    assert logged_epochs(output) == [("frozen", 1), ("joint", 1), ("joint", 2)]
    final = json.loads((joint / "stage_done.json").read_text())
    latest = max(checkpoints(joint), key=lambda p: p.name)
    steps = 2 * (16 // 2)  # epochs x optimiser steps per epoch (16 training utterances)
    for name in ("lr_schedule", "margin_schedule"):
        assert torch.load(latest / f"{name}.ckpt", weights_only=True)["current_step"] == steps
    assert (latest / "epoch_counter.ckpt").read_text() == "2"
    assert final["stage"] == "joint" and Path(final["checkpoint"]).exists()
    assert not [p for p in joint.iterdir() if p.name.startswith(".")], "staging leftovers"
    assert (output / "save" / "model" / "embedding_model.ckpt").exists()


def test_two_process_gloo_ddp_bf16(corpus, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is not installed next to the Python interpreter"
    output = tmp_path / "ddp"
    args = recipe_args(corpus, output, frozen="{epochs: 1, batch_size: 2, crop_seconds: 0.5}",
                       joint="{epochs: 1, batch_size: 2, crop_seconds: 0.5}")
    args += ["--run_stages=[frozen,joint]", "--distributed_backend=gloo", "--precision=bf16"]
    run_recipe(args, launcher=(torchrun, "--standalone", "--nproc_per_node=2"))

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
        assert torch.load(checkpoint / "lr_schedule.ckpt", weights_only=True)["current_step"] == 4
