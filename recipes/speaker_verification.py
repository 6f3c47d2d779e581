#!/usr/bin/env python3
"""Scores speaker-verification trial lists with a trained model.

Embeds every utterance of the trial lists (and of the training cohort) once,
then reports EER and minDCF (p_target 0.01 and 0.05) for cosine, AS-Norm and
AS-Norm + QMF scoring on each list: ``results.md``, ``results.json`` and
``det_<list>.png`` in the output folder. See docs/lap_spec.md section 6 and
:func:`lap_speechbrain.scoring.run_verification`.

To run::

    python recipes/speaker_verification.py hparams/verification.yaml \\
        --model=results/lap_wavlm/1986 --data_folder=/data/voxceleb1/wav \\
        --cohort_csv=results/lap_wavlm/1986/save/train.csv

Authors
 * lap-speechbrain contributors 2026
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from lap_speechbrain.scoring import evaluate_model, markdown_table


def main(argv):
    """Parses the command line, loads the model and scores the trial lists."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    results = evaluate_model(hparams["model"], hparams, device=run_opts.get("device") or "cpu")
    print(markdown_table(results, hparams["p_targets"]))


if __name__ == "__main__":
    main(sys.argv[1:])
