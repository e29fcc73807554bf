"""Hidden staging files and folders, all-or-nothing writes, and the clean-up of what a killed
process left behind.

Everything the package writes in more than one step (a download, an extraction, the sample
dataset, a demo run, a set of predictions, a checkpoint) goes first to a hidden sibling of its
final name, ``.<final name>.<tag>-<pid>[-<random>]``, and is renamed into place at the end.
Ctrl-C and errors remove the sibling, but a process killed outright (``kill -9``, a notebook
kernel restart, a power cut) runs no clean-up: a killed MVTec AD download leaves gigabytes.

So the writer holds an exclusive lock (``flock``) on its staging entry while it works, and the
next writer of the same final name removes the entries that nobody holds. The kernel releases a
lock when its process ends, however it ends, and a lock is seen by every process that opens the
file, in another container too (process ids would not be: containers number them apart). Where
the file system offers no locks (Windows, some network drives) an entry is removed only once
nothing in it has changed for :data:`UNLOCKED_IDLE_SECONDS`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

GRACE_SECONDS = 60.0  # a new entry exists a moment before its writer locks it: never touch a fresh one
UNLOCKED_IDLE_SECONDS = 24 * 3600  # without locks: a day without a write (no live download is that quiet)
_RANDOM = r"-[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?"  # what mkstemp/mkdtemp add (and a suffix such as .png)


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp alone give 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def staging_name(name: str, tag: str) -> str:
    """``.<name>.<tag>-<pid>``: hidden, next to the final name, and it says who is writing."""
    return f".{name}.{tag}-{os.getpid()}"


def staging_path(final: Path, tag: str) -> Path:
    """This process's staging sibling of ``final``, once abandoned siblings have been removed."""
    remove_abandoned(final, tag)
    return final.parent / staging_name(final.name, tag)


def temporary_file(final: Path, tag: str = "tmp", suffix: str = "") -> Path:
    """A new empty staging file beside ``final`` (unique within the process too)."""
    remove_abandoned(final, tag)
    handle, path = tempfile.mkstemp(prefix=staging_name(final.name, tag) + "-", suffix=suffix,
                                    dir=final.parent)
    os.close(handle)
    return Path(path)


def temporary_dir(final: Path, tag: str = "partial") -> Path:
    """A new empty staging folder beside ``final`` (unique within the process too)."""
    remove_abandoned(final, tag)
    return Path(tempfile.mkdtemp(prefix=staging_name(final.name, tag) + "-", dir=final.parent))


def _open(path: Path) -> int | None:
    """A descriptor to lock ``path`` with (folders too), or None where locks are not available."""
    if fcntl is None:
        return None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the staging entry ``path`` while this process writes it."""
    handle = _open(path)
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:  # a file system without locks: the idle rule protects the entry
                pass
        yield
    finally:
        if handle is not None:
            os.close(handle)


@contextmanager
def staging_dir(final: Path, tag: str = "partial") -> Iterator[Path]:
    """A new staging folder beside ``final``, locked while the block runs and removed after it
    (a block that succeeds renames it into place first)."""
    folder = temporary_dir(final, tag)
    try:
        with locked(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_target(path: Path, suffix: str = "") -> Iterator[Path]:
    """A staging file to write instead of ``path``: renamed over ``path`` when the block ends
    normally (with the mode a plain ``open`` gives), removed when it fails (Ctrl-C included).

    So a reader always sees the old complete file or the new complete file, never half of one.
    ``suffix`` keeps an extension that the writer reads the format from (matplotlib: ``.png``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_file(path, "tmp", suffix)
    try:
        with locked(temporary):
            yield temporary
            os.chmod(temporary, default_mode())
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _idle_seconds(path: Path) -> float:
    """Seconds since anything in ``path`` (a file or a whole folder) was last written."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, folders, files in os.walk(path):
            for name in folders + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except OSError:  # removed meanwhile
                    pass
    return time.time() - newest


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove_if_abandoned(entry: Path) -> tuple[str, int] | None:
    """Remove ``entry`` when no process holds it; return why it counted as abandoned and its size."""
    if entry.is_symlink():  # the package never stages through a link
        return None
    idle = _idle_seconds(entry)
    if idle < GRACE_SECONDS:
        return None
    handle = _open(entry)
    try:
        reason = "no process is writing it"
        if handle is None:
            reason = None
        else:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # kept until it is removed
            except BlockingIOError:  # a live writer holds it, in this container or another
                return None
            except OSError:  # no locks on this file system
                reason = None
        if reason is None:
            if idle < UNLOCKED_IDLE_SECONDS:
                return None
            reason = f"unchanged for {idle / 3600:.0f} hours"
        size = _size(entry)
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        return reason, size
    finally:
        if handle is not None:
            os.close(handle)


def remove_abandoned(final: Path, tag: str) -> list[Path]:
    """Remove the staging siblings of ``final`` (with ``tag``) that their writer left; return them.

    Only names of the exact staging form are touched, never anything else beside ``final``. A
    sibling that cannot be examined or removed is left: the real work never fails for it.
    """
    folder = final.parent
    if not folder.is_dir():
        return []
    form = re.compile(re.escape(f".{final.name}.{tag}-") + r"[0-9]{1,10}(?:" + _RANDOM + r")?")
    removed = []
    for entry in sorted(folder.iterdir()):
        if not form.fullmatch(entry.name):
            continue
        try:
            outcome = _remove_if_abandoned(entry)
        except OSError:  # gone meanwhile, or not ours to delete
            continue
        if outcome is not None:
            reason, size = outcome
            removed.append(entry)
            print(f"Removed {entry} ({size / 1e6:.1f} MB), a staging copy left by a process that was "
                  f"stopped: {reason}.")
    return removed
