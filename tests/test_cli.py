"""The ``lap-speechbrain`` command: every subcommand and its errors, offline."""

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import write_voices
from test_export import FakeApi
from test_export_reference import reference_state
from test_fileio import kill_mid_write
from test_inference import (
    BACKEND,
    SPEAKERS,
    randomize_,
    seed_hub_cache,
    snapshot,
    write_non_finite,
    write_training_output,
)
from transformers import WavLMModel

from lap_speechbrain.cli import main
from lap_speechbrain.export.folder import fill_template
from lap_speechbrain.inference import LAPSpeakerRecognition
from lap_speechbrain.known_warnings import KNOWN_WARNINGS
from lap_speechbrain.lobes import SSLSpeakerEncoder
from lap_speechbrain.nnet import SubCenterClassifier


def make_run(make_encoder, tiny_wavlm_large, folder: Path, seed: int = 0) -> Path:
    encoder = make_encoder(tiny_wavlm_large, **BACKEND)
    randomize_(encoder, seed=seed)
    return write_training_output(folder, encoder, SubCenterClassifier(8, len(SPEAKERS)))


@pytest.fixture
def training_output(make_encoder, tiny_wavlm_large, tmp_path):
    return make_run(make_encoder, tiny_wavlm_large, tmp_path / "train_out")


@pytest.fixture
def exported(training_output, tmp_path, capsys):
    assert main(["export", str(training_output), str(tmp_path / "model"), "--repo-id", "me/lap-tiny"]) == 0
    assert "exported to" in capsys.readouterr().out
    return tmp_path / "model"


