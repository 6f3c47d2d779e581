"""Audio manifests: scanning audio trees, reading and writing CSVs, speaker labels.

A manifest is the CSV every recipe reads (columns ``ID,duration,wav,spk_id``):
``ID`` is the path relative to the audio root without extension (posix
separators), ``duration`` is in seconds, ``wav`` is the absolute path and
``spk_id`` the speaker folder name. Scanning reads only the audio headers
(``soundfile.SoundFile`` opened, never decoded) in a thread pool, so a
million-file corpus is listed without decoding any audio.

This module also holds the small pieces the preparation functions share:
atomic writes, the deterministic speaker-to-label mapping and the
"already prepared" check that makes every preparation idempotent.

Authors
 * lap-speechbrain contributors 2026
"""

import csv
import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import soundfile
from speechbrain.dataio.encoder import CategoricalEncoder
from tqdm import tqdm

from lap_speechbrain.fileio import atomic_open

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
MANIFEST_FIELDS = ("ID", "duration", "wav", "spk_id")
# Header reads mostly wait on storage (cold disks, network file systems) and cffi
# releases the GIL in libsndfile calls, so threads overlap them; batches keep the
# number of futures small on ~1 M files.
_PROBE_BATCH = 256


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one readable audio file.

    Arguments
    ---------
    path : str
        The file, exactly as passed to :func:`probe_audio` (``os.fspath``).
    duration : float
        Seconds (frames / sample rate).
    sample_rate : int
        Samples per second.
    channels : int
        Number of channels.
    """

    path: str
    duration: float
    sample_rate: int
    channels: int


def _probe(path: str, min_duration: float) -> Union[AudioInfo, str]:
    """Reads one header; returns the info, or the reason the file is skipped."""
    try:
        # Opening reads the header only. speechbrain.dataio.audio_io.info calls
        # soundfile.info, which also formats the file's extra info: 3x slower here.
        with soundfile.SoundFile(path) as file:
            frames, sample_rate, channels = file.frames, file.samplerate, file.channels
    except Exception as error:  # libsndfile raises several types for bad files
        return f"unreadable ({str(error).strip() or type(error).__name__})"
    if frames <= 0 or sample_rate <= 0:
        return "empty (no audio frames)"
    duration = frames / sample_rate
    if duration < min_duration:
        return f"too short ({duration:.3f} s < min_duration={min_duration} s)"
    return AudioInfo(path, duration, sample_rate, channels)


def _default_workers(num_workers: Optional[int]) -> int:
    return max(1, num_workers or min(32, 4 * (os.cpu_count() or 1)))


def _probe_batch(paths: Sequence[str], min_duration: float) -> List[Union[AudioInfo, str]]:
    return [_probe(path, min_duration) for path in paths]


def probe_audio(
    paths: Sequence[PathLike],
    min_duration: float = 0.0,
    num_workers: Optional[int] = None,
    desc: str = "Reading audio headers",
) -> List[AudioInfo]:
    """Reads the headers of many audio files in parallel, skipping bad ones.

    Each skipped file (unreadable, empty, shorter than ``min_duration``) gets
    one warning line naming it and the reason; a summary line gives the count.

    Arguments
    ---------
    paths : sequence of str or Path
        Audio files.
    min_duration : float
        Files shorter than this (seconds) are skipped.
    num_workers : int, optional
        Threads reading headers (default: ``min(32, 4 * cpu_count)``).
    desc : str
        Label of the progress bar.

    Returns
    -------
    list of AudioInfo
        One entry per readable file, in the order of ``paths``.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = Path(str(getfixture("tmpdir"))) / "a.wav"
    >>> soundfile.write(path, numpy.zeros(8000), 16000)
    >>> probe_audio([path], desc="")[0].duration
    0.5
    """
    # Plain strings: pathlib costs more than the header read on a warm cache.
    paths = [os.fspath(p) for p in paths]
    batches = [paths[i : i + _PROBE_BATCH] for i in range(0, len(paths), _PROBE_BATCH)]
    results: List[Optional[List[Union[AudioInfo, str]]]] = [None] * len(batches)
    with ThreadPoolExecutor(max_workers=_default_workers(num_workers)) as pool, tqdm(
        total=len(paths), desc=desc, unit="file", disable=not desc
    ) as bar:
        futures = {
            pool.submit(_probe_batch, batch, min_duration): index
            for index, batch in enumerate(batches)
        }
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            bar.update(len(batches[index]))
    infos, skipped = [], 0
    for batch, batch_results in zip(batches, results):
        for path, result in zip(batch, batch_results):
            if isinstance(result, AudioInfo):
                infos.append(result)
            else:
                skipped += 1
                logger.warning("Skipping %s: %s", path, result)
    if skipped:
        logger.warning("Skipped %d of %d audio files (see the warnings above).", skipped, len(paths))
    return infos


def require_folder(folder: PathLike, what: str = "folder") -> Path:
    """Returns ``folder`` as an absolute Path, or raises naming it if it is missing.

    Arguments
    ---------
    folder : str or Path
        The folder that must exist.
    what : str
        What the folder is, for the error message (e.g. ``"VoxCeleb1 folder"``).

    Returns
    -------
    Path
        The absolute folder.

    Example
    -------
    >>> require_folder("/no/such/dir", "data folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: data folder not found: /no/such/dir
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder}")
    return folder.absolute()


