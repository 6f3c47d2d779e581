"""The verification run (library function and recipes) on a tiny corpus with a tiny model."""

import csv
import functools
import importlib.util
import json
import logging
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import SAMPLE_RATE, speaker_voice, write_audio
from hyperpyyaml import load_hyperpyyaml
from sklearn.linear_model import LogisticRegression

from lap_speechbrain.inference import load_audio
from lap_speechbrain.scoring import (
    MissingAudioError,
    NonFiniteError,
    compute_eer,
    compute_min_dcf,
    encoder_embedding_fn,
    model_fingerprint,
    run_verification,
)
from lap_speechbrain.scoring.qmf import sample_training_pairs
from lap_speechbrain.scoring.verification import select_cohort

ROOT = Path(__file__).resolve().parents[2]
LOAD = functools.partial(load_audio, target_sample_rate=SAMPLE_RATE)


def write_corpus(root, seed=0, voices=range(9)):
    """4 test speakers (trial lists) and 5 training speakers (cohort CSV), 3 utterances each.

    ``voices`` gives the voice of each speaker folder, so a corpus with the
    same file names and other audio can be made.
    """
    rng = np.random.default_rng(seed)
    utterances = {}
    for speaker, voice in zip(range(9), voices):
        for index in range(3):
            relative = f"id{speaker:02d}/video/{index:05d}.wav"
            duration = float(rng.uniform(0.3, 0.6))
            path = write_audio(root / "wav" / relative, speaker_voice(voice, duration, rng))
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
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def encoder(tiny_wavlm_large, tmp_path_factory):
    from speechbrain.integrations.huggingface.wavlm import WavLM

    from lap_speechbrain.lobes import SSLSpeakerEncoder

    torch.manual_seed(0)
    ssl = WavLM(tiny_wavlm_large, save_path=str(tmp_path_factory.mktemp("ssl")))
    return SSLSpeakerEncoder(ssl, lap_channels=16, num_heads=4, embedding_dim=8).eval()


class CountingEmbed:
    def __init__(self, embed):
        self.embed, self.calls, self.rows = embed, 0, 0

    def __call__(self, wavs, wav_lens):
        self.calls += 1
        self.rows += wavs.shape[0]
        return self.embed(wavs, wav_lens)


def spectral_embed(wavs, wav_lens):
    """A cheap deterministic embedding: log mean magnitude spectrum of the valid samples."""
    rows = []
    for wav, length in zip(wavs, wav_lens):
        valid = wav[: int(round(float(length) * wavs.shape[1]))]
        spectrum = torch.stft(valid, 64, window=torch.hann_window(64), return_complex=True).abs()
        rows.append(torch.log(spectrum.mean(dim=1)[1:17] + 1e-3))
    return torch.stack(rows)


class SpectralEncoder(torch.nn.Module):
    """:func:`spectral_embed` as a model that a stand-in ``load_encoder`` can return."""

    def forward(self, wavs, wav_lens):
        return spectral_embed(wavs, wav_lens)


SETTINGS = dict(
    cohort_utterances_per_speaker=2,
    top_n=2,
    qmf_pairs=40,
    seed=3,
    batch_size=4,
)