def test_verify_embed_and_plot_attention(exported, tmp_path, capsys):
    first, second = write_voices(tmp_path / "audio")
    assert main(["verify", str(first), str(second), "--model", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "score" in out and "threshold 0.3125" in out
    assert main(["verify", str(first), str(second), "--model", str(exported), "--threshold", "-1"]) == 0
    assert "same speaker" in capsys.readouterr().out
    # Same speaker when the score equals the threshold (the rule the threshold was calibrated with).
    score, _ = LAPSpeakerRecognition.from_hparams(source=str(exported)).verify_files(first, second)
    assert main(["verify", str(first), str(second), "--model", str(exported), "--threshold", repr(float(score))]) == 0
    assert "same speaker" in capsys.readouterr().out

    # A folder, a list file and a single file give the same embeddings per file.
    (tmp_path / "audio" / "nested").mkdir()
    sf.write(tmp_path / "audio" / "nested" / "third.wav", np.random.default_rng(1).standard_normal(12000) * 0.1,
             22050)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a padded batch makes torch warn about WavLM's attention masks
        assert main(["embed", str(tmp_path / "audio"), "--model", str(exported), "--out",
                     str(tmp_path / "folder.pt"), "--batch-size", "2"]) == 0
    known = [str(w.message) for w in caught if any(re.match(message, str(w.message)) for _, message in KNOWN_WARNINGS)]
    assert not known, known
    quiet = capsys.readouterr().err  # no bars when stderr is not a terminal
    assert "embed 3 files" not in quiet and "Reading audio headers" not in quiet
    assert main(["embed", str(tmp_path / "audio"), "--model", str(exported), "--out",
                 str(tmp_path / "progress.pt"), "--batch-size", "2", "--progress", "on"]) == 0
    bar = capsys.readouterr().err
    assert "embed 3 files" in bar and "0/3" in bar and "3/3" in bar  # over the files, per batch
    by_folder = torch.load(tmp_path / "folder.pt", weights_only=True)
    assert by_folder["embeddings"].shape == (3, 8) and len(by_folder["paths"]) == 3
    (tmp_path / "audio" / "list.txt").write_text("# trials\nnested/third.wav\nspeaker1.wav\n")
    assert main(["embed", str(tmp_path / "audio" / "list.txt"), "--model", str(exported), "--out",
                 str(tmp_path / "list.pt")]) == 0
    by_list = torch.load(tmp_path / "list.pt", weights_only=True)
    assert [Path(p).name for p in by_list["paths"]] == ["third.wav", "speaker1.wav"]
    assert main(["embed", str(first), "--model", str(exported), "--out", str(tmp_path / "one.pt")]) == 0
    alone = torch.load(tmp_path / "one.pt", weights_only=True)["embeddings"][0]
    in_folder = by_folder["embeddings"][[Path(p).name for p in by_folder["paths"]].index("speaker1.wav")]
    assert (alone - in_folder).abs().max() < 1e-5  # padding in a batch changes nothing
    assert (alone - by_list["embeddings"][1]).abs().max() < 1e-5
    capsys.readouterr()
    assert main(["embed", str(first), "--model", str(exported), "--out", str(tmp_path / "n.pt"), "--normalize"]) == 1
    assert "stores no training-set mean embedding" in capsys.readouterr().err

    assert main(["plot-attention", str(second), "--model", str(exported), "--out", str(tmp_path / "lap.png")]) == 0
    out = capsys.readouterr().out
    assert "gates of 4 heads x 62 frames x 3 layers" in out  # 20000 samples at 16 kHz -> 62 frames
    image = matplotlib.image.imread(tmp_path / "lap.png")
    assert image.shape[0] > 500 and image.shape[1] > 1000


def test_long_files_are_bounded(exported, tmp_path, capsys, monkeypatch):
    """Issue 15.7: memory must not grow with the file (here with a 0.5 s bound instead of 60 s)."""
    hyperparams = exported / "hyperparams.yaml"
    hyperparams.write_text(fill_template(hyperparams.read_text(), {"max_chunk_seconds": 0.5}))
    seen = []
    forward = SSLSpeakerEncoder.forward

    def spy(module, wavs, lengths=None):
        seen.append(wavs.shape[-1])
        return forward(module, wavs, lengths)

    monkeypatch.setattr(SSLSpeakerEncoder, "forward", spy)
    sf.write(tmp_path / "long.wav", np.random.default_rng(2).standard_normal(24000) * 0.1, 16000)
    assert main(["verify", str(tmp_path / "long.wav"), str(tmp_path / "long.wav"), "--model", str(exported)]) == 0
    assert "same speaker" in capsys.readouterr().out
    assert seen and max(seen) == 8000  # 1.5 s in three 0.5 s chunks
    seen.clear()
    assert main(["embed", str(tmp_path / "long.wav"), "--model", str(exported), "--out", str(tmp_path / "e.pt")]) == 0
    assert seen and max(seen) == 8000  # embed chunks long files as verify does
    assert main(["plot-attention", str(tmp_path / "long.wav"), "--model", str(exported),
                 "--out", str(tmp_path / "lap.png")]) == 0
    captured = capsys.readouterr()
    assert "long.wav lasts 1.5 s; plotting its first 0.5 s" in captured.err
    assert "x 24 frames x" in captured.out  # 8000 samples
    # A header that claims 1 Hz is refused before anything is allocated, naming the file.
    sf.write(tmp_path / "one_hz.wav", np.zeros(1000, dtype=np.int16), 1)
    assert main(["verify", str(tmp_path / "one_hz.wav"), str(tmp_path / "long.wav"), "--model", str(exported)]) == 1
    assert "one_hz.wav: sample rate 1 Hz in its header" in capsys.readouterr().err


def test_commands_never_remove_a_folder_they_did_not_make(training_output, tmp_path, capsys, monkeypatch):
    """Issues 15.1 and 15.2: --savedir RUN and export onto RUN or its parent leave every file in place."""
    parent = training_output.parent
    (parent / "unrelated.txt").write_text("keep me")
    first, second = write_voices(tmp_path / "audio")
    before = snapshot(training_output)
    run = str(training_output)
    assert main(["verify", str(first), str(second), "--model", run, "--savedir", run]) == 0
    assert main(["embed", str(first), "--model", run, "--savedir", run, "--out", str(tmp_path / "e.pt")]) == 0
    assert main(["plot-attention", str(first), "--model", run, "--savedir", run,
                 "--out", str(tmp_path / "p.png")]) == 0
    assert snapshot(training_output) == before
    capsys.readouterr()
    before = snapshot(parent)
    for destination in (run, str(parent), str(training_output / "model")):
        assert main(["export", run, destination, "--overwrite"]) == 1
        assert f"{destination}: the export destination" in capsys.readouterr().err
    assert main(["export", run, str(tmp_path / "audio"), "--overwrite"]) == 1
    assert "is not an earlier export" in capsys.readouterr().err
    assert snapshot(parent) == before
    # A hub model's files are never linked into a folder that holds other files.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    seed_hub_cache(tmp_path / "hf_cache", "lap-org/tiny", training_output / "model")
    assert main(["verify", str(first), str(second), "--model", "lap-org/tiny", "--savedir", run]) == 1
    assert f"savedir {run} is not empty" in capsys.readouterr().err
    assert snapshot(training_output) == {k[len("train_out/"):]: v for k, v in before.items()
                                         if k.startswith("train_out/")}
    assert main(["verify", str(first), str(second), "--model", "lap-org/tiny",
                 "--savedir", str(tmp_path / "links")]) == 0


def test_a_reused_savedir_scores_with_the_model_asked_for(make_encoder, tiny_wavlm_large, tmp_path, capsys):
    """Issue 15.3: verify --model runB --savedir S after runA scored with runA's weights."""
    first, second = write_voices(tmp_path / "audio")
    runs = [make_run(make_encoder, tiny_wavlm_large, tmp_path / name, seed) for seed, name in enumerate("ab")]
    alone = []
    for run in runs:
        assert main(["verify", str(first), str(second), "--model", str(run)]) == 0
        alone.append(capsys.readouterr().out.split()[1])
    assert alone[0] != alone[1]
    for run, expected in zip(runs, alone):
        assert main(["verify", str(first), str(second), "--model", str(run), "--savedir", str(tmp_path / "S")]) == 0
        assert capsys.readouterr().out.split()[1] == expected


def test_export_from_a_reference_checkpoint(tiny_wavlm_large, tmp_path, capsys):
    frontend = WavLMModel.from_pretrained(tiny_wavlm_large)
    state = reference_state(frontend.state_dict(), L=frontend.config.num_hidden_layers + 1, classes=7)
    torch.save(state, tmp_path / "model.state")
    (tmp_path / "speakers.txt").write_text("\n".join(f"spk{i}" for i in range(7)))
    args = ["export", "--reference-checkpoint", str(tmp_path / "model.state"), "--ssl-source", tiny_wavlm_large,
            "--labels", str(tmp_path / "speakers.txt"), str(tmp_path / "ref")]
    assert main(args) == 0
    assert (tmp_path / "ref" / "label_encoder.ckpt").read_text().count("spk") == 7
    assert "uncalibrated 0.25" in capsys.readouterr().err  # no --threshold: said, not silent
    assert "0.2500 (not calibrated" in (tmp_path / "ref" / "README.md").read_text()
    # Wrong combinations are usage errors (exit status 2).
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--reference-checkpoint", str(tmp_path / "model.state"), str(tmp_path / "x")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "only_one")])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert main(["export", "--reference-checkpoint", str(tmp_path / "missing.state"), "--ssl-source",
                 tiny_wavlm_large, str(tmp_path / "y")]) == 1
    assert "missing.state does not exist" in capsys.readouterr().err