def require_outside(folder: PathLike, root: PathLike, what: str) -> None:
    """Raises if ``folder`` lies inside ``root``.

    Outputs written inside an input corpus would be scanned as data and would
    change the corpus fingerprint on every run.

    Arguments
    ---------
    folder : str or Path
        An output folder.
    root : str or Path
        An input folder.
    what : str
        Name of the output folder, for the message.

    Example
    -------
    >>> require_outside("/data/corpus/prepared", "/data/corpus", "save_folder")
    Traceback (most recent call last):
    ...
    ValueError: save_folder /data/corpus/prepared is inside the input folder /data/corpus; choose a folder outside it
    """
    folder, root = Path(folder).absolute(), Path(root).absolute()
    if folder == root or root in folder.parents:
        raise ValueError(f"{what} {folder} is inside the input folder {root}; choose a folder outside it")


def _inside(real_path: str, real_folders: Iterable[str]) -> bool:
    """Whether a resolved path is one of ``real_folders`` or lies below one."""
    return any(real_path == folder or real_path.startswith(os.path.join(folder, "")) for folder in real_folders)


def _boundaries(folder: PathLike, within: Optional[PathLike]) -> Tuple[str, ...]:
    """Real paths inside which links are not followed: the walked tree and ``within``."""
    return tuple({os.path.realpath(folder), os.path.realpath(within if within is not None else folder)})


def walk_once(
    folder: PathLike, within: Optional[PathLike] = None, quiet: bool = False
) -> Iterator[Tuple[str, List[os.DirEntry], Optional[str]]]:
    """Walks a tree top-down, following symlinks but entering each real folder once.

    A link that leads inside the tree or inside ``within`` (a symlink loop,
    or an alias of a folder of the tree) is not followed: that folder is
    walked at its own path. A link that leads elsewhere is followed, once per real folder. Each
    link not followed gets one warning naming it and its target. So the walk
    always ends and reaches no folder twice.

    Arguments
    ---------
    folder : str or Path
        Root of the tree.
    within : str or Path, optional
        Links leading inside this folder are not followed either (scanning
        one speaker's folder passes the corpus root).
    quiet : bool
        No warnings (for walks that only fingerprint or probe a tree that the
        listing walk reports on).

    Yields
    ------
    (str, list of os.DirEntry, str or None)
        A directory; its non-folder entries, sorted by name; and its real
        path if it was reached through a link (else None). Directories come in
        a fixed (sorted, depth-first) order.

    Example
    -------
    >>> root = Path(str(getfixture("tmpdir")))
    >>> (root / "b").mkdir()
    >>> (root / "a").symlink_to("b")
    >>> (root / "b" / "loop").symlink_to("..")
    >>> [Path(d).relative_to(root).as_posix() for d, _, _ in walk_once(root, quiet=True)]
    ['.', 'b']
    """
    folder = os.fspath(folder)
    boundaries = _boundaries(folder, within)
    entered = set()  # real paths of the folders reached through links
    # Depth-first with os.scandir: whether an entry is a folder or a link comes
    # with the listing, so a tree without links costs no extra system call.
    stack: List[Tuple[str, Optional[str]]] = [(folder, None)]
    while stack:
        directory, real = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:  # removed or made unreadable while walking
            if not quiet:
                logger.warning("Skipping folder %s: %s", directory, error)
            continue
        files, subdirs = [], []
        for entry in entries:
            if not entry.is_dir():  # follows links; a broken link is a file whose read fails later
                files.append(entry)
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if _inside(target, boundaries) or target in entered:
                    if not quiet:
                        logger.warning(
                            "Not following %s: it leads to %s, a folder listed at its own path "
                            "(a symlink loop or a second link to one folder)",
                            entry.path, target,
                        )
                    continue
            elif real is None:
                subdirs.append((entry.path, None))
                continue
            else:
                target = os.path.join(real, entry.name)
                if target in entered:  # also reached through another link
                    continue
            entered.add(target)
            subdirs.append((entry.path, target))
        yield directory, files, real
        stack.extend(reversed(subdirs))