def load_recipe(name="speaker_verification"):
    """Imports a recipe as a module (recipes are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_run_verification_writes_table_json_and_plots(corpus, encoder, tmp_path):
    trial_lists = {"O": corpus / "veri_test2.txt", "custom": corpus / "hard.txt"}
    embed = CountingEmbed(encoder_embedding_fn(encoder))
    results = run_verification(
        embed, LOAD, "tiny", trial_lists, corpus / "wav", tmp_path, cohort_csv=corpus / "train.csv",
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

    run_info = json.loads((tmp_path / "run_info.json").read_text())
    assert run_info["cohort_utterances"] == 10  # 5 speakers x at most 2 utterances
    assert run_info["protocol"] == "default" and run_info["model_key"] == "tiny"
    assert run_info["data_folder"] == str((corpus / "wav").resolve())
    assert run_info["trial_lists"]["O"]["num_trials"] == 66
    shards = sorted((tmp_path / "embeddings").glob("*/shard-*.npz"))
    cached = torch.as_tensor(np.concatenate([np.load(path)["embeddings"] for path in shards]))
    assert cached.shape == (12 + 10, 8)  # trial and cohort utterances, once each
    rows = select_cohort(list(csv.DictReader(open(corpus / "train.csv"))), 2, seed=3)
    cohort = torch.stack([embed_file(row["wav"]) for row in rows])
    assert torch.cdist(cohort, cached).min(dim=1).values.max() < 1e-4
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
    assert table_lines[0].startswith("Scoring protocol: default (")
    assert table_lines[2].startswith("| Trial list | Scoring | EER (%) | minDCF (p=0.01)")
    assert len(table_lines) == 4 + 6
    assert json.loads((tmp_path / "results.json").read_text()) == results
    for name in ("O", "custom"):
        assert (tmp_path / f"det_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "qmf_calibration.json").read_text())["weights"]

    # A rerun reuses every cached embedding and applies the saved calibration.
    rerun = CountingEmbed(encoder_embedding_fn(encoder))
    again = run_verification(
        rerun, LOAD, "tiny", trial_lists, corpus / "wav", tmp_path, cohort_csv=corpus / "train.csv",
        qmf_calibration=tmp_path / "qmf_calibration.json", **SETTINGS,
    )
    assert rerun.calls == 0
    for name, conditions in results.items():
        for condition, metrics in conditions.items():
            assert again[name][condition] == pytest.approx(metrics, abs=1e-9)


def test_cosine_only_without_cohort(corpus, encoder, tmp_path):
    results = run_verification(
        encoder_embedding_fn(encoder), LOAD, "tiny", {"O": corpus / "veri_test2.txt"}, corpus / "wav",
        tmp_path,
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
        run_verification(embed, LOAD, "toy", {"O": missing}, corpus / "wav", tmp_path)
    assert "00009.wav" in str(error.value) and "id07/x/1.wav" in str(error.value)

    one_class = tmp_path / "targets.txt"
    one_class.write_text("1 id00/video/00000.wav id00/video/00001.wav\n")
    with pytest.raises(ValueError, match="needs both target .1. and non-target .0. trials"):
        run_verification(embed, LOAD, "toy", {"O": one_class}, corpus / "wav", tmp_path)

    bad = tmp_path / "bad.txt"
    bad.write_text("1 id00/video/00000.wav id00/video/00001.wav\n0 id00/video/00000.wav\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 3 fields"):
        run_verification(embed, LOAD, "toy", {"O": bad}, corpus / "wav", tmp_path)

    with pytest.raises(ValueError, match="protocol 'reference' embeds every utterance whole"):
        run_verification(
            embed, LOAD, "toy", {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path,
            cohort_csv=corpus / "train.csv", protocol="reference", cohort_utterances_per_speaker=20,
        )
    with pytest.raises(ValueError, match="protocol 'best' is unknown"):
        run_verification(
            embed, LOAD, "toy", {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path,
            protocol="best",
        )

    cohort = tmp_path / "cohort.csv"
    existing = corpus / "wav" / "id05" / "video" / "00000.wav"
    cohort.write_text(
        "ID,duration,wav,spk_id\n"
        f"a/v/1,1.0,{existing},a\nb/v/1,1.0,{tmp_path / 'nowhere.wav'},b\nc/v/1,1.0,{existing},c\n"
    )
    with pytest.raises(MissingAudioError, match="(?s)1 of 3 audio files are missing.*nowhere.wav"):
        run_verification(
            embed, LOAD, "toy", {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path,
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
    run_info = json.loads((output / "run_info.json").read_text())
    assert run_info["model"] == "my/model"
    assert run_info["model_key"] == model_fingerprint(encoder)  # the weights actually loaded


def exported_recipe_arguments(corpus, exported, output):
    """The verification recipe's command line for the exported tiny model."""
    return [
        str(ROOT / "hparams" / "verification.yaml"),
        f"--model={exported}",
        f"--data_folder={corpus / 'wav'}",
        f"--trials_folder={corpus}",
        "--trial_lists={E: null, H: null}",
        f"--cohort_csv={corpus / 'train.csv'}",
        f"--output_folder={output}",
        "--top_n=2",
        "--qmf_pairs=40",
        "--num_workers=0",
    ]