def test_bad_inputs_give_errors_naming_them(exported, tmp_path, capsys):
    good, _ = write_voices(tmp_path / "audio")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(tmp_path / "short.wav", np.zeros(200, dtype=np.float32), 16000)
    cases = {
        str(tmp_path / "missing.wav"): "missing.wav: no such audio file",
        str(tmp_path / "broken.wav"): "broken.wav: cannot be read as audio",
        str(tmp_path / "short.wav"): "short.wav: too short, 200 samples",
    }
    for path, message in cases.items():
        assert main(["verify", str(good), path, "--model", str(exported)]) == 1
        assert message in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "nothing_here"), "--model", str(exported), "--out", "x.pt"]) == 1
    assert "nothing_here: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "--model", str(exported), "--out", "x.pt"]) == 1
    assert "no .wav" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "audio"), str(tmp_path / "new")]) == 1
    assert "audio is not a training output folder" in capsys.readouterr().err
    assert main(["verify", str(good), str(good), "--model", str(tmp_path / "audio")]) == 1
    assert "neither an exported model folder" in capsys.readouterr().err
    assert main(["verify", str(good), str(good), "--model", str(tmp_path / "no" / "such")]) == 1
    assert "no such model folder" in capsys.readouterr().err


def test_non_finite_audio_is_an_error_not_a_verdict(exported, tmp_path, capsys):
    """Issue 14: `verify` on a NaN wav printed "score nan ... different speakers" and exited 0."""
    good, _ = write_voices(tmp_path / "audio")
    for name, path in write_non_finite(tmp_path / "bad").items():
        assert main(["verify", str(good), str(path), "--model", str(exported)]) == 1
        captured = capsys.readouterr()
        assert "score" not in captured.out
        assert f"{name}.wav: 1 of 8000 samples are NaN or infinite" in captured.err
    # A killed earlier embed left its temporary: the next run removes it.
    orphan = kill_mid_write(tmp_path / "e.pt")
    assert main(["embed", str(tmp_path / "audio"), "--model", str(exported), "--out", str(tmp_path / "e.pt")]) == 0
    assert not orphan.exists() and (tmp_path / "e.pt").is_file()
    shutil.copyfile(tmp_path / "bad" / "inf.wav", tmp_path / "audio" / "inf.wav")
    assert main(["embed", str(tmp_path / "audio"), "--model", str(exported), "--out", str(tmp_path / "n.pt")]) == 1
    assert "inf.wav: 1 of 8000 samples are NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()  # no file of embeddings with a NaN row
    assert main(["plot-attention", str(tmp_path / "audio" / "inf.wav"), "--model", str(exported),
                 "--out", str(tmp_path / "lap.png")]) == 1
    assert "inf.wav: 1 of 8000 samples are NaN or infinite" in capsys.readouterr().err


