"""Staging folders that a killed process left are removed by the next writer; live ones (of this
process, another one, another container) and anything else are never touched."""

from __future__ import annotations

import errno
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
    remove_abandoned,
    staging_dir,
)

needs_locks = pytest.mark.skipif(staging.fcntl is None, reason="flock is POSIX only (Windows uses the day rule)")
HOST = staging._machine()
OTHER = "0123456789ab" if HOST != "0123456789ab" else "ba9876543210"  # another machine

LOCK_HOLDER = """
import fcntl, os, sys, time
handle = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def make_entry(folder: Path, name: str) -> Path:
    """A staging-like folder with one file inside."""
    (folder / name / "inner").mkdir(parents=True)
    (folder / name / "inner" / "part.bin").write_bytes(b"x" * 1000)
    return folder / name


def age(path: Path, seconds: float) -> Path:
    """Set every modification time in ``path`` to ``seconds`` ago (as if written that long ago)."""
    stamp = time.time() - seconds
    for item in [*(path.rglob("*") if path.is_dir() else []), path]:
        os.utime(item, (stamp, stamp))
    return path


def entries(final: Path, tag: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.{tag}-*"))


def assert_held(final: Path, tag: str) -> None:
    """Mid-write: the writer's staging folder is locked, and even when it looks old it stays."""
    (entry,) = entries(final, tag)
    age(entry, 10 * GRACE_SECONDS)
    assert remove_abandoned(final, tag) == [] and entry.is_dir()
    if staging.fcntl is not None:
        handle = os.open(entry, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                staging.fcntl.flock(handle, staging.fcntl.LOCK_EX | staging.fcntl.LOCK_NB)
        finally:
            os.close(handle)


def test_a_staging_folder_is_hidden_unique_locked_and_removed_after_the_block(tmp_path):
    final = tmp_path / "mvtec.tar.xz"
    with pytest.raises(KeyError):
        with staging_dir(final, "part") as first, staging_dir(final, "part") as second:
            assert first != second and first.parent == second.parent == tmp_path
            assert first.name.startswith(f".mvtec.tar.xz.part-{HOST}-{os.getpid()}-")
            assert len(first.name) == len(f".mvtec.tar.xz.part-{HOST}-{os.getpid()}-") + 8
            (first / "half").write_bytes(b"x")
            for folder in (first, second):
                age(folder, 10 * GRACE_SECONDS)
            assert remove_abandoned(final, "part") == []  # this process holds both
            raise KeyError("a failure halfway")
    assert list(tmp_path.iterdir()) == []


@needs_locks
def test_a_folder_that_another_live_process_holds_is_kept_and_removed_once_it_was_killed(tmp_path, capsys):
    final = tmp_path / "sample"
    entry = age(make_entry(tmp_path, f".sample.partial-{HOST}-{os.getpid()}-ab12cd34"), 3600)  # even our pid
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


def test_fresh_folders_and_other_names_are_left_alone(tmp_path, capsys):
    final = tmp_path / "predictions"
    fresh = make_entry(tmp_path, f".predictions.partial-{HOST}-77-aaaaaaaa")  # its writer may lock it any moment
    gone = [age(make_entry(tmp_path, f".predictions.partial-{HOST}-78-ab12cd_9"), 120),
            age(make_entry(tmp_path, f".predictions.partial-{HOST}-79-zz99zz99"), 120)]
    others = [age(make_entry(tmp_path, name), 10 * UNLOCKED_IDLE_SECONDS) for name in (
        f".predictions.extract-{HOST}-78-ab12cd34",  # another tag
        f".other.partial-{HOST}-78-ab12cd34",  # another final name
        f".predictions.partial-{HOST}-78-x_overlay.png",  # not what mkdtemp makes
        f".predictions.partial-{HOST}-78",
        f".predictions.partial-{HOST}-abc-ab12cd34",
        f".predictions.partial-{HOST}-12345678901-ab12cd34",  # not a process id
        ".predictions.partial-78-ab12cd34",  # no host
        "predictions",  # the final name itself
    )]
    a_file = tmp_path / f".predictions.partial-{HOST}-80-ab12cd34"
    a_file.write_bytes(b"a file is never a staging folder")
    age(a_file, 10 * UNLOCKED_IDLE_SECONDS)
    if os.name != "nt":
        (tmp_path / f".predictions.partial-{HOST}-81-ab12cd34").symlink_to(others[0])
    assert remove_abandoned(final, "partial") == sorted(gone)
    assert fresh.exists() and a_file.exists() and all(path.exists() for path in others)
    assert os.name == "nt" or (tmp_path / f".predictions.partial-{HOST}-81-ab12cd34").is_symlink()
    printed = capsys.readouterr().out
    assert all(str(path) in printed for path in gone) and "(0.0 MB)" in printed


@needs_locks
def test_a_held_folder_is_kept_however_long_it_has_been_quiet(tmp_path):
    """On this machine the lock decides: a live writer quiet for days keeps its folder (the day rule
    is only for folders whose lock cannot be asked)."""
    entry = age(make_entry(tmp_path, f".run.partial-{HOST}-5-ab12cd34"), 2 * UNLOCKED_IDLE_SECONDS)
    handle = os.open(entry, os.O_RDONLY)  # a second open file: flock conflicts even within one process
    try:
        staging.fcntl.flock(handle, staging.fcntl.LOCK_EX)
        assert remove_abandoned(tmp_path / "run", "partial") == [] and entry.is_dir()
    finally:
        os.close(handle)


def test_folders_of_another_host_go_only_after_a_quiet_day(tmp_path, capsys):
    final = tmp_path / "dtd.tar.gz"
    recent = age(make_entry(tmp_path, f".dtd.tar.gz.part-{OTHER}-12-ab12cd34"), 2 * 3600)
    stale = age(make_entry(tmp_path, f".dtd.tar.gz.part-{OTHER}-13-ab12cd34"), UNLOCKED_IDLE_SECONDS + 600)
    busy = age(make_entry(tmp_path, f".dtd.tar.gz.part-{OTHER}-14-ab12cd34"), UNLOCKED_IDLE_SECONDS + 600)
    os.utime(busy / "inner" / "part.bin")  # one file deep inside was written just now
    assert remove_abandoned(final, "part") == [stale]
    assert recent.exists() and busy.exists()
    assert "unchanged for 24 hours" in capsys.readouterr().out


class NoLocks:
    """An fcntl whose flock fails as on a file system without locks (NFS without lockd, ...)."""

    LOCK_EX, LOCK_NB = 2, 4

    @staticmethod
    def flock(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")


@pytest.mark.parametrize("fcntl_module", [None, NoLocks], ids=["no fcntl (Windows)", "flock fails"])
def test_without_locks_only_a_day_of_quiet_counts_on_this_host_too(tmp_path, monkeypatch, fcntl_module):
    monkeypatch.setattr(staging, "fcntl", fcntl_module)
    final = tmp_path / "dtd.tar.gz"
    recent = age(make_entry(tmp_path, f".dtd.tar.gz.part-{HOST}-12-ab12cd34"), 2 * 3600)
    stale = age(make_entry(tmp_path, f".dtd.tar.gz.part-{HOST}-13-ab12cd34"), UNLOCKED_IDLE_SECONDS + 600)
    assert remove_abandoned(final, "part") == [stale] and recent.exists()
    with staging_dir(final, "part") as folder:  # writing still works, unlocked
        (folder / "x").write_bytes(b"x")
    assert entries(final, "part") == [recent]


def test_missing_folder_is_not_an_error(tmp_path):
    assert remove_abandoned(tmp_path / "absent" / "x", "part") == []


def test_atomic_target_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "loss_curve.png"
    with atomic_target(path) as temporary:
        assert temporary.name == "loss_curve.png" and temporary.parent.parent == path.parent  # the suffix kept
        assert_held(path, "tmp")
        temporary.write_text("first")
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["loss_curve.png"]
    (tmp_path / "plain.png").write_text("x")
    assert path.stat().st_mode == (tmp_path / "plain.png").stat().st_mode  # as open() makes it, not 0600
    with pytest.raises(KeyboardInterrupt):
        with atomic_target(path) as temporary:
            temporary.write_text("second, half")
            raise KeyboardInterrupt
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["loss_curve.png"]


def test_checkpoint_and_json_writers_hold_their_staging_and_clear_a_killed_save(tmp_path, monkeypatch):
    import torch

    from memseg_tutorial import checkpoint as checkpoint_module

    left = [age(make_entry(tmp_path, f".last.pt.tmp-{HOST}-99-ab12cd34"), 120),
            age(make_entry(tmp_path, f".metrics.json.tmp-{HOST}-99-ef56gh78"), 120)]
    real_save = torch.save

    def save_and_check(obj, file):
        assert_held(tmp_path / "last.pt", "tmp")
        real_save(obj, file)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_and_check)
    checkpoint_module.atomic_save({"w": torch.ones(2)}, tmp_path / "last.pt")
    checkpoint_module.atomic_write_json({"a": 1}, tmp_path / "metrics.json")
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


class Response:
    headers = {"Content-Length": "10"}

    def __init__(self, during=None):
        self.chunks, self.during = [b"hello", b"world", b""], during

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def read(self, size):
        if len(self.chunks) == 2 and self.during is not None:
            self.during()
        return self.chunks.pop(0)


@needs_locks
def test_a_killed_download_is_cleared_by_a_later_one_and_a_live_namesake_is_not(tmp_path, monkeypatch):
    from memseg_tutorial.data import download as download_module

    script = tmp_path / "killed.py"
    script.write_text(KILLED_DOWNLOAD)
    folder = tmp_path / "downloads"
    result = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 17, result.stderr
    (left,) = folder.iterdir()
    assert left.name.startswith(f".toy.bin.part-{HOST}-") and (left / "toy.bin").is_file()
    age(left, 2 * GRACE_SECONDS)  # a retry a couple of minutes later
    # A live writer in another container may carry the same pid: its folder differs by the random part.
    namesake = age(make_entry(folder, f".toy.bin.part-{HOST}-{os.getpid()}-ab12cd34"), 3600)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(namesake)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: Response())
        info = download_module.DownloadInfo("toy", "https://example.invalid/toy.bin", None, "toy.bin")
        assert download_module.download_file(info, folder, progress=False) == folder / "toy.bin"
        assert sorted(p.name for p in folder.iterdir()) == sorted(["toy.bin", namesake.name])
        assert (folder / "toy.bin").read_bytes() == b"helloworld" and (namesake / "inner" / "part.bin").is_file()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_download_holds_its_staging_while_it_runs(tmp_path, monkeypatch):
    from memseg_tutorial.data import download as download_module

    folder = tmp_path / "downloads"
    checked = []

    def during():
        assert_held(folder / "toy.bin", "part")
        checked.append(True)

    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: Response(during))
    info = download_module.DownloadInfo("toy", "https://example.invalid/toy.bin", None, "toy.bin")
    download_module.download_file(info, folder, progress=False)
    assert checked == [True] and [p.name for p in folder.iterdir()] == ["toy.bin"]


