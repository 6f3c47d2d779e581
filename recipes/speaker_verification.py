#!/usr/bin/env python3
"""Scores speaker-verification trial lists with a trained model.

Embeds every utterance of the trial lists (and of the training cohort) once,
then reports EER and minDCF (p_target 0.01 and 0.05) for cosine, AS-Norm and
AS-Norm + QMF scoring on each list: ``results.md``, ``results.json``,
``run_info.json`` and ``det_<list>.png`` in the output folder. ``protocol``
chooses the project's default scoring or the authors' reference evaluation
(:mod:`lap_speechbrain.scoring.protocol`). See docs/lap_spec.md section 6 and
:func:`lap_speechbrain.scoring.run_verification`.

To run::

    python recipes/speaker_verification.py hparams/verification.yaml \\
        --model=results/lap_wavlm/1986 --data_folder=/data/voxceleb1/wav \\
        --cohort_csv=results/lap_wavlm/1986/save/train.csv

With ``torchrun --nproc_per_node=N`` (and ``--distributed_backend=gloo`` on
CPU) the N processes share the embedding work, each writing its part of the
embedding cache, and the main process scores and writes the results.

Authors
 * lap-speechbrain contributors 2026
"""

import contextlib
import functools
import logging
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from lap_speechbrain.fileio import FolderLock, reporting_full_disk
from lap_speechbrain.inference import load_audio, load_encoder
from lap_speechbrain.known_warnings import filter_known_warnings
from lap_speechbrain.scoring import (
    encoder_embedding_fn,
    markdown_table,
    model_fingerprint,
    run_verification,
)


def main(argv):
    """Parses the command line, loads the model and scores the trial lists."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    # One run per output folder: a second one stops here, before writing anything.
    # The main process holds the lock for all processes of a torchrun group.
    lock = FolderLock(hparams["output_folder"]) if if_main_process() else contextlib.nullcontext()
    # A full disk is named as such, with the folder (SpeechBrain's writes say neither).
    with lock, reporting_full_disk(hparams["output_folder"]):
        score(hparams, hparams_file, overrides, run_opts)


def score(hparams: dict, hparams_file: str, overrides: str, run_opts: dict) -> None:
    """Loads the model and scores the trial lists into the (locked) output folder."""
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    device = run_opts.get("device") or "cpu"
    # The main process fetches a hub model into pretrained_savedir first; the
    # others then read it from the Hugging Face cache, so no two write the folder.
    if if_main_process():
        encoder = load_encoder(hparams["model"], savedir=hparams["pretrained_savedir"], device=device)
    ddp_barrier()
    if not if_main_process():
        encoder = load_encoder(hparams["model"], device=device)
    results = run_verification(
        encoder_embedding_fn(encoder),
        functools.partial(load_audio, target_sample_rate=hparams["sample_rate"]),
        # The weights actually loaded key the embedding cache and run_info.json.
        cache_key=model_fingerprint(encoder),
        model=hparams["model"],
        trial_lists=hparams["trial_lists"],
        data_folder=hparams["data_folder"],
        output_folder=hparams["output_folder"],
        protocol=hparams["protocol"],
        cohort_csv=hparams["cohort_csv"],
        cohort_utterances_per_speaker=hparams["cohort_utterances_per_speaker"],
        top_n=hparams["top_n"],
        qmf_pairs=hparams["qmf_pairs"],
        qmf_regularization=hparams["qmf_regularization"],
        qmf_max_iter=hparams["qmf_max_iter"],
        qmf_calibration=hparams["qmf_calibration"],
        p_targets=hparams["p_targets"],
        as_norm_chunk_size=hparams["as_norm_chunk_size"],
        seed=hparams["seed"],
        batch_size=hparams["batch_size"],
        max_batch_seconds=hparams["max_batch_seconds"],
        max_chunk_seconds=hparams["max_chunk_seconds"],
        num_workers=hparams["num_workers"],
        sample_rate=hparams["sample_rate"],
        device=device,
    )
    if results is not None:  # the main process
        print(markdown_table(results, hparams["p_targets"]))


if __name__ == "__main__":
    filter_known_warnings()
    # A log.txt that cannot be written (a full disk) must not bury the run's own error
    # under "--- Logging error ---" tracebacks; the console still shows every record.
    logging.raiseExceptions = False
    main(sys.argv[1:])
