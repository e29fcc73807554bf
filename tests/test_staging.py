"""Staging copies that a killed process left are removed by the next writer; live ones and
anything else are never touched. All-or-nothing writes go through one helper."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memseg_tutorial import staging
from memseg_tutorial.staging import (
    GRACE_SECONDS,
    UNLOCKED_IDLE_SECONDS,
    atomic_target,
    locked,
    remove_abandoned,
    staging_dir,
    staging_name,
    staging_path,
    temporary_dir,
    temporary_file,
)

needs_locks = pytest.mark.skipif(staging.fcntl is None, reason="flock is POSIX only (Windows uses the idle rule)")

LOCK_HOLDER = """
import fcntl, os, sys, time
handle = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def make_entry(folder: Path, name: str, directory: bool = True) -> Path:
    path = folder / name
    if directory:
        (path / "inner").mkdir(parents=True)
        (path / "inner" / "part.bin").write_bytes(b"x" * 1000)
    else:
        path.write_bytes(b"x" * 1000)
    return path


def age(path: Path, seconds: float) -> Path:
    """Set every modification time in ``path`` to ``seconds`` ago (as if written that long ago)."""
    stamp = time.time() - seconds
    for item in [*(path.rglob("*") if path.is_dir() else []), path]:
        os.utime(item, (stamp, stamp))
    return path


def test_names_are_hidden_siblings_that_say_the_process(tmp_path):
    final = tmp_path / "mvtec.tar.xz"
    assert staging_name("mvtec.tar.xz", "part") == f".mvtec.tar.xz.part-{os.getpid()}"
    assert staging_path(final, "part") == tmp_path / f".mvtec.tar.xz.part-{os.getpid()}"
    first, second = temporary_file(final, suffix=".png"), temporary_file(final, suffix=".png")
    assert first != second and first.is_file() and first.stat().st_size == 0
    assert first.name.startswith(f".mvtec.tar.xz.tmp-{os.getpid()}-") and first.suffix == ".png"
    folder = temporary_dir(final, "partial")
    assert folder.is_dir() and folder.name.startswith(f".mvtec.tar.xz.partial-{os.getpid()}-")
    # every form the package makes is recognised as a staging copy (here: old and unlocked)
    for made in (first, second, folder):
        age(made, 2 * GRACE_SECONDS)
    assert sorted(remove_abandoned(final, "tmp")) == sorted([first, second])
    assert remove_abandoned(final, "partial") == [folder]


@needs_locks
def test_a_copy_that_a_live_process_holds_is_kept_and_removed_once_it_was_killed(tmp_path, capsys):
    final = tmp_path / "sample"
    entry = age(make_entry(tmp_path, ".sample.partial-4242"), 3600)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(entry)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert remove_abandoned(final, "partial") == [] and entry.exists()  # alive: kept, however old
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
        holder.stdout.close()
    assert remove_abandoned(final, "partial") == [entry] and not entry.exists()
    assert "no process is writing it" in capsys.readouterr().out


@needs_locks
def test_this_process_keeps_what_it_is_writing(tmp_path):
    entry = age(make_entry(tmp_path, ".last.pt.tmp-7-abcd1234", directory=False), 3600)
    with locked(entry):
        assert remove_abandoned(tmp_path / "last.pt", "tmp") == [] and entry.exists()
    assert remove_abandoned(tmp_path / "last.pt", "tmp") == [entry]


def test_fresh_copies_and_other_names_are_left_alone(tmp_path, capsys):
    final = tmp_path / "predictions"
    fresh = make_entry(tmp_path, ".predictions.partial-77")  # just made: its writer may lock it any moment
    gone = [age(make_entry(tmp_path, ".predictions.partial-78"), 120),
            age(make_entry(tmp_path, ".predictions.partial-79-ab12cd_9.png", directory=False), 120)]
    others = [age(make_entry(tmp_path, name), 10 * UNLOCKED_IDLE_SECONDS) for name in (
        ".predictions.extract-78",  # another tag
        ".other.partial-78",  # another final name
        ".predictions.partial-78-x_overlay.png",  # not what mkstemp makes
        ".predictions.partial-abc",
        ".predictions.partial-12345678901",  # not a process id
        ".predictions.partial-78-abcdefgh-more",
        "predictions",  # the final name itself
    )]
    (tmp_path / ".predictions.partial-80").symlink_to(others[0])  # a link is never followed or removed
    assert remove_abandoned(final, "partial") == sorted(gone)
    assert fresh.exists() and all(path.exists() for path in others)
    assert (tmp_path / ".predictions.partial-80").is_symlink()
    printed = capsys.readouterr().out
    assert all(str(path) in printed for path in gone) and "(0.0 MB)" in printed