def test_embed_onto_a_full_disk_names_the_output_and_leaves_nothing(exported, tmp_path, capsys, monkeypatch):
    good, _ = write_voices(tmp_path / "audio")

    def full(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says on a full disk

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("lap_speechbrain.fileio.free_bytes", lambda path: 0)
    (tmp_path / "out").mkdir()
    assert main(["embed", str(good), "--model", str(exported), "--out", str(tmp_path / "out" / "e.pt")]) == 1
    assert f"no space left on {tmp_path / 'out' / 'e.pt'}" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_export_refuses_a_non_empty_folder(training_output, exported, capsys):
    assert main(["export", str(training_output), str(exported)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", str(training_output), str(exported), "--overwrite"]) == 0  # an earlier export


def test_push_dry_run_and_upload(exported, capsys, monkeypatch):
    assert main(["push", str(exported), "me/lap-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "embedding_model.ckpt" in out and "trained_with.ckpt" in out and "would upload 9 files" in out
    assert "lap_export.json" not in out
    assert "custom_interface.py" in out and "hyperparams_standalone.yaml" in out  # loading without the package

    api = FakeApi()
    monkeypatch.setattr("lap_speechbrain.export.hub.HfApi", lambda: api)
    assert main(["push", str(exported), "me/other", "--private"]) == 0
    assert api.calls[0][:2] == ("create_repo", "me/other") and api.calls[0][2]["exist_ok"] and api.calls[0][2]["private"]
    assert "hyperparams.yaml" in api.calls[1][2]
    assert "does not name me/other" in capsys.readouterr().err  # the card was made for me/lap-tiny
    assert main(["push", str(exported.parent), "me/x", "--dry-run"]) == 1
    assert "not an exported model folder" in capsys.readouterr().err
    assert main(["push", str(exported), "not-a-repo-id", "--dry-run"]) == 1


def test_console_script_runs(exported, tmp_path):
    first, second = write_voices(tmp_path / "audio")
    script = Path(sys.executable).with_name("lap-speechbrain")
    result = subprocess.run([str(script), "verify", str(first), str(second), "--model", str(exported)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("score ")
