"""A shortened run of the offline demo (hparams/demo.yaml), end to end, as the README's first command."""

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "--synthetic_corpus": "{num_train_speakers: 4, num_valid_speakers: 3, num_test_speakers: 3, "
    "utterances_per_speaker: 4, sessions_per_speaker: 2, min_duration: 1.0, max_duration: 2.0, "
    "num_test_trials: 12, num_valid_trials: 8, num_rooms: 2, num_augmentation_files: 2, num_workers: 1}",
    "--frozen": "{epochs: 1, batch_size: 4}",
    "--joint": "{epochs: 1, batch_size: 4}",
    "--lmft": "{batch_size: 4, grad_accumulation_factor: 1, crop_seconds: 1.5}",
    "--evaluation": "{cohort_utterances_per_speaker: 2, top_n: 2, qmf_pairs: 16}",
    "--verify_examples": "1",
}


def test_demo_runs_end_to_end(tmp_path):
    output = tmp_path / "demo"
    command = [
        sys.executable, str(REPO / "recipes" / "train_speaker_embeddings.py"), str(REPO / "hparams" / "demo.yaml"),
        f"--data_folder={tmp_path / 'corpus'}", f"--output_folder={output}",
    ] + [f"{flag}={value}" for flag, value in SMALL.items()]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    # The results table of all three scoring conditions, and the baseline beside it.
    table = (output / "evaluation" / "results.md").read_text()
    for condition in ("cosine", "AS-Norm", "AS-Norm + QMF"):
        assert f"| {condition} |" in table
    assert "MFCC mean+std cosine (no training)" in run.stdout
    # verify_files on one same-speaker and one different-speaker test pair.
    verified = [line for line in run.stdout.splitlines() if line.startswith("verify_files ")]
    assert len(verified) == 2
    assert "(same speaker)" in verified[0] and "(different speakers)" in verified[1]
    assert "exported model:" in run.stdout

    # The exported model loads as users load it and embeds a test file.
    from speechbrain.inference.speaker import EncoderClassifier

    from lap_speechbrain.inference import load_audio

    exported = output / "exported_model"
    assert (exported / "README.md").is_file()
    encoder = EncoderClassifier.from_hparams(source=str(exported), savedir=str(tmp_path / "loaded"))
    test_file = next((tmp_path / "corpus" / "audio" / "test").rglob("*.wav"))
    embedding = encoder.encode_batch(load_audio(test_file)[None])
    assert embedding.shape == (1, 1, 128)
    assert torch.isfinite(embedding).all()
