"""Staging siblings left by a killed process are removed by the next writer, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memseg_tutorial import staging
from memseg_tutorial.staging import (
    FOREIGN_IDLE_SECONDS,
    remove_abandoned,
    staging_name,
    staging_path,
    temporary_dir,
    temporary_file,
)

posix_only = pytest.mark.skipif(os.name == "nt", reason="process checks use os.kill(pid, 0), POSIX only")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def make_entry(folder: Path, name: str, directory: bool = False) -> Path:
    path = folder / name
    if directory:
        (path / "inner").mkdir(parents=True)
        (path / "inner" / "part.bin").write_bytes(b"x" * 1000)
    else:
        path.write_bytes(b"x" * 1000)
    return path


def age(path: Path, seconds: float) -> None:
    """Set every modification time in ``path`` to ``seconds`` ago."""
    stamp = time.time() - seconds
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(item, (stamp, stamp))


def test_names_say_host_and_process(tmp_path):
    final = tmp_path / "mvtec.tar.xz"
    host = staging._host()
    assert "-" not in host and host
    assert staging_name("mvtec.tar.xz", "part") == f".mvtec.tar.xz.part-{host}-{os.getpid()}"
    assert staging_path(final, "part") == tmp_path / f".mvtec.tar.xz.part-{host}-{os.getpid()}"
    first, second = temporary_file(final, suffix=".png"), temporary_file(final, suffix=".png")
    assert first != second and first.is_file() and first.stat().st_size == 0
    assert first.name.startswith(staging_name("mvtec.tar.xz", "tmp") + "-") and first.suffix == ".png"
    folder = temporary_dir(final, "partial")
    assert folder.is_dir() and folder.name.startswith(staging_name("mvtec.tar.xz", "partial") + "-")
    # every form parses back to this host and process, with or without the random part
    for made in (staging_path(final, "part"), first, folder):
        tag = made.name[len(".mvtec.tar.xz."):].split("-")[0]
        assert staging._owner(made.name, f".mvtec.tar.xz.{tag}-") == (host, os.getpid())


@posix_only
def test_only_entries_of_gone_processes_on_this_host_are_removed(tmp_path, capsys):
    final = tmp_path / "sample"
    host, gone = staging._host(), dead_pid()
    dead_dir = make_entry(tmp_path, f".sample.partial-{host}-{gone}", directory=True)
    dead_file = make_entry(tmp_path, f".sample.partial-{host}-{gone}-k3x_9a")
    alive = make_entry(tmp_path, f".sample.partial-{host}-{os.getppid()}", directory=True)
    mine = make_entry(tmp_path, f".sample.partial-{host}-{os.getpid()}")
    keep = [
        alive, mine,
        make_entry(tmp_path, f".sample.extract-{host}-{gone}"),  # another tag
        make_entry(tmp_path, f".other.partial-{host}-{gone}"),  # another final name
        make_entry(tmp_path, f".sample.partial-{gone}"),  # not the staging form (no host)
        make_entry(tmp_path, f".sample.partial-{host}-notapid"),
        make_entry(tmp_path, f".sample.partial-{host}-{gone}-a-b"),
        make_entry(tmp_path, "sample"),  # the final name itself
    ]
    for path in keep + [dead_dir, dead_file]:
        age(path, 10 * FOREIGN_IDLE_SECONDS)  # age alone never removes an entry of this host
    assert remove_abandoned(final, "partial") == sorted([dead_dir, dead_file])
    assert not dead_dir.exists() and not dead_file.exists()
    assert all(path.exists() for path in keep)
    printed = capsys.readouterr().out
    assert str(dead_dir) in printed and "(0.0 MB)" in printed and "no longer runs" in printed


def test_entries_of_another_host_go_only_after_a_quiet_day(tmp_path):
    final = tmp_path / "dtd.tar.gz"
    stale = make_entry(tmp_path, ".dtd.tar.gz.part-otherbox-12", directory=True)
    busy = make_entry(tmp_path, ".dtd.tar.gz.part-otherbox-13", directory=True)
    fresh = make_entry(tmp_path, ".dtd.tar.gz.part-otherbox-14")
    age(stale, FOREIGN_IDLE_SECONDS + 600)
    age(busy, FOREIGN_IDLE_SECONDS + 600)
    os.utime(busy / "inner" / "part.bin")  # one file deep inside was written just now
    assert remove_abandoned(final, "part") == [stale]
    assert busy.exists() and fresh.exists()


def test_missing_folder_is_not_an_error(tmp_path):
    assert remove_abandoned(tmp_path / "absent" / "x", "part") == []


@posix_only
def test_checkpoint_and_json_writers_remove_temporaries_of_a_killed_save(tmp_path):
    import torch

    from memseg_tutorial.checkpoint import atomic_save, atomic_write_json

    host, gone = staging._host(), dead_pid()
    left = [make_entry(tmp_path, f".last.pt.tmp-{host}-{gone}-ab12cd34"),
            make_entry(tmp_path, f".metrics.json.tmp-{host}-{gone}-ef56gh78")]
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


@posix_only
def test_a_killed_download_leaves_a_part_file_that_the_next_download_removes(tmp_path, monkeypatch):
    from memseg_tutorial.data import download as download_module

    script = tmp_path / "killed.py"
    script.write_text(KILLED_DOWNLOAD)
    folder = tmp_path / "downloads"
    result = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 17, result.stderr
    (left,) = folder.iterdir()
    assert left.name.startswith(f".toy.bin.part-{staging._host()}-")  # (its bytes were still buffered)

    class Response:
        headers = {"Content-Length": "5"}

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def __init__(self):
            self.chunks = [b"hello", b""]

        def read(self, size):
            return self.chunks.pop(0)

    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: Response())
    info = download_module.DownloadInfo("toy", "https://example.invalid/toy.bin", None, "toy.bin")
    assert download_module.download_file(info, folder, progress=False) == folder / "toy.bin"
    assert [p.name for p in folder.iterdir()] == ["toy.bin"]
    assert (folder / "toy.bin").read_bytes() == b"hello"
