"""Files that appear whole or not at all: atomic writes of files and folders.

Everything the package writes that another run may read later (manifests,
checkpoints, caches, results, exported models) goes through these helpers, so
a process killed mid-write leaves the old content or nothing, never half a file.

Authors
 * lap-speechbrain contributors 2026
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, Union

PathLike = Union[str, Path]


def ordinary_permissions(path: PathLike, folder: bool = False) -> None:
    """Gives ``path`` the permissions a plain ``open()``/``mkdir()`` would.

    ``mkstemp``/``mkdtemp`` create 0600/0700 entries, which a rename would keep.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


@contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator:
    """Opens a temporary file next to ``path`` and renames it over ``path`` on success.

    A crash mid-write leaves ``path`` untouched (old content or absent), never half written.

    Arguments
    ---------
    path : str or Path
        Final file.
    mode : str
        ``"w"`` (text, utf-8) or ``"wb"``.

    Yields
    ------
    file
        The open temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # Held until the file is closed (or the process dies): marks the temporary as in use.
    fcntl.flock(handle, fcntl.LOCK_EX)
    ordinary_permissions(temp)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding, newline="" if encoding else None) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise



def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """Calls ``write(temporary_path)`` and renames the result to ``path``.

    Arguments
    ---------
    path : str or Path
        Final file or folder.
    write : callable
        Writes a file (or a folder) at the path it is given.

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> target = Path(getfixture("tmpdir")) / "marker.txt"
    >>> _ = atomic_write(target, lambda tmp: tmp.write_text("done"))
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staged = temporary / path.name
    try:
        with _in_use(temporary):
            write(staged)
            if path.is_dir():
                # A folder cannot be replaced in one rename: move the old one aside first.
                old = temporary / (path.name + ".old")
                os.rename(path, old)
            os.replace(staged, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return path


@contextmanager
def _in_use(temporary: Path) -> Iterator[None]:
    """Holds an flock on a temporary folder: :func:`remove_stale_temporaries` leaves it alone."""
    handle = os.open(temporary, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _unused(path: Path) -> bool:
    """Whether no live process holds the flock of an atomic write's temporary."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or unreadable: leave it
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(handle)
    return True


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Writes ``data`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder."""


class FolderLock:
    """An exclusive lock on a folder, held while a run writes into it.

    ``<folder>/.lock`` is locked with ``fcntl.flock``: the operating system
    releases the lock when the process ends, even on SIGKILL, so a killed run
    never leaves a stale lock behind. A second process fails at once with
    :class:`FolderInUseError` naming the folder and the holder's PID.

    Arguments
    ---------
    folder : str or Path
        The folder to lock (created if missing).

    Example
    -------
    >>> folder = Path(getfixture("tmpdir")) / "run"
    >>> with FolderLock(folder):  # doctest: +ELLIPSIS
    ...     FolderLock(folder).acquire()
    Traceback (most recent call last):
    ...
    lap_speechbrain.fileio.FolderInUseError: ...
    """

    FILE = ".lock"

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self._handle = None

    def acquire(self) -> "FolderLock":
        """Takes the lock or raises :class:`FolderInUseError`; returns self."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderInUseError(
                f"{self.folder} is in use by another run (PID {holder}, lock file {self.path}): wait "
                "for it to finish or choose another output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Releases the lock (the lock file stays; it is reused)."""
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


# The hidden names the helpers above give the temporaries of <name>: mkdtemp and
# mkstemp add 8 characters of [a-z0-9_] to the prefix ".<name>." (or ".<name>.old.").
_TEMPORARY = r"\.{name}\.(?:old\.)?[a-z0-9_]{{8}}(?:\.tmp)?"


def remove_stale_temporaries(folder: PathLike, names: Sequence[str] = (), existing: bool = True) -> List[Path]:
    """Removes what interrupted atomic writes left in ``folder``; returns what it removed.

    A process killed inside :func:`atomic_write`, :func:`atomic_open` or an
    export leaves a hidden ``.<name>.<random>`` staging folder (for a model,
    about 1.2 GB with WavLM Large), a ``.<name>.<random>.tmp`` file or a
    ``.<name>.old.<random>`` copy. Only entries of exactly that form are
    removed, only for a ``<name>`` that is in ``names`` or (with
    ``existing``) exists in ``folder``, and only when no live process holds them: the atomic writes
    keep an flock on their temporary while they write, and the operating
    system drops it when the writer dies, so a concurrent write in progress
    is never removed. Nothing else is touched.

    Arguments
    ---------
    folder : str or Path
        The folder to clean (not recursive).
    names : sequence of str
        Further target names whose temporaries to remove (targets a killed
        run had not written yet).
    existing : bool
        Also the names of the entries of ``folder``; False in a folder the
        caller does not own (e.g. the one that holds an ``--out`` file).

    Returns
    -------
    list of Path

    Example
    -------
    >>> folder = Path(getfixture("tmpdir"))
    >>> (folder / ".model.k3j_x0qa").mkdir(); (folder / ".keep.me").mkdir()
    >>> [p.name for p in remove_stale_temporaries(folder, ["model"])], sorted(p.name for p in folder.iterdir())
    (['.model.k3j_x0qa'], ['.keep.me'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    targets = set(names)
    if existing:
        targets |= {path.name for path in folder.iterdir() if not path.name.startswith(".")}
    patterns = [re.compile(_TEMPORARY.format(name=re.escape(name))) for name in sorted(targets)]
    removed = []
    for path in sorted(folder.iterdir()):
        if not any(pattern.fullmatch(path.name) for pattern in patterns) or not _unused(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


class NoSpaceLeftError(OSError):
    """A write failed because the file system is full."""


# torch.save reports a full disk as a C++ RuntimeError ("basic_ios::clear:
# iostream error", "unexpected pos ..."); below this much free space a failed
# write is taken to be that.
FULL_DISK_BYTES = 64 * 1024 * 1024


@contextmanager
def reporting_full_disk(path: PathLike) -> Iterator[None]:
    """Turns a write failure on a full disk into :class:`NoSpaceLeftError` naming ``path``.

    Arguments
    ---------
    path : str or Path
        The file or folder being written (the message names it).

    Example
    -------
    >>> with reporting_full_disk("/dev/full"):  # doctest: +ELLIPSIS
    ...     with open("/dev/full", "wb") as sink:
    ...         _ = sink.write(b"x" * 100000)
    Traceback (most recent call last):
    ...
    lap_speechbrain.fileio.NoSpaceLeftError: [Errno 28] no space left on /dev/full ...
    """
    try:
        yield
    except NoSpaceLeftError:
        raise
    except (OSError, RuntimeError) as error:
        full = getattr(error, "errno", None) == errno.ENOSPC
        if not full and isinstance(error, RuntimeError):
            full = free_bytes(path) < FULL_DISK_BYTES
        if not full:
            raise
        raise NoSpaceLeftError(
            errno.ENOSPC,
            f"no space left on {path} ({free_bytes(path)} bytes free): free some space (or choose "
            "another folder) and run the same command again",
        ) from error


def free_bytes(path: PathLike) -> int:
    """Bytes available to this user on the file system of ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def sha256_file(path: PathLike) -> str:
    """The SHA-256 hex digest of a file's content, read in 1 MiB blocks.

    Example
    -------
    >>> target = Path(getfixture("tmpdir")) / "a.txt"
    >>> _ = target.write_text("abc")
    >>> sha256_file(target)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def overlaps(first: PathLike, second: PathLike) -> bool:
    """Whether one path is the other or lies inside it (after resolving links).

    Example
    -------
    >>> overlaps("/data/run", "/data/run/model"), overlaps("/data/run", "/data/run2")
    (True, False)
    """
    first, second = Path(first).resolve(), Path(second).resolve()
    return first == second or first in second.parents or second in first.parents
