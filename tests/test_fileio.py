"""Tests of lap_speechbrain.fileio: the folder lock, leftover temporaries, full-disk errors."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from lap_speechbrain import fileio
from lap_speechbrain.fileio import (
    FolderInUseError,
    FolderLock,
    NoSpaceLeftError,
    atomic_write,
    remove_stale_temporaries,
    reporting_full_disk,
)

HOLD_LOCK = "import sys, time; from lap_speechbrain.fileio import FolderLock; " \
            "lock = FolderLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)"


def test_a_folder_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(FolderInUseError, match=rf"{tmp_path} is in use by another run \(PID {holder.pid},"):
            FolderLock(tmp_path).acquire()
        assert time.monotonic() - start < 1.0  # at once, no waiting
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # A killed holder leaves no stale lock.
    with FolderLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
    FolderLock(tmp_path).acquire().release()  # released on exit


def test_only_temporaries_of_known_names_are_removed(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "train.csv").write_text("ID\n")
    stale = [".model.a1b2c3d4", ".model.old.zz_99xyz", ".train.csv.0a0a0a0a.tmp", ".stage_done.json.q1w2e3r4"]
    kept = [".model.keep", ".other.abcdefgh", ".model.a1b2c3d", "model.a1b2c3d4", ".git", ".lock"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
    removed = remove_stale_temporaries(tmp_path, names=["stage_done.json"])
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["model", "train.csv"])
    assert remove_stale_temporaries(tmp_path / "missing") == []


class Killed(BaseException):
    """Stands for a SIGKILL in the middle of a write."""


def test_what_a_killed_atomic_write_leaves_matches_the_pattern(tmp_path, monkeypatch):
    def killed(path):
        path.mkdir()
        (path / "weights").write_bytes(b"x")
        raise Killed

    # A killed process runs no clean-up: keep the temporaries in place.
    monkeypatch.setattr(fileio.shutil, "rmtree", lambda *args, **kwargs: None)
    with pytest.raises(Killed):
        atomic_write(tmp_path / "model", killed)
    monkeypatch.undo()
    (leftover,) = tmp_path.iterdir()
    assert remove_stale_temporaries(tmp_path, ["model"]) == [leftover]


# Writes argv[1] atomically (argv[2]: "file" or "folder"), says so, and waits to be killed mid-write.
WRITE_AND_WAIT = """
import sys, time
from pathlib import Path
from lap_speechbrain.fileio import atomic_open, atomic_write
def wait(*_):
    print("writing", flush=True)
    time.sleep(600)
if sys.argv[2] == "file":
    with atomic_open(sys.argv[1], "wb") as handle:
        handle.write(b"half")
        wait()
else:
    atomic_write(sys.argv[1], lambda tmp: (tmp.mkdir(), (tmp / "weights").write_bytes(b"half"), wait()))
"""


def start_write(path, kind: str = "file") -> subprocess.Popen:
    """A process in the middle of an atomic write of ``path`` (its temporary exists and is locked)."""
    writer = subprocess.Popen([sys.executable, "-c", WRITE_AND_WAIT, str(path), kind],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def kill_mid_write(path, kind: str = "file"):
    """What ``kill -9`` during an atomic write of ``path`` leaves: returns the orphan temporary."""
    writer = start_write(path, kind)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (orphan,) = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    return orphan


def test_temporaries_of_live_writers_are_kept_and_those_of_killed_ones_removed(tmp_path):
    for kind in ("file", "folder"):
        writer = start_write(tmp_path / f"{kind}.out", kind)
        try:
            (busy,) = [p for p in tmp_path.iterdir() if p.name.startswith(f".{kind}.out.")]
            assert remove_stale_temporaries(tmp_path, [f"{kind}.out"]) == []  # in use: kept
            assert busy.exists()
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        assert remove_stale_temporaries(tmp_path, [f"{kind}.out"]) == [busy]  # its writer died
    # Only given names in a folder the caller does not own.
    (tmp_path / "notes").mkdir()
    (tmp_path / ".notes.a1b2c3d4").mkdir()
    orphan = kill_mid_write(tmp_path / "e.pt")
    assert remove_stale_temporaries(tmp_path, ["e.pt"], existing=False) == [orphan]
    assert (tmp_path / ".notes.a1b2c3d4").is_dir()


def test_a_full_disk_is_named(tmp_path, monkeypatch):
    with pytest.raises(NoSpaceLeftError, match="no space left on /dev/full") as caught:
        with reporting_full_disk("/dev/full"), open("/dev/full", "wb") as sink:
            sink.write(b"x" * 1_000_000)
    assert caught.value.errno == errno.ENOSPC
    # torch.save says "basic_ios::clear: iostream error" on a full disk: named when space is gone ...
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 4096)
    with pytest.raises(NoSpaceLeftError, match=f"no space left on {tmp_path / 'x.ckpt'} \\(4096 bytes free\\)"):
        with reporting_full_disk(tmp_path / "x.ckpt"):
            raise RuntimeError("basic_ios::clear: iostream error")
    # ... and passed through unchanged when it is not.
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 10**12)
    with pytest.raises(RuntimeError, match="basic_ios"):
        with reporting_full_disk(tmp_path / "x.ckpt"):
            raise RuntimeError("basic_ios::clear: iostream error")
    with pytest.raises(PermissionError):
        with reporting_full_disk(tmp_path):
            raise PermissionError(errno.EACCES, "denied")
