"""Hidden staging files and folders, and the clean-up of those that a killed process left behind.

Everything the package writes in more than one step (a download, an extraction, the sample
dataset, a demo run, a set of predictions, a checkpoint) goes first to a hidden sibling of its
final name and is renamed into place at the end. Ctrl-C and errors remove the sibling, but a
process killed outright (``kill -9``, a notebook kernel restart, a power cut) runs no clean-up:
a killed MVTec AD download leaves gigabytes. So each sibling's name says which host and process
made it, ``.<final name>.<tag>-<host>-<pid>[-<random>]``, and the next writer of the same final
name removes the siblings whose process is gone. A sibling from another host (a folder on a
shared drive that two machines use) cannot be checked that way; it is removed only when nothing
in it has changed for :data:`FOREIGN_IDLE_SECONDS`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

FOREIGN_IDLE_SECONDS = 24 * 3600  # a day without a write: no live download or training is that quiet


def _host() -> str:
    """This machine's name, reduced to the characters a staging name may hold (no ``-``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def staging_name(name: str, tag: str) -> str:
    """``.<name>.<tag>-<host>-<pid>``: hidden, and it names who is writing."""
    return f".{name}.{tag}-{_host()}-{os.getpid()}"


def staging_path(final: Path, tag: str) -> Path:
    """The one staging sibling this process uses for ``final``."""
    return final.parent / staging_name(final.name, tag)


def temporary_file(final: Path, tag: str = "tmp", suffix: str = "") -> Path:
    """A new empty staging file beside ``final`` (unique within the process too)."""
    handle, path = tempfile.mkstemp(prefix=staging_name(final.name, tag) + "-", suffix=suffix,
                                    dir=final.parent)
    os.close(handle)
    return Path(path)


def temporary_dir(final: Path, tag: str = "partial") -> Path:
    """A new empty staging folder beside ``final`` (unique within the process too)."""
    return Path(tempfile.mkdtemp(prefix=staging_name(final.name, tag) + "-", dir=final.parent))


def _owner(entry_name: str, prefix: str) -> tuple[str, int] | None:
    """(host, pid) from a staging name, or None when it is not one (left alone)."""
    if not entry_name.startswith(prefix):
        return None
    parts = entry_name[len(prefix):].split("-")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _process_running(pid: int) -> bool | None:
    """Whether ``pid`` runs on this host; None where that cannot be asked safely (Windows, where
    ``os.kill`` would terminate the process)."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


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


def _abandoned(host: str, pid: int, entry: Path) -> bool:
    if host == _host():
        if pid == os.getpid():
            return False
        running = _process_running(pid)
        if running is not None:
            return not running
    return _idle_seconds(entry) > FOREIGN_IDLE_SECONDS


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def remove_abandoned(final: Path, tag: str) -> list[Path]:
    """Remove the staging siblings of ``final`` (with ``tag``) whose writer is gone; return them.

    Only names of the exact staging form are touched: anything else beside ``final`` stays.
    """
    folder, prefix = final.parent, f".{final.name}.{tag}-"
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        owner = _owner(entry.name, prefix)
        try:
            if owner is None or not _abandoned(*owner, entry):
                continue
            size = _size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:  # gone meanwhile, or not ours to delete: never fail the real work for it
            continue
        removed.append(entry)
        print(f"Removed {entry} ({size / 1e6:.1f} MB), left by a process that no longer runs.")
    return removed
