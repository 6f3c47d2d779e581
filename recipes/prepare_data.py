#!/usr/bin/env python3
"""Runs the data preparations stand-alone (the training recipe calls the same functions).

Each sub-command calls one function of ``lap_speechbrain.data`` and prints the
paths it wrote as json; options left out take the function's defaults. Every
preparation is idempotent: run again with the same options on unchanged
folders, it returns at once.

Usage::

    python recipes/prepare_data.py voxceleb --save_folder results/data/voxceleb \\
        --vox1_folder /data/voxceleb1/wav --vox2_folder /data/voxceleb2/dev/aac \\
        --trial_lists /data/voxceleb1/veri_test2.txt /data/voxceleb1/list_test_all2.txt \\
                      /data/voxceleb1/list_test_hard2.txt
    python recipes/prepare_data.py custom --data_folder /data/my_corpus \\
        --save_folder results/data/my_corpus --num_valid_speakers 20 --num_valid_trials 4000
    python recipes/prepare_data.py noise --save_folder results/data/noise \\
        --musan_folder /data/musan --rir_folder /data/RIRS_NOISES

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import json
import logging
import sys
from typing import Dict, List, Optional

from lap_speechbrain.data import (
    prepare_custom_corpus,
    prepare_noise_csvs,
    prepare_voxceleb,
)


def _key_value(text: str) -> Dict[str, str]:
    kind, sep, folder = text.partition("=")
    if not sep or not kind or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND=FOLDER, e.g. noise=/data/noises")
    return {kind: folder}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface: one sub-command per preparation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # SUPPRESS: an option left out is not passed, so the function's default applies.
    option = dict(default=argparse.SUPPRESS)

    vox = commands.add_parser("voxceleb", help="VoxCeleb1/2 manifests and trial lists")
    vox.add_argument("--save_folder", required=True)
    vox.add_argument("--vox1_folder", **option, help="VoxCeleb1 dev+test: <speaker>/<video>/<utt>.wav")
    vox.add_argument("--vox2_folder", **option, help="VoxCeleb2 dev: <speaker>/<video>/<utt>.m4a or .wav")
    vox.add_argument("--trial_lists", nargs="*", **option, help="trial list files (default: cleaned O/E/H in vox1_folder)")
    vox.add_argument("--train_sets", nargs="+", choices=("vox1", "vox2"), **option)
    vox.add_argument("--num_valid_speakers", type=int, **option)
    vox.add_argument("--num_valid_trials", type=int, **option)
    vox.add_argument("--seed", type=int, **option)
    vox.add_argument("--min_duration", type=float, **option)
    vox.add_argument("--valid_trial_list", **option,
                     help="select checkpoints on this trial list (e.g. veri_test2.txt) instead of held-out speakers")
    vox.add_argument("--vox2_wav_folder", **option, help="where converted VoxCeleb2 wavs go")
    vox.add_argument("--ffmpeg", **option, help="ffmpeg executable for the .m4a conversion")
    vox.add_argument("--num_workers", type=int, **option)
    vox.set_defaults(function=prepare_voxceleb)

    custom = commands.add_parser("custom", help="a corpus laid out as <root>/<speaker>/**/*.{wav,flac}")
    custom.add_argument("--data_folder", required=True)
    custom.add_argument("--save_folder", required=True)
    custom.add_argument("--num_valid_speakers", type=int, **option)
    custom.add_argument("--num_valid_trials", type=int, **option)
    custom.add_argument("--seed", type=int, **option)
    custom.add_argument("--min_duration", type=float, **option)
    custom.add_argument("--extensions", nargs="+", **option)
    custom.add_argument("--num_workers", type=int, **option)
    custom.add_argument("--valid_trial_list", **option,
                        help="your own validation trial list (paths relative to data_folder) instead of a drawn one")
    custom.set_defaults(function=prepare_custom_corpus)

    noise = commands.add_parser("noise", help="MUSAN / RIRS_NOISES / other folders -> AddNoise/AddReverb CSVs")
    noise.add_argument("--save_folder", required=True)
    noise.add_argument("--musan_folder", **option)
    noise.add_argument("--rir_folder", **option)
    noise.add_argument(
        "--noise_folders", nargs="+", type=_key_value, **option,
        help="KIND=FOLDER pairs, KIND among noise, music, babble, rir",
    )
    noise.add_argument("--sample_rate", type=int, **option)
    noise.set_defaults(function=prepare_noise_csvs)
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Parses ``argv``, runs the preparation, prints and returns its outputs."""
    arguments = vars(build_parser().parse_args(argv))
    function = arguments.pop("function")
    arguments.pop("command")
    if "noise_folders" in arguments:
        arguments["noise_folders"] = {k: v for pair in arguments["noise_folders"] for k, v in pair.items()}
    outputs = function(**arguments)
    print(json.dumps(outputs, indent=2))
    return outputs


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        # Bad input: one clear line instead of a traceback.
        sys.exit(f"error: {error}")
