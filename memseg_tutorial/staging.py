"""Hidden staging folders, all-or-nothing writes, and the clean-up of what a killed process left.

Everything the package writes in more than one step (a download, an extraction, the sample
dataset, a demo run, a set of predictions, a checkpoint) is first written into a new hidden
folder beside its final name, ``.<final name>.<tag>-<machine>-<pid>-<random>``, and what it holds
is renamed into place at the end. Ctrl-C and errors remove the folder, but a process killed outright (``kill -9``,
a notebook kernel restart, a power cut) runs no clean-up: a killed MVTec AD download leaves
gigabytes.

So the writer holds an exclusive lock (``flock``) on its staging folder while it works, and the
next writer of the same final name removes the folders that nobody holds. The kernel releases a
lock when its process ends, however it ends, and every process on the same kernel sees it, in
another container too (process ids would not do: containers number them apart). ``<machine>``
names that kernel (Linux's boot id, else a hash of the host name). Only folders made under this
kernel are judged by their lock, and only after a minute (a folder exists a moment before its
writer locks it). A folder from another machine (a shared drive, where locks need not reach
across) or on a file system without locks (Windows) is removed only once nothing in it has
changed for :data:`UNLOCKED_IDLE_SECONDS`.

Only folders are locked: on some network file systems a lock on a file makes the writer's own
writes through another descriptor fail, so a single file is staged inside its own folder. And the
locked folder itself is never renamed (Windows-backed folders refuse to rename a folder in use):
results are made inside it and moved out.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

GRACE_SECONDS = 60.0  # a new folder exists a moment before its writer locks it: never touch a fresh one
UNLOCKED_IDLE_SECONDS = 24 * 3600  # without a lock to ask: a day without a write (no live download is that quiet)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # Linux: one per running kernel


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    """12 hex digits naming who can see this process's locks: the running Linux kernel (its boot
    id, which the containers on it share), else the host (a hash of its full name)."""
    with contextlib.suppress(OSError):
        boot = BOOT_ID.read_text().strip().replace("-", "")
        if re.fullmatch(r"[0-9a-f]{32}", boot):
            return boot[:12]
    return hashlib.blake2s(socket.gethostname().encode(), digest_size=6).hexdigest()


def _prefix(final: Path, tag: str) -> str:
    return f".{final.name}.{tag}-"


@contextmanager
def staging_dir(final: Path, tag: str = "partial") -> Iterator[Path]:
    """A new, empty, hidden folder beside ``final``, locked while the block runs and removed after
    it (a block that succeeds has moved what it made there into place by then; the folder itself
    is never renamed).

    Staging folders of ``final`` that a killed process left are removed first. When the block
    fails, the folders this call had to create for ``final`` are removed again if they are empty.
    """
    made = []  # deepest first
    for parent in (final.parent, *final.parent.parents):
        if parent.exists():
            break
        made.append(parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final, tag)
    folder = Path(tempfile.mkdtemp(prefix=f"{_prefix(final, tag)}{_machine()}-{os.getpid()}-", dir=final.parent))
    handle, succeeded = None, False
    try:
        if fcntl is not None:
            handle = os.open(folder, _OPEN_FLAGS)
            with contextlib.suppress(OSError):  # a file system without locks: the day rule protects it
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield folder
        succeeded = True
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if handle is not None:
            os.close(handle)
        if not succeeded:
            for empty in made:
                with contextlib.suppress(OSError):  # not empty (someone else's work), or already gone
                    empty.rmdir()


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A file to write instead of ``path``: moved over ``path`` when the block ends normally,
    removed when it fails (Ctrl-C included).

    A reader always sees the old complete file or the new complete file, never half of one. The
    file has ``path``'s own name (in a staging folder), so a writer that reads the format off the
    extension (matplotlib) does the right thing.
    """
    with staging_dir(path, "tmp") as folder:
        temporary = folder / path.name
        yield temporary
        os.replace(temporary, path)


