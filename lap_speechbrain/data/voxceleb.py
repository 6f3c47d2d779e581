"""VoxCeleb1 / VoxCeleb2 preparation from folders the user already has.

Expected layout (as unpacked from the official archives): VoxCeleb1 dev and test
merged into one folder ``<vox1>/<speaker>/<video>/<utt>.wav``; VoxCeleb2 dev as
``<vox2>/<speaker>/<video>/<utt>.m4a`` (the ``dev/aac`` folder) or already
converted to wav. The ``.m4a`` files are converted once to 16 kHz mono wav
with ffmpeg. The cleaned trial lists (O: ``veri_test2.txt``, E:
``list_test_all2.txt``, H: ``list_test_hard2.txt``) are read from files the
user provides, checked against the VoxCeleb1 folder and copied to the save folder.

Authors
 * lap-speechbrain contributors 2026
"""

import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from tqdm import tqdm

from lap_speechbrain.data.custom import hold_out_speakers, validation_trials
from lap_speechbrain.data.manifest import (
    PathLike,
    file_fingerprint,
    find_audio_files,
    folder_fingerprint,
    is_prepared,
    mark_prepared,
    require_folder,
    require_outside,
    scan_audio,
    speaker_encoder,
    walk_once,
    write_csv,
)
from lap_speechbrain.data.trials import Trial, read_trials, write_trials

logger = logging.getLogger(__name__)

DEFAULT_TRIAL_LISTS = ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")
TRAIN_SETS = ("vox1", "vox2")
# Listing the missing utterances in the error itself stays readable up to this many.
_MAX_LISTED = 20


class MissingDecoderError(RuntimeError):
    """No program to decode VoxCeleb2's AAC (``.m4a``) files was found."""


def find_ffmpeg(ffmpeg: Optional[str] = None) -> str:
    """Locates an ffmpeg executable to decode ``.m4a`` files.

    libsndfile (soundfile, also behind ``speechbrain.dataio.audio_io``)
    cannot decode AAC, so conversion calls ffmpeg: the given one, else
    ``ffmpeg`` on ``PATH``, else the binary bundled with the ``imageio-ffmpeg``
    package.

    Arguments
    ---------
    ffmpeg : str, optional
        Path or name of an ffmpeg executable.

    Returns
    -------
    str
        The executable.

    Raises
    ------
    MissingDecoderError
        If none is found; the message says what to install.
    """
    if ffmpeg is not None:
        found = shutil.which(ffmpeg)
        if found is None:
            raise MissingDecoderError(f"ffmpeg executable not found or not executable: {ffmpeg}")
        return found
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise MissingDecoderError(
            "VoxCeleb2 .m4a (AAC) files must be converted to wav, which needs ffmpeg: "
            "soundfile/libsndfile cannot decode AAC. Install it with `apt-get install ffmpeg` "
            "(or `conda install ffmpeg`, or `pip install imageio-ffmpeg`), or pass the path of an "
            "ffmpeg executable (ffmpeg=...), or convert the files to wav yourself and pass that folder."
        ) from None