@pytest.fixture(scope="module")
def exported_run(corpus, encoder, tmp_path_factory):
    """The tiny encoder exported, and one recipe run (one process) on it."""
    from lap_speechbrain.export.folder import export_model
    from lap_speechbrain.nnet import SubCenterClassifier

    folder = tmp_path_factory.mktemp("exported_run")
    exported = export_model(
        folder / "exported",
        ssl_config=encoder.ssl_model.model.config.to_dict(),
        backend_config={"lap_channels": 16, "num_heads": 4, "embedding_dim": 8},
        embedding_state=encoder.state_dict(),
        classifier_state=SubCenterClassifier(8, 2).state_dict(),
        labels=["id04", "id05"],
        threshold=None,
    )
    load_recipe().main(exported_recipe_arguments(corpus, exported, folder / "out"))
    return exported, folder / "out"


def test_recipe_with_an_exported_model(corpus, encoder, exported_run, tmp_path):
    """End to end: the real load_encoder on an exported folder, no stand-ins."""
    _, output = exported_run
    exported_results = json.loads((output / "results.json").read_text())
    direct = run_verification(
        encoder_embedding_fn(encoder), LOAD, "direct", {"O": corpus / "veri_test2.txt"},
        corpus / "wav", tmp_path / "direct", cohort_csv=corpus / "train.csv", top_n=2,
        qmf_pairs=40, cohort_utterances_per_speaker=20, seed=1234,
    )
    # The exported model embeds as the in-memory encoder does: same metrics.
    assert exported_results["O"]["cosine"] == pytest.approx(direct["O"]["cosine"], abs=1e-6)


def assert_same_results(folder, expected_folder):
    """results.json of two runs: the same lists and conditions, the same error rates, thresholds close.

    The runs batch (and so pad) utterances differently, which moves embeddings
    by float32 rounding (~1e-6); AS-Norm divides scores by cohort stds of a
    few hundredths, so a threshold can move by ~1e-5. The rates are counts of
    trials on either side of the threshold: they must agree exactly.
    """
    results = json.loads((folder / "results.json").read_text())
    expected = json.loads((expected_folder / "results.json").read_text())
    assert {name: list(conditions) for name, conditions in results.items()} == {
        name: list(conditions) for name, conditions in expected.items()
    }
    for name, conditions in expected.items():
        for condition, metrics in conditions.items():
            thresholds = {key for key in metrics if key.endswith("threshold")}
            assert {key: value for key, value in results[name][condition].items() if key not in thresholds} == {
                key: value for key, value in metrics.items() if key not in thresholds
            }
            for key in thresholds:
                assert results[name][condition][key] == pytest.approx(metrics[key], abs=1e-4)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_log_file_that_cannot_be_written_does_not_bury_the_output(corpus, exported_run, tmp_path):
    """Attack table (issue 14): on a full disk SpeechBrain's log.txt handler printed "--- Logging error ---"
    tracebacks over the recipe's own message. A log.txt on /dev/full fails the same way."""
    import os
    import subprocess
    import sys

    exported, one = exported_run
    output = tmp_path / "logged"
    output.mkdir()
    (output / "log.txt").symlink_to("/dev/full")
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "speaker_verification.py")]
        + exported_recipe_arguments(corpus, exported, output),
        env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Logging error" not in result.stderr
    assert_same_results(output, one)