def _list_audio(
    folder: PathLike, extensions: frozenset, within: Optional[PathLike] = None
) -> List[Tuple[str, Optional[str]]]:
    """Audio files under ``folder``, each real file once; the real path of those reached through links."""
    boundaries = _boundaries(folder, within)

    def wanted(name: str) -> bool:
        return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions

    found: List[Tuple[str, Optional[str]]] = []
    first: Dict[str, str] = {}
    repeated = []
    for _, entries, real in walk_once(folder, within):
        for entry in entries:
            if not wanted(entry.name):
                continue
            target = None  # files reached without links are unique: no system call for them
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if _inside(target, boundaries) and wanted(os.path.basename(target)):
                    repeated.append((entry.path, target))  # listed at its own path
                    continue
            elif real is not None:
                target = os.path.join(real, entry.name)
            if target is not None and target in first:
                repeated.append((entry.path, first[target]))
                continue
            if target is not None:
                first[target] = entry.path
            found.append((entry.path, target))
    if repeated:
        logger.warning(
            "%d file(s) under %s are links to files listed at another path and are counted once, e.g. %s -> %s",
            len(repeated), folder, *repeated[0],
        )
    return found


def find_audio_files(folder: PathLike, extensions: Iterable[str]) -> List[str]:
    """Lists audio files under ``folder`` (recursively, following symlinks), sorted.

    Each real folder is entered once and each real file listed once, so
    symlink loops and duplicate links neither hang the listing nor repeat a
    file (see :func:`walk_once`). Hidden files (names starting with ``.``) are
    left out: they are temporary files of interrupted writes or macOS ``._*``
    metadata, not audio.

    Arguments
    ---------
    folder : str or Path
        Where to look.
    extensions : iterable of str
        Accepted extensions with the dot, case-insensitive (e.g. ``(".wav", ".flac")``).

    Returns
    -------
    list of str
        Sorted paths.
    """
    return sorted(path for path, _ in _list_audio(folder, _normalise_extensions(extensions)))


def _normalise_extensions(extensions: Iterable[str]) -> frozenset:
    normalised = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not normalised:
        raise ValueError("extensions is empty; expected e.g. ('.wav', '.flac')")
    return normalised


# SpeechBrain's CSV loader replaces "$name" in every field by a replacement
# given when loading (speechbrain.dataio.dataio.load_data_csv).
_CSV_VARIABLE = re.compile(r"\$[\w.]+")
# An error lists this many files; the listing file holds them all.
_MAX_LISTED = 20


