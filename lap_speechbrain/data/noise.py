"""Noise and room-impulse-response CSVs for augmentation.

The CSVs have the columns ``ID,duration,wav,wav_format,wav_opts`` of
SpeechBrain's extended CSVs, which both ``lap_speechbrain.augment`` and
SpeechBrain's ``AddNoise`` / ``AddReverb`` read. This module lists the files of
MUSAN (``noise``, ``music`` and ``speech`` -> ``babble``), of RIRS_NOISES (real
and simulated RIRs -> ``rir``) or of any folders the caller names, reading only
the headers. Multi-channel files (the microphone-array RIRs of RIRS_NOISES) are
listed as they are: ``lap_speechbrain.augment`` reads a random channel of
each, as the reference does (SpeechBrain's augmenters expect mono files).

Authors
 * lap-speechbrain contributors 2026
"""

import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from lap_speechbrain.data.manifest import (
    PathLike,
    find_audio_files,
    folder_fingerprint,
    is_prepared,
    mark_prepared,
    probe_audio,
    require_folder,
    require_outside,
    write_csv,
)

logger = logging.getLogger(__name__)

NOISE_FIELDS = ("ID", "duration", "wav", "wav_format", "wav_opts")
NOISE_KINDS = ("noise", "music", "babble", "rir")
AUDIO_EXTENSIONS = (".wav", ".flac")
# MUSAN sub-folder of each kind; babble is made by summing several speech files.
MUSAN_SUBFOLDERS = {"noise": "noise", "music": "music", "babble": "speech"}
RIR_SUBFOLDERS = ("real_rirs_isotropic_noises", "simulated_rirs")


def _rirs_noises_files(rir_folder: Path) -> List[str]:
    """RIR files of a RIRS_NOISES folder: real RIRs (not the isotropic noises beside them) + simulated."""
    files = []
    for name in RIR_SUBFOLDERS:
        folder = require_folder(rir_folder / name, f"RIRS_NOISES sub-folder '{name}'")
        found = find_audio_files(folder, AUDIO_EXTENSIONS)
        if name == "real_rirs_isotropic_noises":
            # That folder mixes impulse responses with recorded noises (*_noise_*).
            found = [path for path in found if "noise" not in os.path.basename(path).lower()]
        files.extend(found)
    return files


def _noise_rows(files: List[str], root: Path, sample_rate: int, desc: str) -> List[Dict[str, object]]:
    rows = []
    for info in probe_audio(files, desc=desc):
        if info.sample_rate != sample_rate:
            logger.warning(
                "Skipping %s: sample rate %d Hz, expected %d Hz.", info.path, info.sample_rate, sample_rate
            )
            continue
        path = Path(info.path)
        rows.append(
            {
                "ID": Path(info.path).relative_to(root).with_suffix("").as_posix(),
                "duration": info.duration,
                "wav": str(path),
                "wav_format": path.suffix.lstrip(".").lower(),
                "wav_opts": "",
            }
        )
    return rows


def prepare_noise_csvs(
    save_folder: PathLike,
    musan_folder: Optional[PathLike] = None,
    rir_folder: Optional[PathLike] = None,
    noise_folders: Optional[Mapping[str, PathLike]] = None,
    sample_rate: int = 16000,
) -> Dict[str, str]:
    """Writes one CSV per corruption kind for ``lap_speechbrain.augment``.

    Arguments
    ---------
    save_folder : str or Path
        Where ``<kind>.csv`` go.
    musan_folder : str or Path, optional
        MUSAN root with ``noise/``, ``music/`` and ``speech/`` -> kinds
        ``"noise"``, ``"music"``, ``"babble"``.
    rir_folder : str or Path, optional
        RIRS_NOISES root with ``real_rirs_isotropic_noises/`` and
        ``simulated_rirs/`` -> kind ``"rir"``.
    noise_folders : mapping of str to str or Path, optional
        Other folders by kind (keys among ``noise, music, babble, rir``); every
        wav/flac below each folder is used.
    sample_rate : int
        Sample rate of the speech; files at other rates are skipped with a warning.

    Returns
    -------
    dict
        CSV path of each kind prepared. A second call with the same inputs
        returns at once without rewriting.

    Example
    -------
    >>> import numpy, soundfile
    >>> folder = Path(str(getfixture("tmpdir")))
    >>> (folder / "noises").mkdir()
    >>> soundfile.write(folder / "noises" / "hum.wav", numpy.zeros(1600), 16000)
    >>> csvs = prepare_noise_csvs(folder / "csv", noise_folders={"noise": folder / "noises"})
    >>> Path(csvs["noise"]).read_text().splitlines()[0]
    'ID,duration,wav,wav_format,wav_opts'
    """
    sources: Dict[str, Tuple[Path, List[str]]] = {}

    def add_source(kind: str, root: Path, files: List[str]) -> None:
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise_folders key {kind!r}: expected one of {NOISE_KINDS}")
        if kind in sources:
            raise ValueError(f"two folders given for {kind!r}: {sources[kind][0]} and {root}")
        sources[kind] = (root, files)

    if musan_folder is not None:
        musan_folder = require_folder(musan_folder, "MUSAN folder")
        for kind, name in MUSAN_SUBFOLDERS.items():
            folder = require_folder(musan_folder / name, f"MUSAN sub-folder '{name}'")
            add_source(kind, folder, find_audio_files(folder, AUDIO_EXTENSIONS))
    if rir_folder is not None:
        rir_folder = require_folder(rir_folder, "RIRS_NOISES folder")
        add_source("rir", rir_folder, _rirs_noises_files(rir_folder))
    for kind, folder in (noise_folders or {}).items():
        folder = require_folder(folder, f"{kind} folder")
        add_source(kind, folder, find_audio_files(folder, AUDIO_EXTENSIONS))
    if not sources:
        raise ValueError("no noise source given: pass musan_folder, rir_folder or noise_folders")

    save_folder = Path(save_folder).absolute()
    for root, _ in sources.values():
        require_outside(save_folder, root, "save_folder")
    outputs = {kind: str(save_folder / f"{kind}.csv") for kind in sources}
    options_file = save_folder / "prepare_noise.json"
    options = {
        "sample_rate": sample_rate,
        # Older versions listed mono copies (first channel) of multi-channel files.
        "multi_channel": "listed as they are",
        "sources": {kind: [str(root), folder_fingerprint(root)] for kind, (root, _) in sources.items()},
    }
    if is_prepared(options_file, options, outputs.values()):
        logger.info("Noise CSVs already prepared in %s; skipping.", save_folder)
        return outputs
    options_file.unlink(missing_ok=True)

    for kind, (root, files) in sources.items():
        if not files:
            raise FileNotFoundError(f"no {'/'.join(AUDIO_EXTENSIONS)} files for {kind!r} under {root}")
        rows = _noise_rows(files, root, sample_rate, f"Reading {kind} files")
        if not rows:
            raise ValueError(f"no usable {kind!r} file under {root} (see the warnings above)")
        write_csv(rows, outputs[kind], NOISE_FIELDS)
        logger.info("%s: %d files from %s", outputs[kind], len(rows), root)
    mark_prepared(options_file, options)
    return outputs
