"""Files that appear whole or not at all: atomic writes of files and folders.

Everything the package writes that another run may read later (manifests,
checkpoints, caches, results, exported models) goes through these helpers, so
a process killed mid-write leaves the old content or nothing, never half a file.

Authors
 * lap-speechbrain contributors 2026
"""

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

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
        write(staged)
        if path.is_dir():
            # A folder cannot be replaced in one rename: move the old one aside first.
            old = temporary / (path.name + ".old")
            os.rename(path, old)
        os.replace(staged, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return path


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Writes ``data`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


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