def test_two_processes_under_torchrun_give_the_results_of_one(corpus, exported_run, tmp_path):
    """Issue 13.2: torchrun shares the embedding work (one cache part per process); rank 0 scores."""
    import os
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is not installed next to the Python interpreter"
    exported, one = exported_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    two = tmp_path / "two"
    command = [torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "recipes" / "speaker_verification.py")]
    result = subprocess.run(
        command + exported_recipe_arguments(corpus, exported, two) + ["--distributed_backend=gloo"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert_same_results(two, one)
    # Each process wrote its part: the 12 trial utterances 6 + 6, the 15 cohort ones 8 + 7.
    (cache,) = (two / "embeddings").iterdir()
    parts = {rank: sorted(cache.glob(f"shard-00{rank}-*.npz")) for rank in (0, 1)}
    counts = {rank: sum(len(np.load(shard)["identities"]) for shard in shards) for rank, shards in parts.items()}
    assert counts == {0: 6 + 8, 1: 6 + 7}
    # Rank 1 interrupted: a rerun (one process) embeds only what its lost shards held.
    lost = {key for shard in parts[1] for key in np.load(shard)["identities"].tolist()}
    for shard in parts[1]:
        shard.unlink()
    load_recipe().main(exported_recipe_arguments(corpus, exported, two))
    redone = sorted(cache.glob("shard-000-*.npz"))[len(parts[0]):]
    assert {key for shard in redone for key in np.load(shard)["identities"].tolist()} == lost
    assert_same_results(two, one)


def test_rescoring_a_copy_of_the_data_embeds_it_again(corpus, tmp_path):
    """Issue 15.4: same relative paths, other audio, same output folder: never the old results."""
    copy = write_corpus(tmp_path / "copy", seed=1, voices=[3, 2, 1, 0, 4, 5, 6, 7, 8])
    trial_lists = {"O": corpus / "veri_test2.txt"}
    output = tmp_path / "out"
    first = run_verification(spectral_embed, LOAD, "m", trial_lists, corpus / "wav", output)
    embed = CountingEmbed(spectral_embed)
    again = run_verification(embed, LOAD, "m", trial_lists, copy / "wav", output)
    assert embed.rows == 12  # every trial utterance of the copy, none from the cache
    fresh = run_verification(spectral_embed, LOAD, "m", trial_lists, copy / "wav", tmp_path / "fresh")
    assert again == fresh and again != first
    run_info = json.loads((output / "run_info.json").read_text())
    assert run_info["data_folder"] == str((copy / "wav").resolve())
    listed = run_info["trial_lists"]["O"]
    assert listed["path"] == str((corpus / "veri_test2.txt").resolve())
    assert listed["sha1"] == __import__("hashlib").sha1((corpus / "veri_test2.txt").read_bytes()).hexdigest()


def test_temporaries_of_a_killed_run_are_removed_by_the_next(corpus, tmp_path):
    """Issue 14: a kill during evaluation left orphan temporaries that later runs never removed."""
    from test_fileio import kill_mid_write

    trial_lists = {"O": corpus / "veri_test2.txt"}
    clean = run_verification(spectral_embed, LOAD, "m", trial_lists, corpus / "wav", tmp_path / "clean")
    output = tmp_path / "out"
    (output / "model").mkdir(parents=True)  # e.g. a pretrained_savedir inside the output folder
    (cache,) = (tmp_path / "clean" / "embeddings").iterdir()
    shutil.copytree(cache, output / "embeddings" / cache.name)
    for shard in (output / "embeddings" / cache.name).glob("shard-*.npz"):
        shard.unlink()  # the kill came before the first shard landed
    orphans = [
        kill_mid_write(output / "results.json"),
        kill_mid_write(output / "det_O.png"),
        kill_mid_write(output / "model", "folder"),
        kill_mid_write(output / "embeddings" / cache.name / "shard-000-000000.npz"),
    ]
    assert all(orphan.exists() for orphan in orphans)
    again = run_verification(spectral_embed, LOAD, "m", trial_lists, corpus / "wav", output)
    assert again == clean
    assert not any(orphan.exists() for orphan in orphans)
    assert [p.name for p in output.rglob(".*")] == []  # nothing hidden is left


def test_trial_list_names_stay_inside_the_output_folder(corpus, tmp_path):
    """Issue 15.9: a list name is never a path."""
    output = tmp_path / "a" / "b" / "out"
    results = run_verification(
        spectral_embed, LOAD, "m", {"O/../../../escaped": corpus / "hard.txt"}, corpus / "wav", output
    )
    assert list(results) == ["O/../../../escaped"]
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert written and all(output in path.parents for path in written)
    assert (output / "det_O_.._.._.._escaped.png").is_file()
    with pytest.raises(ValueError, match="same DET plot file names"):
        run_verification(
            spectral_embed, LOAD, "m", {"a/b": corpus / "hard.txt", "a_b": corpus / "hard.txt"},
            corpus / "wav", output,
        )


def test_top_n_is_lowered_to_what_the_cohort_allows(corpus, tmp_path, caplog):
    """Issue 12: the default top_n (600) works on a 5-speaker cohort, with a logged note."""
    common = dict(cohort_csv=corpus / "train.csv", qmf_pairs=40, seed=3)
    trial_lists = {"O": corpus / "veri_test2.txt"}
    with caplog.at_level(logging.WARNING, logger="lap_speechbrain.scoring.verification"):
        lowered = run_verification(spectral_embed, LOAD, "m", trial_lists, corpus / "wav", tmp_path / "a", **common)
    assert "top_n=600 is more than the cohort of 5 speakers" in caplog.text and "using top_n=3" in caplog.text
    run_info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert (run_info["top_n"], run_info["top_n_requested"]) == (3, 600)
    explicit = run_verification(
        spectral_embed, LOAD, "m", trial_lists, corpus / "wav", tmp_path / "b", top_n=3, **common
    )
    assert lowered == explicit
    two_speakers = tmp_path / "two.csv"
    two_speakers.write_text("\n".join((corpus / "train.csv").read_text().splitlines()[:7]) + "\n")
    with pytest.raises(ValueError, match="has 2 speakers; AS-Norm with QMF needs at least 3"):
        run_verification(
            spectral_embed, LOAD, "m", trial_lists, corpus / "wav", tmp_path / "c", cohort_csv=two_speakers
        )


def test_non_finite_audio_stops_the_run_naming_the_file(corpus, tmp_path):
    """Issue 14: no NaN reaches a cache or a results file."""
    data = tmp_path / "wav"
    shutil.copytree(corpus / "wav", data)
    broken = data / "id01" / "video" / "00002.wav"
    samples, rate = soundfile.read(broken, dtype="float32")
    samples[10:20] = np.inf
    soundfile.write(broken, samples, rate, subtype="FLOAT")
    with pytest.raises(NonFiniteError, match=r"id01/video/00002.wav: 10 of \d+ samples are NaN or infinite"):
        run_verification(spectral_embed, LOAD, "m", {"O": corpus / "veri_test2.txt"}, data, tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()


def plain_reference_protocol(corpus, top_n, qmf_pairs, seed, qmf_regularization, qmf_max_iter):
    """The authors' evaluation written out per trial and per pair (float64, loops).

    Mean of all raw cohort embeddings; cohort = per-speaker means of raw
    embeddings minus that mean; AS-Norm over the top N cohort cosines with the
    sample std; QMF: liblinear logistic regression on the raw 9 features of
    pairs scored against the cohort without the pair's speakers; EER = the
    larger rate where |FAR - FRR| is smallest on sklearn's ROC curve.
    """
    from sklearn.metrics import roc_curve

    def embed_file(path):
        wav = torch.as_tensor(soundfile.read(path, dtype="float32")[0])
        return spectral_embed(wav[None], torch.ones(1))[0].double().numpy(), len(wav) / SAMPLE_RATE

    rows = list(csv.DictReader(open(corpus / "train.csv")))
    cohort = [embed_file(row["wav"]) for row in rows]
    speakers = [row["spk_id"] for row in rows]
    mean = np.mean([vector for vector, _ in cohort], axis=0)
    names = sorted(set(speakers))
    speaker_vectors = {
        name: np.mean([v for (v, _), s in zip(cohort, speakers) if s == name], axis=0) - mean for name in names
    }

    def cosine(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    def normalized_score(e, t, excluded=()):
        others = [speaker_vectors[name] for name in names if name not in excluded]
        score = cosine(e - mean, t - mean)
        sides = []
        for side in (e, t):
            top = np.sort([cosine(side - mean, other) for other in others])[::-1][:top_n]
            sides.append((score - top.mean()) / top.std(ddof=1))
        return sum(sides) / 2

    def features(e, t, duration_e, duration_t, excluded=()):
        return [
            normalized_score(e, t, excluded), np.log(duration_e), np.log(duration_t),
            np.abs(e).sum(), np.abs(t).sum(), np.linalg.norm(e), np.linalg.norm(t), e.std(), t.std(),
        ]

    first, second, labels = sample_training_pairs(speakers, qmf_pairs, seed, nontargets_by="speaker")
    train = [
        features(cohort[a][0], cohort[b][0], cohort[a][1], cohort[b][1], {speakers[a], speakers[b]})
        for a, b in zip(first, second)
    ]
    qmf = LogisticRegression(C=qmf_regularization, max_iter=qmf_max_iter, random_state=seed, solver="liblinear")
    qmf.fit(np.array(train), labels)

    trials = [line.split() for line in (corpus / "veri_test2.txt").read_text().splitlines()]
    trial_labels = np.array([int(label) for label, _, _ in trials])
    table = {u: embed_file(corpus / "wav" / u) for _, e, t in trials for u in (e, t)}
    scores = {
        "cosine (reference)": [cosine(table[e][0] - mean, table[t][0] - mean) for _, e, t in trials],
        "AS-Norm (reference)": [normalized_score(table[e][0], table[t][0]) for _, e, t in trials],
        "AS-Norm + QMF (reference)": qmf.decision_function(
            np.array([features(table[e][0], table[t][0], table[e][1], table[t][1]) for _, e, t in trials])
        ),
    }
    metrics = {}
    for condition, values in scores.items():
        values = np.asarray(values)
        p_fa, p_hit, _ = roc_curve(trial_labels, values)
        best = np.argmin(np.abs((1 - p_hit) - p_fa))
        # minDCF over every threshold at a trial's score, one trial at a time.
        dcfs = {}
        for p_target in (0.01, 0.05):
            costs = []
            for threshold in np.concatenate([values, [np.inf]]):
                p_miss = np.mean(values[trial_labels == 1] < threshold)
                false_alarm = np.mean(values[trial_labels == 0] >= threshold)
                costs.append(p_target * p_miss + (1 - p_target) * false_alarm)
            dcfs[f"min_dcf_{p_target:g}"] = min(costs) / min(p_target, 1 - p_target)
        metrics[condition] = {"eer": max(p_fa[best], 1 - p_hit[best]), **dcfs}
    return scores, metrics


def capture_scores(monkeypatch):
    """Records the per-trial scores that the verification run evaluates, in order."""
    from lap_speechbrain.scoring import verification

    captured = []

    def evaluate(scores, labels, p_targets, eer_rule):
        captured.append(np.asarray(scores, dtype=np.float64))
        return evaluate_scores(scores, labels, p_targets, eer_rule)

    evaluate_scores = verification.evaluate_scores
    monkeypatch.setattr(verification, "evaluate_scores", evaluate)
    return captured


def test_reference_protocol_equals_a_plain_per_trial_implementation(corpus, tmp_path, monkeypatch):
    """Issue 10.9: protocol: reference computes what the authors' evaluate/ code computes."""
    settings = dict(top_n=3, qmf_pairs=60, seed=5, qmf_regularization=0.5, qmf_max_iter=200)
    captured = capture_scores(monkeypatch)
    results = run_verification(
        spectral_embed, LOAD, "m", {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path,
        protocol="reference", cohort_csv=corpus / "train.csv", **settings,
    )
    expected_scores, expected = plain_reference_protocol(corpus, **settings)
    assert list(results["O"]) == list(expected)
    # float32 embeddings vs float64 loops; QMF also differs within liblinear's tolerance (1e-4).
    for ours, (condition, theirs), tolerance in zip(captured, expected_scores.items(), (1e-6, 1e-5, 1e-4)):
        np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=tolerance, err_msg=condition)
    for condition, metrics in expected.items():
        for name, value in metrics.items():
            assert results["O"][condition][name] == pytest.approx(value, abs=1e-9), (condition, name)
    # The default protocol scores differently (cohort, std, QMF fit).
    captured.clear()
    run_verification(
        spectral_embed, LOAD, "m", {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path / "default",
        cohort_csv=corpus / "train.csv", **settings,
    )
    for ours, (condition, theirs) in list(zip(captured, expected_scores.items()))[1:]:
        assert np.abs(ours - np.asarray(theirs)).max() > 1e-3, condition
    assert (tmp_path / "results.md").read_text().startswith("Scoring protocol: reference (")
    assert json.loads((tmp_path / "run_info.json").read_text())["protocol"] == "reference"
    calibration = json.loads((tmp_path / "qmf_calibration.json").read_text())
    assert (calibration["solver"], calibration["standardize"]) == ("liblinear", False)
    # A calibration fitted under one protocol is refused by the other.
    with pytest.raises(ValueError, match="was fitted with solver=liblinear, standardize=False"):
        run_verification(
            spectral_embed, LOAD, "m", {"O": corpus / "veri_test2.txt"}, corpus / "wav", tmp_path / "e",
            cohort_csv=corpus / "train.csv", qmf_calibration=tmp_path / "qmf_calibration.json", **settings,
        )


def export_encoder(encoder, folder):
    from lap_speechbrain.export.folder import export_model
    from lap_speechbrain.nnet import SubCenterClassifier

    return export_model(
        folder,
        ssl_config=encoder.ssl_model.model.config.to_dict(),
        backend_config={"lap_channels": 16, "num_heads": 4, "embedding_dim": 8},
        embedding_state=encoder.state_dict(),
        classifier_state=SubCenterClassifier(8, 2).state_dict(),
        labels=["id04", "id05"],
        threshold=0.5,
    )


def test_two_models_scored_into_one_output_folder(corpus, encoder, tmp_path):
    """Issue 15.3: run B into run A's output folder scores B's weights and records B's fingerprint."""
    import copy

    from lap_speechbrain.inference import load_encoder

    other = copy.deepcopy(encoder)
    with torch.no_grad():
        for parameter in other.backend.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model_a = export_encoder(encoder, tmp_path / "a")
    model_b = export_encoder(other, tmp_path / "b")
    recipe = load_recipe()

    def score(model, output):
        recipe.main([
            str(ROOT / "hparams" / "verification.yaml"), f"--model={model}", f"--data_folder={corpus / 'wav'}",
            f"--trials_folder={corpus}", "--trial_lists={E: null, H: null}", f"--output_folder={output}",
            "--num_workers=0",
        ])
        return json.loads((output / "results.json").read_text()), json.loads((output / "run_info.json").read_text())

    score(model_a, tmp_path / "shared")
    shared_results, shared_info = score(model_b, tmp_path / "shared")
    fresh_results, fresh_info = score(model_b, tmp_path / "fresh")
    assert shared_info["model_key"] == model_fingerprint(load_encoder(model_b))
    assert shared_info["model_key"] == fresh_info["model_key"]
    assert shared_results == fresh_results


def test_readme_command_reproduces_the_demo_table(corpus, tmp_path, monkeypatch):
    """Issue 12: the README's command re-scores the demo's outputs into the same table."""
    # The demo's layout: results/demo/synthetic_corpus/{audio/test, test_trials.txt, manifests/train.csv}.
    demo_corpus = tmp_path / "synthetic_corpus"
    (demo_corpus / "audio").mkdir(parents=True)
    (demo_corpus / "audio" / "test").symlink_to(corpus / "wav")
    shutil.copy(corpus / "veri_test2.txt", demo_corpus / "test_trials.txt")
    (demo_corpus / "manifests").mkdir()
    shutil.copy(corpus / "train.csv", demo_corpus / "manifests" / "train.csv")
    demo_output = tmp_path / "1986"

    def fake_load_encoder(source, savedir=None, device="cpu"):
        assert Path(source) == demo_output
        return SpectralEncoder()

    # The demo's evaluation: the `evaluation:` section of hparams/demo.yaml, as finish() runs it.
    demo_yaml = (ROOT / "hparams" / "demo.yaml").read_text()
    section = re.search(r"^evaluation:\n(?:    .*\n|\s*#.*\n)+", demo_yaml, re.MULTILINE).group(0)
    evaluation = load_hyperpyyaml(
        f"data_folder: {demo_corpus}\noutput_folder: {demo_output}\nseed: 1986\nsample_rate: 16000\n" + section
    )
    train_recipe = load_recipe("train_speaker_embeddings")
    monkeypatch.setattr(train_recipe, "load_encoder", fake_load_encoder)
    hparams = {
        "evaluation": evaluation["evaluation"], "output_folder": str(demo_output), "save_folder": str(demo_output / "save"),
        "train_log": str(demo_output / "train_log.txt"), "mfcc_baseline": False, "export_folder": None,
        "verify_examples": 0, "data_prep": "synthetic",
    }
    train_recipe.finish(hparams, {"device": "cpu"})

    readme = (ROOT / "README.md").read_text()
    command = re.search(
        r"^(python recipes/speaker_verification\.py hparams/verification\.yaml --model=results/demo/1986 .*?)\n```",
        readme, re.MULTILINE | re.DOTALL,
    ).group(1)
    arguments = shlex.split(command.replace("\\\n", " "))[2:]
    arguments = [
        argument.replace("results/demo/synthetic_corpus", str(demo_corpus)).replace("results/demo/1986", str(demo_output))
        for argument in arguments
    ]
    recipe = load_recipe()
    monkeypatch.setattr(recipe, "load_encoder", fake_load_encoder)
    recipe.main(arguments)
    rescored = json.loads((demo_output / "evaluation_again" / "results.json").read_text())
    assert rescored == json.loads((demo_output / "evaluation" / "results.json").read_text())
    assert list(rescored["test"]) == ["cosine", "AS-Norm", "AS-Norm + QMF"]


def test_a_second_run_on_an_output_folder_in_use_stops_at_once(corpus, tmp_path):
    """Issue 15.8: two scoring runs on one output folder; the second stops before loading or writing."""
    from lap_speechbrain.fileio import FolderInUseError, FolderLock

    output = tmp_path / "out"
    with FolderLock(output):  # the first run, still scoring
        with pytest.raises(FolderInUseError, match=re.escape(str(output))):
            load_recipe().main([
                str(ROOT / "hparams" / "verification.yaml"), "--model=never/loaded",
                f"--data_folder={corpus / 'wav'}", f"--trials_folder={corpus}", f"--output_folder={output}",
            ])
    assert sorted(path.name for path in output.iterdir()) == [".lock"]


def test_a_full_disk_names_the_output_folder(corpus, tmp_path, monkeypatch):
    """Attack table (issue 14): SpeechBrain's own writes said only "[Errno 28] No space left on device"."""
    import errno

    from lap_speechbrain.fileio import NoSpaceLeftError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    recipe = load_recipe()
    monkeypatch.setattr(recipe.sb, "create_experiment_directory", full)
    output = tmp_path / "out"
    with pytest.raises(NoSpaceLeftError, match=rf"no space left on {re.escape(str(output))}"):
        recipe.main([
            str(ROOT / "hparams" / "verification.yaml"), "--model=never/loaded",
            f"--data_folder={corpus / 'wav'}", f"--trials_folder={corpus}", f"--output_folder={output}",
        ])