def test_without_locks_only_a_day_of_quiet_counts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(staging, "fcntl", None)  # as on Windows
    final = tmp_path / "dtd.tar.gz"
    recent = age(make_entry(tmp_path, ".dtd.tar.gz.part-12"), 2 * 3600)
    stale = age(make_entry(tmp_path, ".dtd.tar.gz.part-13"), UNLOCKED_IDLE_SECONDS + 600)
    busy = age(make_entry(tmp_path, ".dtd.tar.gz.part-14"), UNLOCKED_IDLE_SECONDS + 600)
    os.utime(busy / "inner" / "part.bin")  # one file deep inside was written just now
    assert remove_abandoned(final, "part") == [stale]
    assert recent.exists() and busy.exists()
    assert "unchanged for 24 hours" in capsys.readouterr().out


def test_missing_folder_is_not_an_error(tmp_path):
    assert remove_abandoned(tmp_path / "absent" / "x", "part") == []


def test_staging_dir_is_removed_after_the_block_and_locked_during_it(tmp_path):
    with pytest.raises(KeyError):
        with staging_dir(tmp_path / "run") as folder:
            (folder / "checkpoint.pt").write_bytes(b"half")
            if staging.fcntl is not None:  # the lock is on: another open of the folder cannot take it
                handle = os.open(folder, os.O_RDONLY)
                try:
                    with pytest.raises(BlockingIOError):
                        staging.fcntl.flock(handle, staging.fcntl.LOCK_EX | staging.fcntl.LOCK_NB)
                finally:
                    os.close(handle)
            raise KeyError("a failure halfway")
    assert list(tmp_path.iterdir()) == []


def test_atomic_target_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    with atomic_target(path) as temporary:
        assert temporary.parent == path.parent and temporary.name.startswith(".metrics.json.tmp-")
        temporary.write_text("first")
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    assert path.stat().st_mode & 0o777 == staging.default_mode()  # as open() would make it, not 0600
    with pytest.raises(KeyboardInterrupt):
        with atomic_target(path) as temporary:
            temporary.write_text("second, half")
            raise KeyboardInterrupt
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["metrics.json"]


@needs_locks
def test_checkpoint_and_json_writers_remove_temporaries_of_a_killed_save(tmp_path):
    import torch

    from memseg_tutorial.checkpoint import atomic_save, atomic_write_json

    left = [age(make_entry(tmp_path, ".last.pt.tmp-99-ab12cd34", directory=False), 120),
            age(make_entry(tmp_path, ".metrics.json.tmp-99-ef56gh78", directory=False), 120)]
    atomic_save({"w": torch.ones(2)}, tmp_path / "last.pt")
    atomic_write_json({"a": 1}, tmp_path / "metrics.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.json"]
    assert not any(path.exists() for path in left)


KILLED_DOWNLOAD = """
import os, sys, urllib.request
from memseg_tutorial.data import download

class Response:
    headers = {"Content-Length": "4000"}
    def __enter__(self): return self
    def __exit__(self, *args): return False
    def read(self, size):
        if getattr(self, "sent", False):
            os._exit(17)  # killed mid-download: no except, no finally
        self.sent = True
        return b"x" * 1000

urllib.request.urlopen = lambda *a, **k: Response()
info = download.DownloadInfo("toy", "https://example.invalid/toy.bin", None, "toy.bin")
download.download_file(info, sys.argv[1], progress=False)
"""


@needs_locks
def test_a_killed_download_leaves_a_part_file_that_a_later_download_removes(tmp_path, monkeypatch):
    from memseg_tutorial.data import download as download_module

    script = tmp_path / "killed.py"
    script.write_text(KILLED_DOWNLOAD)
    folder = tmp_path / "downloads"
    result = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 17, result.stderr
    (left,) = folder.iterdir()
    assert left.name.startswith(".toy.bin.part-")

    class Response:
        headers = {"Content-Length": "5"}

        def __init__(self):
            self.chunks = [b"hello", b""]

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self, size):
            return self.chunks.pop(0)

    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: Response())
    info = download_module.DownloadInfo("toy", "https://example.invalid/toy.bin", None, "toy.bin")
    age(left, 2 * GRACE_SECONDS)  # a retry a couple of minutes later
    assert download_module.download_file(info, folder, progress=False) == folder / "toy.bin"
    assert [p.name for p in folder.iterdir()] == ["toy.bin"]
    assert (folder / "toy.bin").read_bytes() == b"hello"
