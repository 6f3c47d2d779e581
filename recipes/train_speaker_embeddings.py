#!/usr/bin/env python3
"""Recipe: trains LAP speaker embeddings on all hidden states of an SSL model (WavLM).

The stages of ``hparams/lap_wavlm.yaml`` (docs/lap_spec.md section 5) run in order:
``frozen`` (WavLM frozen; LAP, pooling and classifier train), ``joint`` (all
parameters) and ``lmft`` (large-margin fine-tuning, optional), each starting
from the previous stage's checkpoint with the best validation EER. Data
preparation (VoxCeleb or a custom corpus, MUSAN/RIR CSVs) runs on the main
process. Killed at any moment, the same command resumes where it stopped.
The trained model ends up in ``<output_folder>/save/model/``.

To run (one process, or N GPUs):
    python recipes/train_speaker_embeddings.py hparams/lap_wavlm.yaml \\
        --data_folder=/data/voxceleb --musan_folder=/data/musan --rir_folder=/data/RIRS_NOISES
    torchrun --nproc_per_node=4 recipes/train_speaker_embeddings.py hparams/lap_wavlm.yaml ...

Authors
 * lap-speechbrain contributors 2026
"""

import sys
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process

from lap_speechbrain.data import (
    prepare_custom_corpus,
    prepare_noise_csvs,
    prepare_voxceleb,
)
from lap_speechbrain.demo.finish import mfcc_baseline_results, verify_examples
from lap_speechbrain.demo.synthetic import prepare_synthetic_corpus
from lap_speechbrain.export.folder import export_training_output
from lap_speechbrain.scoring import evaluate_model, markdown_table
from lap_speechbrain.training.stages import run_stages

NOISE_KINDS = ("noise", "music", "babble", "rir")


def prepare_data(hparams: dict) -> dict:
    """Writes the training/validation manifests and trials; returns their paths."""
    if hparams["data_prep"] == "synthetic":
        return prepare_synthetic_corpus(hparams["data_folder"], **hparams["synthetic_corpus"])
    common = dict(
        save_folder=hparams["save_folder"],
        num_valid_speakers=hparams["num_valid_speakers"],
        num_valid_trials=hparams["num_valid_trials"],
        seed=hparams["prep_seed"],
        min_duration=hparams["min_duration"],
        num_workers=hparams["prep_workers"],
        valid_trial_list=hparams["valid_trial_list"],
    )
    if hparams["data_prep"] == "voxceleb":
        return prepare_voxceleb(
            vox1_folder=hparams["vox1_folder"],
            vox2_folder=hparams["vox2_folder"],
            trial_lists=hparams["test_trial_lists"],
            train_sets=hparams["train_sets"],
            **common,
        )
    if hparams["data_prep"] == "custom":
        return prepare_custom_corpus(data_folder=hparams["data_folder"], **common)
    raise ValueError(
        f"data_prep={hparams['data_prep']!r}; expected 'voxceleb', 'custom' or 'synthetic'"
    )


def check_settings(hparams: dict) -> None:
    """Fails before the (long) data preparation on settings that cannot work.

    A stage that augments needs noise folders (the synthetic corpus brings its
    own), and verifying examples needs the evaluation lists and an export.
    """
    if hparams["verify_examples"] and not (hparams["evaluation"] and hparams["export_folder"]):
        raise ValueError("verify_examples needs an evaluation section (its first trial list) and export_folder")
    if hparams["data_prep"] == "synthetic":
        return
    augmenting = [name for name in hparams["run_stages"] if hparams[name]["augment"]]
    if augmenting and not (hparams["musan_folder"] or hparams["rir_folder"] or hparams["noise_folders"]):
        raise ValueError(
            f"stages {augmenting} use augmentation (augment: True) but musan_folder, rir_folder and "
            "noise_folders are all unset: pass --musan_folder=... --rir_folder=..., or turn it off "
            f"with e.g. --{augmenting[0]}=\"{{augment: False}}\""
        )


def prepare_noise(hparams: dict) -> dict:
    """Writes the noise/RIR CSVs of the folders the yaml names ({} if none)."""
    if not (hparams["musan_folder"] or hparams["rir_folder"] or hparams["noise_folders"]):
        return {}
    return prepare_noise_csvs(
        Path(hparams["save_folder"]) / "noise",
        musan_folder=hparams["musan_folder"],
        rir_folder=hparams["rir_folder"],
        noise_folders=hparams["noise_folders"],
        sample_rate=hparams["sample_rate"],
    )


def on_main(function, hparams: dict):
    """Runs ``function(hparams)`` on the main process only and shares its result."""
    result = function(hparams) if if_main_process() else None
    ddp_barrier()
    return ddp_broadcast(result)


def make_augmentation(hparams: dict, noise_csvs: dict):
    """One-corruption-per-utterance augmentation over the prepared kinds (None if none)."""
    corruptions = {
        kind: build(csv_file=noise_csvs[kind])
        for kind, build in hparams["corruptions"].items()
        if kind in noise_csvs
    }
    if not corruptions:
        return None
    partial = [kind for kind in hparams["wav_augment"].keywords["partial"] if kind in corruptions]
    return hparams["wav_augment"](corruptions=corruptions, partial=partial)


def finish(hparams: dict, run_opts: dict) -> None:
    """The optional steps after training: evaluate, compare, export, verify, summarise."""
    outputs = {"training log": hparams["train_log"], "trained model": f"{hparams['save_folder']}/model"}
    evaluation = hparams["evaluation"]
    if evaluation:
        device = run_opts.get("device") or "cpu"
        results = evaluate_model(hparams["output_folder"], evaluation, device=device)
        print(markdown_table(results, evaluation["p_targets"]))
        outputs["evaluation"] = f"{evaluation['output_folder']}/results.md"
        if hparams["mfcc_baseline"]:
            baseline = mfcc_baseline_results(
                evaluation["trial_lists"], evaluation["data_folder"], evaluation["p_targets"]
            )
            print("Same trials, no training:")
            print(markdown_table(baseline, evaluation["p_targets"]))
    if hparams["export_folder"]:
        results_file = Path(evaluation["output_folder"]) / "results.json" if evaluation else None
        export_training_output(
            hparams["output_folder"],
            hparams["export_folder"],
            results=results_file,
            overwrite=True,
            datasets=["voxceleb"] if hparams["data_prep"] == "voxceleb" else [],
        )
        outputs["exported model"] = hparams["export_folder"]
    if hparams["verify_examples"]:
        trial_list = next(iter(evaluation["trial_lists"].values()))
        for label, enrol, test, score, same in verify_examples(
            hparams["export_folder"], trial_list, evaluation["data_folder"], hparams["verify_examples"]
        ):
            truth = "same speaker" if label else "different speakers"
            print(f"verify_files {enrol} {test}: score {score:.3f}, decision {same} ({truth})")
    print("Outputs:")
    for name, path in outputs.items():
        print(f"  {name}: {path}")


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    check_settings(hparams)
    data = on_main(prepare_data, hparams)
    if hparams["data_prep"] == "synthetic":  # the corpus brings its own noise and RIRs
        noise_csvs = {kind: data[kind] for kind in NOISE_KINDS if kind in data}
    else:
        noise_csvs = on_main(prepare_noise, hparams)
    run_stages(
        hparams,
        run_opts,
        data=data,
        label_encoder_path=data["label_encoder"],
        wav_augment=make_augmentation(hparams, noise_csvs),
    )
    if if_main_process():
        finish(hparams, run_opts)