def _convert_one(ffmpeg: str, source: Path, target: Path, sample_rate: int) -> Optional[str]:
    """Converts one file to 16-bit mono wav; returns an error message or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp.wav")
    command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
               "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", str(temp)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not temp.is_file():
        temp.unlink(missing_ok=True)
        return (result.stderr.strip().splitlines() or [f"ffmpeg exit code {result.returncode}"])[-1]
    os.replace(temp, target)  # a killed conversion never leaves a half-written wav
    return None


def convert_m4a_to_wav(
    source_folder: PathLike,
    target_folder: PathLike,
    ffmpeg: Optional[str] = None,
    sample_rate: int = 16000,
    num_workers: Optional[int] = None,
) -> Path:
    """Converts every ``.m4a`` under ``source_folder`` to a wav at the same relative path.

    Files already converted are kept, so an interrupted conversion resumes.
    Files ffmpeg cannot decode are skipped with one warning each and a count.

    Arguments
    ---------
    source_folder : str or Path
        Tree of ``.m4a`` files (VoxCeleb2 ``dev/aac``).
    target_folder : str or Path
        Where the wav tree goes.
    ffmpeg : str, optional
        ffmpeg executable (see :func:`find_ffmpeg`).
    sample_rate : int
        Output sample rate.
    num_workers : int, optional
        Parallel ffmpeg processes (default: number of CPUs).

    Returns
    -------
    Path
        ``target_folder``.
    """
    source_folder = require_folder(source_folder, "VoxCeleb2 folder")
    target_folder = Path(target_folder).absolute()
    jobs = []
    for source in map(Path, find_audio_files(source_folder, (".m4a",))):
        target = target_folder / source.relative_to(source_folder).with_suffix(".wav")
        if not target.exists():
            jobs.append((source, target))
    if not jobs:
        return target_folder
    executable = find_ffmpeg(ffmpeg)
    logger.info("Converting %d .m4a files to wav in %s with %s", len(jobs), target_folder, executable)
    failed = 0
    with ThreadPoolExecutor(max_workers=num_workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda job: _convert_one(executable, *job, sample_rate), jobs)
        for (source, _), error in zip(jobs, tqdm(results, total=len(jobs), desc="Converting m4a", unit="file")):
            if error is not None:
                failed += 1
                logger.warning("Skipping %s: ffmpeg could not convert it (%s)", source, error)
    if failed:
        logger.warning("%d of %d .m4a files could not be converted.", failed, len(jobs))
    return target_folder


def _resolve_trial_list(name: PathLike, vox1_folder: Path) -> Path:
    candidates = [Path(name).expanduser(), vox1_folder / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.absolute()
    raise FileNotFoundError(
        f"trial list {name} not found (looked at {', '.join(str(c) for c in candidates)}); "
        "download the cleaned VoxCeleb1 lists and pass their paths as trial_lists"
    )


def _check_trials(
    trial_lists: Dict[str, List[Trial]], available: Set[str], save_folder: Path
) -> None:
    """Raises, listing them together, if trial utterances are missing from VoxCeleb1."""
    missing = sorted(
        {path for trials in trial_lists.values() for _, enrol, test in trials for path in (enrol, test)}
        - available
    )
    if missing:
        listing = save_folder / "missing_trial_utterances.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{path}\n" for path in missing), encoding="utf-8")
        raise FileNotFoundError(
            f"{len(missing)} utterance(s) of the trial lists {sorted(trial_lists)} are missing or "
            f"unreadable in the VoxCeleb1 folder (full list in {listing}): "
            + ", ".join(missing[:_MAX_LISTED])
            + (" ..." if len(missing) > _MAX_LISTED else "")
        )


def _contains(folder: Path, extension: str) -> bool:
    """Whether any file under ``folder`` has ``extension`` (stops at the first)."""
    for _, files, _ in walk_once(folder, quiet=True):
        if any(f.name.lower().endswith(extension) and not f.name.startswith(".") for f in files):
            return True
    return False


def _speakers_of(trial_lists: Dict[str, List[Trial]]) -> Set[str]:
    return {
        path.split("/", 1)[0]
        for trials in trial_lists.values()
        for _, enrol, test in trials
        for path in (enrol, test)
    }


def prepare_voxceleb(
    save_folder: PathLike,
    vox1_folder: Optional[PathLike] = None,
    vox2_folder: Optional[PathLike] = None,
    trial_lists: Optional[Sequence[PathLike]] = None,
    train_sets: Optional[Sequence[str]] = None,
    num_valid_speakers: int = 100,
    num_valid_trials: int = 20000,
    seed: int = 1234,
    min_duration: float = 1.0,
    valid_trial_list: Optional[PathLike] = None,
    vox2_wav_folder: Optional[PathLike] = None,
    ffmpeg: Optional[str] = None,
    num_workers: Optional[int] = None,
) -> Dict[str, object]:
    """Prepares VoxCeleb training manifests and the test trial lists.

    Writes into ``save_folder``: ``train.csv`` / ``valid.csv`` (manifests; the
    validation speakers are held out of the training sets by a seeded draw),
    ``valid_trials.txt`` (balanced trials over them), ``label_encoder.txt``
    (training speakers, sorted -> 0..N-1), ``test.csv`` (the VoxCeleb1
    utterances of the trial lists), the checked trial lists under their own
    names, and ``prepare_voxceleb.json`` (a second call with the same options
    on unchanged folders returns at once).

    Arguments
    ---------
    save_folder : str or Path
        Output folder.
    vox1_folder : str or Path, optional
        VoxCeleb1 (dev and test merged): ``<speaker>/<video>/<utt>.wav``.
    vox2_folder : str or Path, optional
        VoxCeleb2 dev: ``<speaker>/<video>/<utt>.m4a`` (converted to wav) or ``.wav``.
    trial_lists : sequence of str or Path, optional
        Trial lists, as paths or relative to ``vox1_folder``; default: the cleaned
        O/E/H lists when ``vox1_folder`` is given, none otherwise. Every
        utterance they name must exist under ``vox1_folder``.
    train_sets : sequence of str, optional
        Among ``"vox1"`` (VoxCeleb1 without the speakers of the trial lists, i.e.
        VoxCeleb1 dev when only the O list is given) and ``"vox2"``; default
        ``("vox2",)`` when ``vox2_folder`` is given, else ``("vox1",)``.
    num_valid_speakers : int
        Training speakers held out for the validation trials.
    num_valid_trials : int
        Validation trials (half target).
    seed : int
        Seed of the held-out speakers and of the validation trials.
    min_duration : float
        Shorter training files (seconds) are skipped with a warning.
    valid_trial_list : str or Path, optional
        Test-set selection, as the reference does: a VoxCeleb1 trial list (a
        path, or a name in ``vox1_folder``, e.g. ``veri_test2.txt``) becomes
        ``valid_trials.txt`` and no training speaker is held out (its own
        speakers are kept out of training, like those of ``trial_lists``).
        The EER it selects checkpoints by is then optimistic for that list.
        ``num_valid_speakers`` and ``num_valid_trials`` are not used.
    vox2_wav_folder : str or Path, optional
        Where converted VoxCeleb2 wavs go (default ``<save_folder>/vox2_wav``).
    ffmpeg : str, optional
        ffmpeg executable for the ``.m4a`` conversion.
    num_workers : int, optional
        Threads reading headers / ffmpeg processes.

    Returns
    -------
    dict
        ``"train"``, ``"valid"``, ``"valid_trials"``, ``"label_encoder"``, and when
        trial lists are used ``"test"`` (csv) and ``"trials"`` (name -> path).
    """
    save_folder = Path(save_folder).absolute()
    vox1 = require_folder(vox1_folder, "VoxCeleb1 folder") if vox1_folder is not None else None
    vox2 = require_folder(vox2_folder, "VoxCeleb2 folder") if vox2_folder is not None else None
    if train_sets is None:
        train_sets = ("vox2",) if vox2 is not None else ("vox1",)
    unknown = [name for name in train_sets if name not in TRAIN_SETS]
    if unknown or not train_sets:
        raise ValueError(f"train_sets={list(train_sets)}: expected a non-empty subset of {TRAIN_SETS}")
    for name, folder in (("vox1", vox1), ("vox2", vox2)):
        if name in train_sets and folder is None:
            raise ValueError(f"train_sets includes {name!r} but {name}_folder is not given")
    if trial_lists is None:
        trial_lists = DEFAULT_TRIAL_LISTS if vox1 is not None else ()
    if trial_lists and vox1 is None:
        raise ValueError("trial lists refer to VoxCeleb1 utterances: pass vox1_folder")
    trial_paths = {Path(p).name: _resolve_trial_list(p, vox1) for p in trial_lists}
    if len(trial_paths) != len(trial_lists):
        raise ValueError(f"trial lists must have distinct file names: {list(trial_lists)}")
    if valid_trial_list is not None and vox1 is None:
        raise ValueError("valid_trial_list refers to VoxCeleb1 utterances: pass vox1_folder")
    valid_path = _resolve_trial_list(valid_trial_list, vox1) if valid_trial_list is not None else None
    vox2_wav = Path(vox2_wav_folder or save_folder / "vox2_wav").absolute()
    for root in (vox1, vox2):
        if root is not None:
            require_outside(save_folder, root, "save_folder")
            require_outside(vox2_wav, root, "vox2_wav_folder")

    outputs: Dict[str, object] = {
        "train": str(save_folder / "train.csv"),
        "valid": str(save_folder / "valid.csv"),
        "valid_trials": str(save_folder / "valid_trials.txt"),
        "label_encoder": str(save_folder / "label_encoder.txt"),
    }
    if trial_paths:
        outputs["test"] = str(save_folder / "test.csv")
        outputs["trials"] = {name: str(save_folder / name) for name in trial_paths}
    files = [v for v in outputs.values() if isinstance(v, str)] + list(outputs.get("trials", {}).values())
    options_file = save_folder / "prepare_voxceleb.json"
    options = {
        "vox1_folder": str(vox1) if vox1 else None,
        "vox1_fingerprint": folder_fingerprint(vox1) if vox1 else None,
        "vox2_folder": str(vox2) if vox2 else None,
        "vox2_fingerprint": folder_fingerprint(vox2) if vox2 else None,
        "vox2_wav_folder": str(vox2_wav),
        "trial_lists": {name: [str(p), file_fingerprint(p)] for name, p in trial_paths.items()},
        "valid_trial_list": [str(valid_path), file_fingerprint(valid_path)] if valid_path else None,
        "train_sets": sorted(train_sets),
        "num_valid_speakers": num_valid_speakers,
        "num_valid_trials": num_valid_trials,
        "seed": seed,
        "min_duration": min_duration,
    }
    if is_prepared(options_file, options, files):
        logger.info("VoxCeleb already prepared in %s; skipping.", save_folder)
        return outputs
    options_file.unlink(missing_ok=True)  # a crash below must not leave a stale "done" mark

    unusable = save_folder / "unusable_files.txt"
    trials = {name: list(read_trials(path)) for name, path in trial_paths.items()}
    # The validation list is checked and scanned like the test lists; its speakers are kept out of training too.
    listed = dict(trials)
    if valid_path:
        valid_key = f"{valid_path.name} (valid_trial_list)"
        listed[valid_key] = list(read_trials(valid_path))
    test_speakers = _speakers_of(listed)
    train_rows = []
    if vox1 is not None:
        vox1_speakers = {p.name for p in vox1.iterdir() if p.is_dir() and not p.name.startswith(".")}
        dev_speakers = vox1_speakers - test_speakers if "vox1" in train_sets else set()
        if "vox1" in train_sets and not dev_speakers:
            raise ValueError(
                f"every VoxCeleb1 speaker appears in the trial lists {sorted(listed)}, so none is "
                "left to train on: the E and H lists cover all of VoxCeleb1 and can only be used "
                "when training on VoxCeleb2; train on 'vox1' with the O list (veri_test2.txt) only"
            )
        if listed:
            # Test utterances are kept whatever their length: evaluation uses every trial.
            test_rows = scan_audio(
                vox1, (".wav",), speakers=test_speakers, num_workers=num_workers, listing=unusable
            )
            _check_trials(listed, {row["ID"] + ".wav" for row in test_rows}, save_folder)
        if trials:
            write_csv(test_rows, outputs["test"])
            for name, path in outputs["trials"].items():
                write_trials(trials[name], path)
        if dev_speakers:
            logger.info(
                "VoxCeleb1: %d speakers of the trial lists excluded from training.",
                len(vox1_speakers & test_speakers),
            )
            train_rows += scan_audio(vox1, (".wav",), min_duration, dev_speakers, num_workers, listing=unusable)
    if "vox2" in train_sets:
        if _contains(vox2, ".wav"):
            vox2_root = vox2
        elif _contains(vox2, ".m4a"):
            vox2_root = convert_m4a_to_wav(vox2, vox2_wav, ffmpeg, num_workers=num_workers)
        else:
            raise FileNotFoundError(f"no .wav or .m4a files under the VoxCeleb2 folder {vox2}")
        train_rows += scan_audio(vox2_root, (".wav",), min_duration, num_workers=num_workers, listing=unusable)

    if valid_path:
        valid_trials = listed[valid_key]
        valid_ids = {os.path.splitext(path)[0] for _, enrol, test in valid_trials for path in (enrol, test)}
        valid_rows = [row for row in test_rows if row["ID"] in valid_ids]
        logger.info("Validation on %s; no training speaker held out (test-set selection).", valid_path)
    else:
        train_rows, valid_rows = hold_out_speakers(train_rows, num_valid_speakers, seed)
        valid_trials = validation_trials(valid_rows, num_valid_trials, seed)
    write_csv(train_rows, outputs["train"])
    write_csv(valid_rows, outputs["valid"])
    write_trials(valid_trials, outputs["valid_trials"])
    speaker_encoder((row["spk_id"] for row in train_rows), outputs["label_encoder"])
    mark_prepared(options_file, options)
    logger.info(
        "Prepared VoxCeleb in %s: %d training utterances of %d speakers (%s).",
        save_folder, len(train_rows), len({row["spk_id"] for row in train_rows}), "+".join(sorted(train_sets)),
    )
    return outputs