def writable_problem(path: Path, folder: bool = False, permission: bool = True) -> str | None:
    """Why ``path`` could not be written (None: it could), found before the work, not after it:
    the folder it goes in (``folder``: the folder itself, once it exists), or the nearest one above
    that exists, must be a folder, and (``permission``) one we may write to. ``os.access`` answers for
    the user's permissions; a network share's own rules may still refuse a write later."""
    path = Path(path)
    try:
        place = path if folder and path.is_dir() else path.parent
        while not place.exists() and place != place.parent:  # folders still to be made
            place = place.parent
        if not place.exists():  # a drive or share that is not there
            return f"{place} does not exist"
        if not place.is_dir():
            return f"{place} is a file, not a folder"
    except PermissionError:
        return "a folder on the way to it may not be looked into (permissions)"
    if permission and not os.access(place, os.W_OK | os.X_OK):
        return f"no permission to write in {place}"
    return None


def _idle_seconds_and_size(path: Path) -> tuple[float, int]:
    """(seconds since anything in the folder ``path`` was last written, bytes of its files), in one walk."""
    newest, size = path.lstat().st_mtime, 0
    for folder, folders, files in os.walk(path):
        for name in folders + files:
            with contextlib.suppress(OSError):  # removed meanwhile
                info = os.lstat(os.path.join(folder, name))
                newest = max(newest, info.st_mtime)
                size += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return time.time() - newest, size


def _remove_if_abandoned(entry: Path, same_host: bool) -> tuple[str, int] | None:
    """Remove the staging folder ``entry`` when its writer is gone: (why, size), else None."""
    if not stat.S_ISDIR(entry.lstat().st_mode):  # the package stages in folders, never via links
        return None
    handle = os.open(entry, _OPEN_FLAGS) if fcntl is not None else None
    try:
        free = None  # can we tell? True: nobody holds the lock
        if handle is not None:
            identity = os.fstat(handle)
            if same_host:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until it is removed
                    free = True
                except BlockingIOError:  # a live writer holds it, in this container or another
                    return None
                except OSError:  # no locks on this file system
                    free = None
        idle, size = _idle_seconds_and_size(entry)
        if idle < (GRACE_SECONDS if free else UNLOCKED_IDLE_SECONDS):
            return None
        now = entry.lstat()
        if handle is not None and (now.st_dev, now.st_ino) != (identity.st_dev, identity.st_ino):
            return None  # replaced under the same name meanwhile: not the folder that was judged
        shutil.rmtree(entry)
        return ("no process is writing it" if free else f"unchanged for {idle / 3600:.0f} hours"), size
    finally:
        if handle is not None:
            os.close(handle)


def remove_abandoned(final: Path, tag: str) -> list[Path]:
    """Remove the staging folders of ``final`` (with ``tag``) that their writer left; return them.

    Only names of the exact staging form are touched, never anything else beside ``final``, and
    nothing here ever fails the real work: a folder that cannot be examined is left.
    """
    form = re.compile(re.escape(_prefix(final, tag)) + r"([0-9a-f]{12})-[0-9]{1,10}-[a-z0-9_]{8}")
    try:
        entries = sorted(final.parent.iterdir())
    except OSError:  # no such folder (yet), or not readable
        return []
    removed = []
    for entry in entries:
        match = form.fullmatch(entry.name)
        if match is None:
            continue
        try:
            outcome = _remove_if_abandoned(entry, same_host=match.group(1) == _machine())
        except OSError:  # gone meanwhile, or not ours to delete
            continue
        if outcome is not None:
            removed.append(entry)
            with contextlib.suppress(OSError, UnicodeError):  # a closed or odd stdout never fails the work
                print(f"Removed {entry} ({outcome[1] / 1e6:.1f} MB), a staging copy left by a process that "
                      f"was stopped: {outcome[0]}.")
    return removed