def _printable(text: str) -> str:
    """``text`` (holding file names) with bytes that are not UTF-8 shown as ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unusable_names(files: Sequence[str], prefix: int) -> List[Tuple[str, str]]:
    """(file, reason) for each file whose name a manifest or trial list cannot hold."""
    problems = []
    first_of_id: Dict[str, str] = {}
    for path in files:
        relative = path[prefix:]
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            problems.append((path, "the name is not valid UTF-8 (manifests and trial lists are UTF-8)"))
            continue
        if any(character.isspace() for character in relative):
            problems.append((path, "white space in the name (trial lists are separated by white space)"))
        variable = _CSV_VARIABLE.search(path)
        if variable:
            problems.append(
                (path, f"{variable.group()!r} in the path (SpeechBrain's CSV loader reads $name as a variable)")
            )
        uid = os.path.splitext(relative)[0]
        if uid in first_of_id:
            problems.append((path, f"the same ID as {first_of_id[uid]} (only the extension differs)"))
        else:
            first_of_id[uid] = path
    return problems


def _raise_unusable(problems: Sequence[Tuple[str, str]], root: Path, listing: Optional[PathLike]) -> None:
    """Raises a ValueError naming the unusable files (all of them in ``listing``)."""
    lines = [_printable(f"{path}: {reason}") for path, reason in problems]
    where = ""
    if listing is not None:
        with atomic_open(listing) as file:
            file.writelines(line + "\n" for line in lines)
        where = f" (all listed in {listing})"
    raise ValueError(
        f"{len(problems)} file(s) under {root} cannot be used{where}; rename, move or remove them:\n  "
        + "\n  ".join(lines[:_MAX_LISTED])
        + ("\n  ..." if len(lines) > _MAX_LISTED else "")
    )


def scan_audio(
    root: PathLike,
    extensions: Iterable[str] = (".wav", ".flac"),
    min_duration: float = 0.0,
    speakers: Optional[Iterable[str]] = None,
    num_workers: Optional[int] = None,
    desc: Optional[str] = None,
    listing: Optional[PathLike] = None,
) -> List[Dict[str, object]]:
    """Builds manifest rows for an audio tree laid out as ``<root>/<speaker>/**/*.<ext>``.

    Only headers are read (in parallel); bad files are skipped with a warning
    each and a count at the end (see :func:`probe_audio`). Symlinks that lead
    outside ``root`` are followed; a link to a file or folder inside ``root``
    is not (that file or folder is listed at its own path, with a warning
    naming the link), and each real folder is entered once (see
    :func:`walk_once`): symlink loops end and no file appears under two IDs.

    Files the recipes cannot use are refused before any header is read, all
    in one error: names with white space (trial lists are separated by it),
    names that are not UTF-8, paths with ``$name`` (SpeechBrain's CSV loader
    substitutes it), two files whose paths differ only in the extension (one
    ID), and one file outside ``root`` linked from two speaker folders (two labels).

    Arguments
    ---------
    root : str or Path
        Audio root; each sub-folder is a speaker.
    extensions : iterable of str
        Audio extensions to collect (case-insensitive).
    min_duration : float
        Files shorter than this (seconds) are skipped.
    speakers : iterable of str, optional
        Speaker folders to scan (default: all sub-folders of ``root``). A listed
        speaker without a folder is an error naming the missing folder.
    num_workers : int, optional
        Threads reading headers.
    desc : str, optional
        Progress-bar label (default: ``"Scanning <root>"``); ``""`` hides it.
    listing : str or Path, optional
        Where the full list of unusable files is written when there are any
        (the error itself names the first 20).

    Returns
    -------
    list of dict
        Rows with keys ``ID, duration, wav, spk_id``, sorted by ``ID``.

    Raises
    ------
    ValueError
        Some files cannot be used (each named with the reason).

    Example
    -------
    >>> import tempfile, numpy
    >>> root = Path(str(getfixture("tmpdir")))
    >>> (root / "spk1" / "session").mkdir(parents=True)
    >>> soundfile.write(root / "spk1" / "session" / "u1.wav", numpy.zeros(16000), 16000)
    >>> row = scan_audio(root, desc="")[0]
    >>> row["ID"], row["duration"], row["spk_id"]
    ('spk1/session/u1', 1.0, 'spk1')
    """
    root = require_folder(root, "audio root folder")
    extensions = _normalise_extensions(extensions)
    if speakers is None:
        speaker_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        stray = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions]
        if stray:
            logger.warning(
                "Ignoring %d audio file(s) directly in %s (no speaker folder), e.g. %s",
                len(stray), root, stray[0],
            )
    else:
        speaker_dirs = [root / name for name in sorted(set(speakers))]
        missing = [str(p) for p in speaker_dirs if not p.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} speaker folder(s) missing under {root}: " + ", ".join(missing)
            )
    # Listing folders waits on storage like header reads do: one speaker per thread.
    # Links leading anywhere inside the root are not followed (the files there
    # are listed at their own path), so no speaker lists another's files.
    with ThreadPoolExecutor(max_workers=_default_workers(num_workers)) as pool:
        listings = list(pool.map(lambda folder: _list_audio(folder, extensions, root), speaker_dirs))
    files, owner, problems = [], {}, []
    for listing_of_speaker in listings:
        for path, target in listing_of_speaker:
            if target is not None and target in owner:  # links from two speakers to one file outside
                problems.append((path, f"the same file as {owner[target]} (two speaker folders)"))
                continue
            if target is not None:
                owner[target] = path
            files.append(path)
    if not files:
        raise FileNotFoundError(
            f"no audio files with extensions {sorted(extensions)} under "
            f"{root} (expected <root>/<speaker>/**/<utterance>)"
        )
    prefix = len(os.path.join(str(root), ""))
    problems += _unusable_names(files, prefix)
    if problems:
        _raise_unusable(problems, root, listing)
    infos = probe_audio(
        files, min_duration, num_workers, desc=f"Scanning {root}" if desc is None else desc
    )
    rows = []
    for info in infos:
        relative = os.path.splitext(info.path[prefix:])[0].replace(os.sep, "/")
        rows.append(
            {
                "ID": relative,
                "duration": info.duration,
                "wav": info.path,
                "spk_id": relative.split("/", 1)[0],
            }
        )
    return sorted(rows, key=lambda row: row["ID"])


def write_csv(
    rows: Sequence[Mapping[str, object]], path: PathLike, fieldnames: Sequence[str] = MANIFEST_FIELDS
) -> str:
    """Writes rows to a CSV atomically (temporary file + rename).

    Arguments
    ---------
    rows : sequence of mappings
        Rows, each with exactly the keys ``fieldnames``.
    path : str or Path
        Destination CSV.
    fieldnames : sequence of str
        Column order (default: the manifest columns ``ID,duration,wav,spk_id``).

    Returns
    -------
    str
        ``path``.

    Example
    -------
    >>> import tempfile
    >>> path = Path(str(getfixture("tmpdir"))) / "m.csv"
    >>> _ = write_csv([{"ID": "s/v/u", "duration": 1.5, "wav": "/a/s/v/u.wav", "spk_id": "s"}], path)
    >>> read_csv(path)[0]["duration"]
    1.5
    """
    with atomic_open(path) as file:
        writer = csv.DictWriter(file, fieldnames=list(fieldnames), extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def read_csv(path: PathLike, required: Sequence[str] = MANIFEST_FIELDS) -> List[Dict[str, object]]:
    """Reads a manifest back; ``duration`` becomes a float.

    Arguments
    ---------
    path : str or Path
        The CSV.
    required : sequence of str
        Columns that must be present.

    Returns
    -------
    list of dict
        One dict per row.
    """
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [name for name in required if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        rows: List[Dict[str, object]] = list(reader)
    for row in rows:
        if "duration" in row:
            row["duration"] = float(row["duration"])
    return rows


def speaker_encoder(speakers: Iterable[str], path: Optional[PathLike] = None) -> CategoricalEncoder:
    """The deterministic speaker-to-label mapping: sorted speaker ids -> 0..N-1.

    Arguments
    ---------
    speakers : iterable of str
        Speaker ids (duplicates allowed, e.g. the ``spk_id`` column).
    path : str or Path, optional
        If given, the encoder is saved there atomically (SpeechBrain's
        ``label_encoder.txt`` format, loadable with ``CategoricalEncoder.load``).

    Returns
    -------
    CategoricalEncoder
        The mapping.

    Example
    -------
    >>> encoder = speaker_encoder(["id2", "id1", "id2"])
    >>> encoder.encode_label("id1"), encoder.encode_label("id2")
    (0, 1)
    """
    labels = sorted(set(speakers))
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(labels)
    encoder.expect_len(len(labels))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # CategoricalEncoder.save writes in place; write a temp file and rename.
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            encoder.save(temp)
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
    return encoder


def folder_fingerprint(folder: PathLike) -> str:
    """A digest of the directory tree (relative paths and modification times of all folders).

    Adding, removing or renaming a file changes its folder's modification time,
    so the digest tells whether a corpus changed without reading any audio.
    Editing a file in place is not seen.

    Arguments
    ---------
    folder : str or Path
        Root of the tree.

    Returns
    -------
    str
        Hex digest.
    """
    folder = Path(folder)
    digest = hashlib.sha1()
    for directory, _, _ in walk_once(folder, quiet=True):
        relative = Path(directory).relative_to(folder).as_posix()
        digest.update(f"{relative}\0{os.stat(directory).st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_fingerprint(path: PathLike) -> str:
    """A digest of a small file's content (e.g. a trial list).

    Arguments
    ---------
    path : str or Path
        The file.

    Returns
    -------
    str
        Hex digest.
    """
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def is_prepared(options_file: PathLike, options: Mapping[str, object], outputs: Iterable[PathLike]) -> bool:
    """True if a previous preparation with the same options wrote all ``outputs``.

    Arguments
    ---------
    options_file : str or Path
        The json written by :func:`mark_prepared`.
    options : mapping
        The options (and input fingerprints) of this call; json-serialisable.
    outputs : iterable of str or Path
        Files the preparation writes.

    Returns
    -------
    bool
        Whether everything can be skipped.
    """
    options_file = Path(options_file)
    if not options_file.is_file() or not all(Path(p).exists() for p in outputs):
        return False
    try:
        saved = json.loads(options_file.read_text(encoding="utf-8"))
    except ValueError:
        return False
    # Round-trip through json so tuples and lists compare equal.
    return saved == json.loads(json.dumps(options))


def mark_prepared(options_file: PathLike, options: Mapping[str, object]) -> None:
    """Records the options of a finished preparation (atomically), for :func:`is_prepared`.

    Arguments
    ---------
    options_file : str or Path
        The json to write.
    options : mapping
        json-serialisable options and input fingerprints.
    """
    with atomic_open(options_file) as file:
        json.dump(options, file, indent=2, sort_keys=True)
