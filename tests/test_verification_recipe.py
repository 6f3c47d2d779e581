"""The verification run (library function and recipe) on a tiny corpus with a tiny model."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lap_speechbrain.scoring import (
    MissingAudioError,
    compute_eer,
    compute_min_dcf,
    encoder_embedding_fn,
    run_verification,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000


def speaker_audio(rng, speaker, duration):
    """Noise through a speaker-specific resonance: speakers differ, utterances vary."""
    noise = rng.normal(size=int(duration * SAMPLE_RATE))
    frequency = 300 + 400 * speaker
    t = np.arange(noise.size) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * frequency * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * tone + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 test speakers (trial lists) and 5 training speakers (cohort CSV), 3 utterances each."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    utterances = {}
    for speaker in range(9):
        for index in range(3):
            relative = f"id{speaker:02d}/video/{index:05d}.wav"
            path = root / "wav" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            duration = float(rng.uniform(0.3, 0.6))
            soundfile.write(path, speaker_audio(rng, speaker, duration), SAMPLE_RATE)
            utterances.setdefault(speaker, []).append((relative, path, duration))
    test = [u for s in range(4) for u in utterances[s]]
    lines = []
    for i, (first, _, _) in enumerate(test):
        for second, _, _ in test[i + 1 :]:
            lines.append(f"{int(first.split('/')[0] == second.split('/')[0])} {first} {second}")
    (root / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    (root / "hard.txt").write_text("\n".join(lines[::3]) + "\n")
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "duration", "wav", "spk_id"])
        for speaker in range(4, 9):
            for relative, path, duration in utterances[speaker]:
                writer.writerow([relative[:-4], duration, str(path), relative.split("/")[0]])
    return root


@pytest.fixture(scope="module")
def encoder(tiny_wavlm_large, tmp_path_factory):
    from speechbrain.integrations.huggingface.wavlm import WavLM

    from lap_speechbrain.lobes import SSLSpeakerEncoder

    torch.manual_seed(0)
    ssl = WavLM(tiny_wavlm_large, save_path=str(tmp_path_factory.mktemp("ssl")))
    return SSLSpeakerEncoder(ssl, lap_channels=16, num_heads=4, embedding_dim=8).eval()


class CountingEmbed:
    def __init__(self, embed):
        self.embed, self.calls = embed, 0

    def __call__(self, wavs, wav_lens):
        self.calls += 1
        return self.embed(wavs, wav_lens)


SETTINGS = dict(
    cohort_utterances_per_speaker=2,
    top_n=2,
    qmf_pairs=40,
    seed=3,
    extraction={"batch_size": 4},
)



def load_recipe():
    """Imports recipes/speaker_verification.py as a module (recipes are not a package)."""
    spec = importlib.util.spec_from_file_location(
        "speaker_verification", ROOT / "recipes" / "speaker_verification.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe

def test_run_verification_writes_table_json_and_plots(corpus, encoder, tmp_path):
    trial_lists = {"O": corpus / "veri_test2.txt", "custom": corpus / "hard.txt"}
    embed = CountingEmbed(encoder_embedding_fn(encoder))
    results = run_verification(
        embed, trial_lists, corpus / "wav", tmp_path, "tiny", cohort_csv=corpus / "train.csv",
        **SETTINGS,
    )
    conditions = ["cosine", "AS-Norm", "AS-Norm + QMF"]
    assert list(results) == ["O", "custom"]
    assert all(list(results[name]) == conditions for name in results)

    # Cosine after subtracting the cohort mean, recomputed one utterance at a time.
    def embed_file(path):
        wav = torch.as_tensor(soundfile.read(path, dtype="float32")[0])[None]
        with torch.no_grad():
            return encoder(wav, torch.ones(1)).reshape(-1)

    assert json.loads((tmp_path / "run_info.json").read_text())["cohort_utterances"] == 10
    shards = sorted((tmp_path / "embeddings").glob("*/cohort/shard-*.npz"))
    cohort = torch.as_tensor(np.concatenate([np.load(path)["embeddings"] for path in shards]))
    assert cohort.shape == (10, 8)  # 5 speakers x at most 2 utterances
    rows = list(csv.DictReader(open(corpus / "train.csv")))
    all_files = torch.stack([embed_file(row["wav"]) for row in rows])
    assert torch.cdist(cohort, all_files).min(dim=1).values.max() < 1e-4
    mean = cohort.mean(dim=0)
    lines = [line.split() for line in (corpus / "veri_test2.txt").read_text().splitlines()]
    labels = np.array([int(label) for label, _, _ in lines])
    utterances = sorted({u for _, e, t in lines for u in (e, t)})
    table = {u: embed_file(corpus / "wav" / u) - mean for u in utterances}
    scores = np.array(
        [
            torch.nn.functional.cosine_similarity(table[e], table[t], dim=0).item()
            for _, e, t in lines
        ]
    )
    assert results["O"]["cosine"]["eer"] == pytest.approx(compute_eer(scores, labels)[0], abs=1e-9)
    assert results["O"]["cosine"]["min_dcf_0.01"] == pytest.approx(
        compute_min_dcf(scores, labels, 0.01)[0], abs=1e-9
    )

    table_lines = (tmp_path / "results.md").read_text().splitlines()
    assert table_lines[0].startswith("| Trial list | Scoring | EER (%) | minDCF (p=0.01)")
    assert len(table_lines) == 2 + 6
    assert json.loads((tmp_path / "results.json").read_text()) == results
    for name in ("O", "custom"):
        assert (tmp_path / f"det_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "qmf_calibration.json").read_text())["weights"]

    # A rerun reuses every cached embedding and applies the saved calibration.
    rerun = CountingEmbed(encoder_embedding_fn(encoder))
    again = run_verification(
        rerun, trial_lists, corpus / "wav", tmp_path, "tiny", cohort_csv=corpus / "train.csv",
        qmf_calibration=tmp_path / "qmf_calibration.json", **SETTINGS,
    )
    assert rerun.calls == 0
    for name, conditions in results.items():
        for condition, metrics in conditions.items():
            assert again[name][condition] == pytest.approx(metrics, abs=1e-9)


def test_cosine_only_without_cohort(corpus, encoder, tmp_path):
    results = run_verification(
        encoder_embedding_fn(encoder), {"O": corpus / "veri_test2.txt"}, corpus / "wav",
        tmp_path, "tiny",
    )
    assert list(results["O"]) == ["cosine"]
    assert (tmp_path / "det_O.png").is_file()


def test_bad_inputs_stop_before_any_embedding(corpus, tmp_path):
    embed = CountingEmbed(lambda wavs, lens: torch.zeros(wavs.shape[0], 2))
    missing = tmp_path / "missing.txt"
    missing.write_text(
        "1 id00/video/00000.wav id00/video/00009.wav\n0 id00/video/00000.wav id07/x/1.wav\n"
    )
    with pytest.raises(MissingAudioError, match="2 of .* audio files are missing") as error:
        run_verification(embed, {"O": missing}, corpus / "wav", tmp_path, "toy")
    assert "00009.wav" in str(error.value) and "id07/x/1.wav" in str(error.value)

    one_class = tmp_path / "targets.txt"
    one_class.write_text("1 id00/video/00000.wav id00/video/00001.wav\n")
    with pytest.raises(ValueError, match="needs both target .1. and non-target .0. trials"):
        run_verification(embed, {"O": one_class}, corpus / "wav", tmp_path, "toy")

    bad = tmp_path / "bad.txt"
    bad.write_text("1 id00/video/00000.wav id00/video/00001.wav\n0 id00/video/00000.wav\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 3 fields"):
        run_verification(embed, {"O": bad}, corpus / "wav", tmp_path, "toy")

    with pytest.raises(ValueError, match="top_n=4 does not fit the cohort of 5 speakers"):
        run_verification(
            embed, {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path, "toy",
            cohort_csv=corpus / "train.csv", top_n=4,
        )

    cohort = tmp_path / "cohort.csv"
    existing = corpus / "wav" / "id05" / "video" / "00000.wav"
    cohort.write_text(
        "ID,duration,wav,spk_id\n"
        f"a/v/1,1.0,{existing},a\nb/v/1,1.0,{tmp_path / 'nowhere.wav'},b\nc/v/1,1.0,{existing},c\n"
    )
    with pytest.raises(MissingAudioError, match="(?s)1 of 3 audio files are missing.*nowhere.wav"):
        run_verification(
            embed, {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path, "toy",
            cohort_csv=cohort, top_n=1,
        )
    assert embed.calls == 0


def test_recipe_runs_from_the_yaml(corpus, encoder, tmp_path, monkeypatch):
    import lap_speechbrain.inference

    loaded = {}

    def fake_load_encoder(source, savedir=None, device="cpu"):
        loaded.update(source=source, savedir=savedir, device=device)
        return encoder

    monkeypatch.setattr(lap_speechbrain.inference, "load_encoder", fake_load_encoder)
    recipe = load_recipe()
    output = tmp_path / "out"
    recipe.main(
        [
            str(ROOT / "hparams" / "verification.yaml"),
            "--model=my/model",
            f"--data_folder={corpus / 'wav'}",
            f"--trials_folder={corpus}",
            f"--trial_lists={{E: null, H: null, custom: {corpus / 'hard.txt'}}}",
            f"--cohort_csv={corpus / 'train.csv'}",
            f"--output_folder={output}",
            "--top_n=2",
            "--qmf_pairs=40",
            "--cohort_utterances_per_speaker=2",
        ]
    )
    savedir = str(output / "pretrained_model")
    assert loaded == {"source": "my/model", "savedir": savedir, "device": "cpu"}
    results = json.loads((output / "results.json").read_text())
    assert list(results) == ["O", "custom"]
    assert list(results["O"]) == ["cosine", "AS-Norm", "AS-Norm + QMF"]
    assert (output / "results.md").is_file() and (output / "det_custom.png").is_file()
    assert (output / "hyperparams.yaml").is_file()


def test_recipe_with_an_exported_model(corpus, encoder, tmp_path):
    """End to end: the real load_encoder on an exported folder, no stand-ins."""
    from lap_speechbrain.export.folder import export_model
    from lap_speechbrain.nnet import SubCenterClassifier

    exported = export_model(
        tmp_path / "exported",
        ssl_config=encoder.ssl_model.model.config.to_dict(),
        backend_config={"lap_channels": 16, "num_heads": 4, "embedding_dim": 8},
        embedding_state=encoder.state_dict(),
        classifier_state=SubCenterClassifier(8, 2).state_dict(),
        labels=["id04", "id05"],
        threshold=None,
    )
    recipe = load_recipe()
    output = tmp_path / "out"
    recipe.main(
        [
            str(ROOT / "hparams" / "verification.yaml"),
            f"--model={exported}",
            f"--data_folder={corpus / 'wav'}",
            f"--trials_folder={corpus}",
            "--trial_lists={E: null, H: null}",
            f"--cohort_csv={corpus / 'train.csv'}",
            f"--output_folder={output}",
            "--top_n=2",
            "--qmf_pairs=40",
        ]
    )
    exported_results = json.loads((output / "results.json").read_text())
    direct = run_verification(
        encoder_embedding_fn(encoder), {"O": corpus / "veri_test2.txt"}, corpus / "wav",
        tmp_path / "direct", "direct", cohort_csv=corpus / "train.csv", top_n=2, qmf_pairs=40,
        cohort_utterances_per_speaker=20, seed=1234,
    )
    # The exported model embeds as the in-memory encoder does: same metrics.
    assert exported_results["O"]["cosine"] == pytest.approx(direct["O"]["cosine"], abs=1e-6)
