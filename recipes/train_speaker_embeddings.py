#!/usr/bin/env python3
"""Recipe: trains LAP speaker embeddings on all hidden states of an SSL model (WavLM).

The stages of ``hparams/lap_wavlm.yaml`` (lap_spec.md section 5) run in order:
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

from lap_speechbrain.data import prepare_custom_corpus, prepare_noise_csvs, prepare_voxceleb
from lap_speechbrain.training.stages import run_stages


def prepare_data(hparams: dict) -> dict:
    """Writes the training/validation manifests and trials; returns their paths."""
    common = dict(
        save_folder=hparams["save_folder"],
        num_valid_speakers=hparams["num_valid_speakers"],
        num_valid_trials=hparams["num_valid_trials"],
        seed=hparams["prep_seed"],
        min_duration=hparams["min_duration"],
        num_workers=hparams["prep_workers"],
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
    raise ValueError(f"data_prep={hparams['data_prep']!r}; expected 'voxceleb' or 'custom'")


def check_noise_sources(hparams: dict) -> None:
    """Fails before the (long) data preparation if a stage augments but no noise folder is named."""
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
    check_noise_sources(hparams)
    data = on_main(prepare_data, hparams)
    noise_csvs = on_main(prepare_noise, hparams)
    run_stages(
        hparams,
        run_opts,
        data=data,
        label_encoder_path=data["label_encoder"],
        wav_augment=make_augmentation(hparams, noise_csvs),
    )