def test_an_extraction_and_a_sample_generation_hold_their_staging(tmp_path, monkeypatch):
    import tarfile

    from memseg_tutorial.data import download as download_module
    from memseg_tutorial.data import sample as sample_module

    (tmp_path / "a.txt").write_text("a")
    with tarfile.open(tmp_path / "toy.tar", "w") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    checked = []

    def check(folder):
        assert (folder / "a.txt").is_file()
        assert_held(tmp_path / "out" / "toy.tar", "extract")  # staged inside the destination: one disk
        checked.append("extract")

    download_module.safe_extract(tmp_path / "toy.tar", tmp_path / "out", check=check)
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]  # and nothing else is left there

    real_write = sample_module._write_png

    def write_and_check(path, array):
        if not checked[1:]:
            assert_held(tmp_path / "sample", "partial")
            checked.append("sample")
        real_write(path, array)

    monkeypatch.setattr(sample_module, "_write_png", write_and_check)
    sample_module.generate_sample_dataset(tmp_path / "sample")
    assert checked == ["extract", "sample"]
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "sample").stat().st_mode == (tmp_path / "plain").stat().st_mode  # not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out", "plain", "sample", "toy.tar"]


def test_the_machine_is_the_kernel_else_a_hash_of_the_whole_host_name(tmp_path, monkeypatch):
    import re

    assert re.fullmatch(r"[0-9a-f]{12}", HOST)
    if staging.BOOT_ID.is_file():  # Linux: the containers on this kernel share it, and see its locks
        assert HOST == staging.BOOT_ID.read_text().strip().replace("-", "")[:12]
    monkeypatch.setattr(staging, "BOOT_ID", tmp_path / "absent")
    names = {}
    for host in ("my-laptop.local", "my-laptop.locaI", "x" * 40 + "-1", "x" * 40 + "-2"):
        monkeypatch.setattr(staging.socket, "gethostname", lambda host=host: host)
        staging._machine.cache_clear()
        names[host] = staging._machine()
    staging._machine.cache_clear()
    assert all(re.fullmatch(r"[0-9a-f]{12}", name) for name in names.values())
    assert len(set(names.values())) == 4  # no two hosts alike, however similar their names


@needs_locks  # the identity is read from the descriptor that takes the lock
def test_a_folder_replaced_while_it_was_judged_is_left(tmp_path, monkeypatch):
    entry = age(make_entry(tmp_path, f".run.partial-{HOST}-5-ab12cd34"), UNLOCKED_IDLE_SECONDS + 600)
    real_measure = staging._idle_seconds_and_size

    def swap_then_measure(path):
        measured = real_measure(path)
        path.rename(tmp_path / "moved")  # another process replaced it under the same name meanwhile
        make_entry(tmp_path, path.name)
        return measured

    monkeypatch.setattr(staging, "_idle_seconds_and_size", swap_then_measure)
    assert remove_abandoned(tmp_path / "run", "partial") == []
    assert (entry / "inner" / "part.bin").is_file() and (tmp_path / "moved").is_dir()
