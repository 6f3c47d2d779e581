"""The ``lap-speechbrain`` command: every subcommand and its errors, offline."""

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import torch
from test_inference import (
    BACKEND,
    SPEAKERS,
    randomize_,
    write_training_output,
    write_voices,
)
from transformers import WavLMModel

from lap_speechbrain.cli import main
from lap_speechbrain.nnet import SubCenterClassifier


@pytest.fixture
def exported(make_encoder, tiny_wavlm_large, tmp_path, capsys):
    encoder = make_encoder(tiny_wavlm_large, **BACKEND)
    randomize_(encoder)
    training_output = write_training_output(tmp_path / "train_out", encoder,
                                            SubCenterClassifier(8, len(SPEAKERS)))
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

    # A folder, a list file and a single file give the same embeddings per file.
    (tmp_path / "audio" / "nested").mkdir()
    sf.write(tmp_path / "audio" / "nested" / "third.wav", np.random.default_rng(1).standard_normal(12000) * 0.1,
             22050)
    assert main(["embed", str(tmp_path / "audio"), "--model", str(exported), "--out",
                 str(tmp_path / "folder.pt"), "--batch-size", "2"]) == 0
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

    assert main(["plot-attention", str(second), "--model", str(exported), "--out", str(tmp_path / "lap.png")]) == 0
    out = capsys.readouterr().out
    assert "gates of 4 heads x 62 frames x 3 layers" in out  # 20000 samples at 16 kHz -> 62 frames
    image = matplotlib.image.imread(tmp_path / "lap.png")
    assert image.shape[0] > 500 and image.shape[1] > 1000


def test_export_from_a_reference_checkpoint(tiny_wavlm_large, tmp_path, capsys):
    from test_convert import reference_state

    frontend = WavLMModel.from_pretrained(tiny_wavlm_large)
    state = reference_state(frontend.state_dict(), L=frontend.config.num_hidden_layers + 1, classes=7)
    torch.save(state, tmp_path / "model.state")
    (tmp_path / "speakers.txt").write_text("\n".join(f"spk{i}" for i in range(7)))
    args = ["export", "--reference-checkpoint", str(tmp_path / "model.state"), "--ssl-source", tiny_wavlm_large,
            "--labels", str(tmp_path / "speakers.txt"), str(tmp_path / "ref")]
    assert main(args) == 0
    assert (tmp_path / "ref" / "label_encoder.ckpt").read_text().count("spk") == 7
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
    assert main(["export", str(tmp_path / "audio"), str(exported)]) == 1
    assert "not a training output folder" in capsys.readouterr().err
    assert main(["verify", str(good), str(good), "--model", str(tmp_path / "audio")]) == 1
    assert "not a training output folder" in capsys.readouterr().err


def test_export_refuses_a_non_empty_folder(exported, tmp_path, capsys):
    training_output = tmp_path / "train_out"
    assert main(["export", str(training_output), str(exported)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", str(training_output), str(exported), "--overwrite"]) == 0


def test_push_dry_run_and_upload(exported, capsys, monkeypatch):
    assert main(["push", str(exported), "me/lap-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "embedding_model.ckpt" in out and "would upload 5 files" in out

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr("lap_speechbrain.export.hub.HfApi", FakeApi)
    assert main(["push", str(exported), "me/other", "--private"]) == 0
    assert calls[0][:2] == ("create_repo", "me/other") and calls[0][2]["exist_ok"] and calls[0][2]["private"]
    assert calls[1][2]["folder_path"] == str(exported)
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
