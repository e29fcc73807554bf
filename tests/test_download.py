"""Downloads, offline: file:// URLs and a patched urlopen stand in for the network."""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import os
import re
import shutil
import tarfile
import urllib.error
import zipfile
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from memseg_tutorial.data import (
    DTD,
    MVTEC_AD,
    ChecksumError,
    DownloadError,
    DownloadInfo,
    MVTecDataset,
    UnsafeArchiveError,
    download_dtd,
    download_file,
    download_mvtec,
    mvtec_category_info,
    safe_extract,
    sha256_file,
    verify_checksum,
)
from memseg_tutorial.data import download as download_module


def _info(path: Path, sha256: str | None = "auto", name: str = "toy.tar.gz") -> DownloadInfo:
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if sha256 == "auto" else sha256
    return DownloadInfo(name="toy dataset", url=path.resolve().as_uri(), sha256=digest, filename=name)


def _png_bytes(rng: np.random.Generator, grey: bool = False) -> bytes:
    shape = (16, 16) if grey else (16, 16, 3)
    return cv2.imencode(".png", rng.integers(0, 255, shape, dtype=np.uint8))[1].tobytes()


def _make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _toy_category(rng: np.random.Generator, category: str = "toy") -> dict[str, bytes]:
    mask = cv2.imencode(".png", np.pad(np.full((4, 4), 255, np.uint8), 6))[1].tobytes()
    return {
        f"{category}/train/good/000.png": _png_bytes(rng),
        f"{category}/train/good/001.png": _png_bytes(rng),
        f"{category}/test/good/000.png": _png_bytes(rng),
        f"{category}/test/dent/000.png": _png_bytes(rng),
        f"{category}/ground_truth/dent/000_mask.png": mask,
    }


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    """Every test writes under its own MEMSEG_DATA_DIR; also proves the variable relocates data."""
    monkeypatch.setenv("MEMSEG_DATA_DIR", str(tmp_path / "data"))


def test_known_download_infos():
    assert MVTEC_AD.sha256 == "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    assert MVTEC_AD.url.startswith("https://") and MVTEC_AD.url.endswith(MVTEC_AD.filename)
    assert DTD.url.endswith(DTD.filename) and len(DTD.sha256) == 64
    assert mvtec_category_info("bottle").url.endswith("/bottle.tar.xz")
    with pytest.raises(ValueError, match="bottel"):
        mvtec_category_info("bottel")


def test_checksum_match_and_mismatch(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"memseg")
    assert sha256_file(path) == hashlib.sha256(b"memseg").hexdigest()
    verify_checksum(path, hashlib.sha256(b"memseg").hexdigest().upper())  # case-insensitive
    verify_checksum(path, None)  # no published checksum: nothing to compare
    with pytest.raises(ChecksumError, match=r"file\.bin"):
        verify_checksum(path, hashlib.sha256(b"other").hexdigest())


def test_download_file_streams_verifies_and_renames(tmp_path):
    source = _make_tar(tmp_path / "source.tar.gz", {"a.txt": b"hello"})
    target = download_file(_info(source), tmp_path / "downloads", progress=False)
    assert target == tmp_path / "downloads" / "toy.tar.gz"
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["toy.tar.gz"]  # no .part left behind


def test_download_file_default_folder_follows_memseg_data_dir(tmp_path):
    source = tmp_path / "blob.bin"
    source.write_bytes(b"x" * 1000)
    target = download_file(_info(source, name="blob.bin"), progress=False)
    assert target == tmp_path / "data" / "downloads" / "blob.bin"


def test_download_checksum_mismatch_keeps_nothing(tmp_path):
    source = tmp_path / "blob.bin"
    source.write_bytes(b"corrupted")
    info = _info(source, sha256=hashlib.sha256(b"original").hexdigest(), name="blob.bin")
    with pytest.raises(ChecksumError, match="mismatch"):
        download_file(info, tmp_path / "downloads", progress=False)
    assert not (tmp_path / "downloads").exists()  # nothing kept, not even the folder it made


def test_missing_url_says_what_to_download_by_hand(tmp_path):
    info = DownloadInfo("toy dataset", (tmp_path / "gone.tar.gz").as_uri(), None, "gone.tar.gz")
    with pytest.raises(DownloadError) as caught:
        download_file(info, tmp_path / "downloads", progress=False)
    message = str(caught.value)
    assert info.url in message and str(tmp_path / "downloads" / "gone.tar.gz") in message
    assert "by hand" in message
    assert not (tmp_path / "downloads").exists()  # nothing kept, not even the folder it made


@pytest.mark.parametrize("dataset, archive", [("dtd", r"dtd-r1\.0\.1\.tar\.gz"), ("mtd", r"magnetic-tile-defect-datasets-master\.zip"),
                                              ("mvtec", r"bottle\.tar\.xz")])
def test_network_failure_gives_manual_instructions(tmp_path, monkeypatch, dataset, archive):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", offline)
    fetch = {"dtd": download_dtd, "mtd": download_module.download_mtd,
             "mvtec": lambda: download_module.download_mvtec("bottle")}[dataset]
    assert not (tmp_path / "data").exists()
    with pytest.raises(DownloadError, match=rf"name resolution(.|\n)*{archive}"):
        fetch()
    assert not (tmp_path / "data").exists()  # no empty folder made for nothing, no staging left


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    class Response:
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self, size):
            raise KeyboardInterrupt("user pressed stop")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: Response())
    info = DownloadInfo("toy dataset", "https://example.invalid/toy.tar.gz", None, "toy.tar.gz")
    with pytest.raises(KeyboardInterrupt):
        download_file(info, tmp_path / "downloads", progress=False)
    assert not (tmp_path / "downloads").exists()  # nothing kept, not even the folder it made
    with pytest.raises(KeyboardInterrupt):  # every folder it made goes, up to the one that was there
        download_file(info, tmp_path / "new" / "deeper" / "downloads", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "downloads").mkdir()
    with pytest.raises(KeyboardInterrupt):
        download_file(info, tmp_path / "downloads", progress=False)
    assert list((tmp_path / "downloads").iterdir()) == []  # a folder it found stays, even empty


class _Response:
    """What urlopen returns: ``body`` with ``headers``."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.stream, self.headers = io.BytesIO(body), headers

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def read(self, size):
        return self.stream.read(size)


def test_a_web_page_sent_instead_of_the_archive_is_refused(tmp_path, monkeypatch):
    """A moved link or a login page answers 200 with HTML: it must not be saved as the archive."""
    page = b"<!DOCTYPE html><html>Please sign in</html>"
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda *a, **k: _Response(page, {"Content-Type": "text/html; charset=utf-8"}))
    info = DownloadInfo("toy dataset", "https://example.invalid/toy.tar.xz", None, "toy.tar.xz")
    with pytest.raises(DownloadError, match=r"sent a text/html file, not the archive toy\.tar\.xz \(it starts "
                                            r"with b'<!DOCTYPE html><html>Ple'\).*link may have moved(.|\n)*by hand"):
        download_file(info, tmp_path / "downloads", progress=False)
    assert not (tmp_path / "downloads").exists()  # nothing kept, so the next call downloads again


def test_a_full_disk_is_not_called_a_download_failure(tmp_path, monkeypatch):
    """Downloading again or by hand cannot help when the disk is full or cannot be written."""
    archive = _make_tar(tmp_path / "toy.tar.gz", {"a.txt": b"hello"}).read_bytes()
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda *a, **k: _Response(archive, {"Content-Length": str(len(archive))}))

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "open", lambda *a, **k: FullDisk(), raising=False)
    info = DownloadInfo("toy dataset", "https://example.invalid/toy.tar.gz", None, "toy.tar.gz")
    with pytest.raises(DownloadError) as caught:
        download_file(info, tmp_path / "downloads", progress=False)
    assert str(caught.value) == (f"Could not save toy dataset in {tmp_path / 'downloads'}: No space left on device. "
                                 "Nothing was kept. Free some space there, or set MEMSEG_DATA_DIR to a folder on "
                                 "another disk, and run the same call again.")
    assert not (tmp_path / "downloads").exists()


def test_a_network_error_with_a_disk_like_errno_is_still_a_download_failure(tmp_path, monkeypatch):
    """ssl.SSLError is an OSError whose errno can be 1, EPERM's number: only local writes are the disk's."""
    import ssl

    class BrokenTls(_Response):
        def read(self, size):
            raise ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: BrokenTls(b"", {}))
    info = DownloadInfo("toy dataset", "https://example.invalid/toy.tar.gz", None, "toy.tar.gz")
    with pytest.raises(DownloadError, match=r"Could not download toy dataset .*DECRYPTION_FAILED(.|\n)*by hand"):
        download_file(info, tmp_path / "downloads", progress=False)


def test_a_folder_that_cannot_be_written_is_named_before_the_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded although the file could not be saved")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only disk (root ignores chmod)
    info = DownloadInfo("toy dataset", "https://example.invalid/toy.tar.gz", None, "toy.tar.gz")
    with pytest.raises(DownloadError, match=rf"Could not save toy dataset in {re.escape(str(tmp_path / 'd'))}: no "
                                            r"permission to write in .*Make it writable, or set MEMSEG_DATA_DIR"):
        download_file(info, tmp_path / "d", progress=False)


def test_a_download_larger_than_the_free_space_is_refused_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda *a, **k: _Response(b"", {"Content-Length": str(int(4.9e9))}))
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(9e9, 8e9, 1e9))
    info = DownloadInfo("toy dataset", "https://example.invalid/toy.tar.xz", None, "toy.tar.xz")
    with pytest.raises(DownloadError, match=rf"save toy dataset in {re.escape(str(tmp_path / 'downloads'))}: it "
                                            r"needs 4\.9 GB and 1\.0 GB are free\. Free some space"):
        download_file(info, tmp_path / "downloads", progress=False)
    assert not (tmp_path / "downloads").exists()


def test_unknown_url_scheme_is_a_download_error(tmp_path):
    info = DownloadInfo("toy dataset", "nonsense://toy", None, "toy.tar.gz")
    with pytest.raises(DownloadError, match="by hand"):
        download_file(info, tmp_path / "downloads", progress=False)


def test_file_placed_by_hand_is_verified_and_used(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("must not touch the network when the file is already there")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", offline)
    source = _make_tar(tmp_path / "hand.tar.gz", {"a.txt": b"hello"})
    placed = tmp_path / "downloads" / "toy.tar.gz"
    placed.parent.mkdir()
    placed.write_bytes(source.read_bytes())
    assert download_file(_info(source), tmp_path / "downloads") == placed
    placed.write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match="toy.tar.gz"):
        download_file(_info(source), tmp_path / "downloads")


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------
def test_tar_and_zip_extract(tmp_path):
    tar = _make_tar(tmp_path / "ok.tar.gz", {"top/a.txt": b"A", "top/sub/b.txt": b"B"})
    out = safe_extract(tar, tmp_path / "out_tar")
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"B"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zipped:
        zipped.writestr("top/a.txt", b"A")
    out = safe_extract(tmp_path / "ok.zip", tmp_path / "out_zip")
    assert (out / "top" / "a.txt").read_bytes() == b"A"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # staging folders removed


@pytest.mark.parametrize("evil", ["../evil.txt", "top/../../evil.txt", "/tmp/memseg_evil_abs.txt"])
def test_tar_escaping_members_are_rejected(tmp_path, evil):
    tar = _make_tar(tmp_path / "evil.tar", {"top/fine.txt": b"ok", evil: b"pwned"}, mode="w")
    destination = tmp_path / "inside" / "out"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(tar, destination)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "inside" / "evil.txt").exists()
    assert not Path("/tmp/memseg_evil_abs.txt").exists()
    assert not destination.exists()  # nothing was written, not even the harmless member


def test_tar_links_pointing_outside_are_rejected(tmp_path):
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        path = tmp_path / f"link{kind!r}.tar"
        with tarfile.open(path, "w") as tar:
            link = tarfile.TarInfo("top/link")
            link.type = kind
            link.linkname = "../../etc/passwd"
            tar.addfile(link)
        with pytest.raises(UnsafeArchiveError, match="outside"):
            safe_extract(path, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_tar_link_inside_is_allowed(tmp_path):
    path = tmp_path / "inner.tar"
    with tarfile.open(path, "w") as tar:
        data = tarfile.TarInfo("top/real.txt")
        data.size = 4
        tar.addfile(data, io.BytesIO(b"real"))
        link = tarfile.TarInfo("top/alias.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "real.txt"
        tar.addfile(link)
    out = safe_extract(path, tmp_path / "out")
    assert (out / "top" / "alias.txt").read_bytes() == b"real"


# The package's own member checks. On Python >= 3.11.4 tarfile's "data" filter refuses most of
# these by itself, so the tests above would pass with no check of ours; Python 3.10 (supported)
# may have no filter at all. These call the check directly, or extract with the filter turned off.
def _tar_of(path: Path, members: list[tuple[str, bytes, str]]) -> Path:
    """A tar of (name, type, link target) members, after a harmless regular file."""
    with tarfile.open(path, "w") as tar:
        real = tarfile.TarInfo("top/real.txt")
        real.size = 4
        tar.addfile(real, io.BytesIO(b"real"))
        for name, kind, linkname in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            tar.addfile(info)
    return path


def _check_tar(path: Path) -> None:
    with tarfile.open(path) as tar:
        download_module._check_tar_members(tar, path)


UNSAFE_NAMES = ["../evil.txt", "top/../../evil.txt", "/tmp/memseg_evil_abs.txt", "C:/evil.txt",
                "C:evil.txt", "c:\\evil.txt", "\\tmp\\evil.txt", "top\\..\\..\\evil.txt"]
OUTSIDE_LINKS = [
    ("top/link", tarfile.SYMTYPE, "../../etc/passwd"),
    ("top/link", tarfile.SYMTYPE, "/etc/passwd"),
    ("link", tarfile.SYMTYPE, "../outside.txt"),  # one level up from the root is already outside
    ("top/link", tarfile.SYMTYPE, "sub/../../../outside.txt"),
    ("top/link", tarfile.LNKTYPE, "../outside.txt"),  # hard links are relative to the archive root
    ("top/link", tarfile.LNKTYPE, "/etc/passwd"),
]
SPECIAL_FILES = [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_own_check_rejects_escaping_member_names(tmp_path, name):
    """'..', absolute paths and Windows drives ('C:') are refused by our check, not only tarfile's."""
    with pytest.raises(UnsafeArchiveError, match="member " + re.escape(repr(name)) + ".*outside the target"):
        download_module._check_member_path(name, tmp_path / "evil.tar")
    path = _tar_of(tmp_path / "evil.tar", [(name, tarfile.REGTYPE, "")])
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(name)) + ".*outside the target"):
        _check_tar(path)


@pytest.mark.parametrize(("name", "kind", "target"), OUTSIDE_LINKS,
                         ids=[f"{'sym' if k == tarfile.SYMTYPE else 'hard'}link:{t}" for _, k, t in OUTSIDE_LINKS])
def test_own_check_rejects_links_pointing_outside(tmp_path, name, kind, target):
    path = _tar_of(tmp_path / "links.tar", [(name, kind, target)])
    with pytest.raises(UnsafeArchiveError, match=f"link {re.escape(repr(name))} points outside"):
        _check_tar(path)


@pytest.mark.parametrize("kind", SPECIAL_FILES, ids=["char-device", "block-device", "fifo"])
def test_own_check_rejects_devices_and_pipes(tmp_path, kind):
    path = _tar_of(tmp_path / "special.tar", [("top/dev", kind, "")])
    with pytest.raises(UnsafeArchiveError, match="'top/dev' is a device or pipe"):
        _check_tar(path)


def test_own_check_accepts_a_harmless_archive(tmp_path):
    """Folders, files and links that stay inside (also through '..') must pass."""
    path = _tar_of(tmp_path / "fine.tar", [
        ("top/sub", tarfile.DIRTYPE, ""),
        ("top/sub/alias.txt", tarfile.SYMTYPE, "../real.txt"),
        ("top/hard.txt", tarfile.LNKTYPE, "top/real.txt"),
        ("top/a..b.txt", tarfile.REGTYPE, ""),  # dots in a name are not a '..' part
    ])
    _check_tar(path)  # does not raise
    for name in ("top/real.txt", "top/a..b.txt", "top/sub/x.png"):
        assert download_module._check_member_path(name, path) == PurePosixPath(name)


def remove_tar_filters(monkeypatch) -> None:
    """tarfile as on a Python without extraction filters: only the package's checks remain."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    if hasattr(tarfile, "fully_trusted_filter"):  # no default filter either (3.14's is "data")
        monkeypatch.setattr(tarfile.TarFile, "extraction_filter",
                            staticmethod(tarfile.fully_trusted_filter))


@pytest.fixture
def no_tar_filter(monkeypatch):
    remove_tar_filters(monkeypatch)


@pytest.mark.parametrize(("member", "reason"),
                         [(("../evil.txt", tarfile.REGTYPE, ""), "would be written outside"),
                          (("top/../../evil.txt", tarfile.REGTYPE, ""), "would be written outside"),
                          (OUTSIDE_LINKS[0], "points outside"), (OUTSIDE_LINKS[-2], "points outside"),
                          (("top/fifo", tarfile.FIFOTYPE, ""), "is a device or pipe")],
                         ids=["dotdot", "nested-dotdot", "symlink", "hardlink", "fifo"])
def test_unsafe_tar_is_rejected_without_tarfile_filter(tmp_path, no_tar_filter, member, reason):
    """With no extraction filter, safe_extract still refuses before writing anything, for its reason."""
    path = _tar_of(tmp_path / "evil.tar", [member])
    destination = tmp_path / "a" / "b" / "out"
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(path, destination)
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["evil.tar"]  # not even the folders made for it


def _tar_with_payloads(path: Path, members: list[tuple[str, bytes, str]]) -> Path:
    """A tar of (name, type, link target) members; regular files hold b"pwned"."""
    with tarfile.open(path, "w") as tar:
        for name, kind, linkname in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            if kind == tarfile.REGTYPE:
                info.size = 5
                tar.addfile(info, io.BytesIO(b"pwned"))
            else:
                tar.addfile(info)
    return path


SYM, HARD, FILE = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE
# Each link looks harmless on its own; together they lead outside the target (reviews found them).
LINK_CHAINS = {
    "member under a link": [("l1", SYM, "."), ("l1/l2", SYM, ".."), ("l2/outside.txt", FILE, "")],
    "file over a link": [("a", SYM, "."), ("b", SYM, "a/../outside.txt"), ("b", FILE, "")],
    "hard link through a link": [("a", SYM, "."), ("h", HARD, "a/../outside.txt"), ("h", FILE, "")],
    "link listed after its use": [("b", SYM, "a/../outside.txt"), ("a", SYM, "."), ("b", FILE, "")],
    "hard link to a link": [("l1", SYM, "."), ("h", HARD, "l1"), ("h/l2", SYM, ".."), ("l2/outside.txt", FILE, "")],
    "case-blind name": [("Lib", SYM, "."), ("lib/l2", SYM, ".."), ("l2/outside.txt", FILE, "")],
    "accent spelt twice": [("l\u00e9", SYM, "."), ("le\u0301/l2", SYM, ".."), ("l2/outside.txt", FILE, "")],  # one name on macOS
}


@pytest.mark.parametrize("members", LINK_CHAINS.values(), ids=LINK_CHAINS.keys())
def test_link_chains_cannot_escape_without_tarfile_filter(tmp_path, no_tar_filter, members):
    """On a Python without tarfile's data filter the package's own check is the only defence."""
    path = _tar_with_payloads(tmp_path / "chain.tar", members)
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError, match="could lead outside the target folder"):
        safe_extract(path, tmp_path / "a" / "b" / "out")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["a", "a/b", "chain.tar"]


def test_harmless_tar_extracts_without_tarfile_filter(tmp_path, no_tar_filter):
    path = _tar_of(tmp_path / "fine.tar", [("top/sub", tarfile.DIRTYPE, ""),
                                           ("top/sub/alias.txt", tarfile.SYMTYPE, "../real.txt")])
    out = safe_extract(path, tmp_path / "out")
    assert (out / "top" / "sub" / "alias.txt").read_bytes() == b"real"


def test_zip_escaping_member_is_rejected(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("top/fine.txt", b"ok")
        zipped.writestr("../evil.txt", b"pwned")
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        safe_extract(path, tmp_path / "inside" / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "inside" / "evil.txt").exists()
    assert not (tmp_path / "inside" / "out").exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DownloadError, match=r"neither a tar nor a zip.*[Dd]elete") as caught:
        safe_extract(path, tmp_path / "out")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.is_file() and not (tmp_path / "out").exists()


def _corrupt_zip(path: Path) -> Path:
    """A stored zip whose member bytes were changed after writing: its CRC no longer matches."""
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("top/a.txt", b"A" * 1000)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"A" * 10, b"B" * 10, 1))
    return path


@pytest.mark.parametrize("kind", ["tar.xz", "tar.gz", "tar.bz2", "zip"])
def test_truncated_or_corrupt_archive_is_a_download_error(tmp_path, kind):
    """Truncated or corrupt archives (EOFError, LZMAError, BadZipFile...) give one line, no traceback."""
    if kind == "zip":
        archive = _corrupt_zip(tmp_path / "bad.zip")
    else:
        full = _make_tar(tmp_path / f"full.{kind}", _toy_category(np.random.default_rng(0)),
                         mode="w:" + kind.split(".")[1])
        archive = tmp_path / f"bad.{kind}"
        archive.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DownloadError, match="[Dd]elete that file and download it again") as caught:
        safe_extract(archive, tmp_path / "out")
    assert str(archive) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def _save_by_hand(data: bytes, name: str) -> Path:
    """A file the user saved into the downloads folder, as the manual instructions say."""
    placed = download_module.downloads_dir() / name
    placed.parent.mkdir(parents=True, exist_ok=True)
    placed.write_bytes(data)
    return placed


def _offline_mvtec(monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("must use the file that is already there")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", offline)
    monkeypatch.setattr(download_module, "mvtec_category_info", lambda category: DownloadInfo(
        f"MVTec AD {category}", "https://example.invalid/x.tar.xz", None, f"{category}.tar.xz"))


def test_truncated_mvtec_archive_saved_by_hand(tmp_path, monkeypatch):
    _offline_mvtec(monkeypatch)
    full = _make_tar(tmp_path / "full.tar.xz", _toy_category(np.random.default_rng(0)), mode="w:xz")
    placed = _save_by_hand(full.read_bytes()[: full.stat().st_size // 2], "toy.tar.xz")
    root = tmp_path / "mv"
    with pytest.raises(DownloadError, match="[Dd]elete that file") as caught:
        download_mvtec("toy", root)
    assert str(placed) in str(caught.value)
    assert placed.is_file() and not root.exists()


def test_wrong_archive_saved_by_hand_is_kept_and_nothing_reaches_the_root(tmp_path, monkeypatch):
    _offline_mvtec(monkeypatch)
    wrong = _make_tar(tmp_path / "wrong.tar.xz", {"foo/bar.txt": b"?"}, mode="w:xz")
    placed = _save_by_hand(wrong.read_bytes(), "toy.tar.xz")
    root = tmp_path / "mv"
    with pytest.raises(DownloadError, match=r"toy/train/good(.|\n)*[Dd]elete") as caught:
        download_mvtec("toy", root)
    assert str(placed) in str(caught.value)
    assert placed.read_bytes() == wrong.read_bytes()  # kept until a check passes
    assert not root.exists()  # foo/ was not extracted into the dataset root


def test_garbage_saved_by_hand_says_to_delete_it(tmp_path, monkeypatch):
    _offline_mvtec(monkeypatch)
    placed = _save_by_hand(b"<html>Access denied</html>", "toy.tar.xz")
    with pytest.raises(DownloadError, match=r"neither a tar nor a zip.*[Dd]elete that file") as caught:
        download_mvtec("toy", tmp_path / "mv")
    assert str(placed) in str(caught.value) and placed.is_file()


# --------------------------------------------------------------------------------------------
# Dataset downloads end to end (served from file:// URLs)
# --------------------------------------------------------------------------------------------
def test_download_one_mvtec_category(tmp_path, monkeypatch):
    archive = _make_tar(tmp_path / "toy.tar.xz", _toy_category(np.random.default_rng(0)), mode="w:xz")
    monkeypatch.setattr(download_module, "mvtec_category_info",
                        lambda category: _info(archive, sha256=None, name=f"{category}.tar.xz"))
    root = download_mvtec("toy")
    assert root == tmp_path / "data" / "mvtec_anomaly_detection"
    test = MVTecDataset(root, "toy", "test", image_size=8)
    assert len(test) == 2 and test.labels.count(1) == 1
    assert not (tmp_path / "data" / "downloads" / "toy.tar.xz").exists()  # archive removed
    monkeypatch.setattr(download_module, "download_and_extract", None)  # second call: no download
    assert download_mvtec("toy") == root


def test_mvtec_archive_with_wrong_content_is_reported(tmp_path, monkeypatch):
    archive = _make_tar(tmp_path / "odd.tar.gz", {"something/else.txt": b"?"})
    monkeypatch.setattr(download_module, "mvtec_category_info",
                        lambda category: _info(archive, sha256=None, name="odd.tar.gz"))
    with pytest.raises(DownloadError, match="train/good"):
        download_mvtec("toy")


def test_mvtec_archive_with_an_empty_train_folder_is_reported(tmp_path, monkeypatch):
    """Folders alone are not MVTec AD: train/good must hold images, else the archive is wrong (and kept)."""
    path = tmp_path / "empty.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("toy", "toy/train", "toy/train/good", "toy/test"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
    monkeypatch.setattr(download_module, "mvtec_category_info",
                        lambda category: _info(path, sha256=None, name="toy.tar.gz"))
    with pytest.raises(DownloadError, match="toy/train/good with images"):
        download_mvtec("toy", tmp_path / "mv")
    assert (tmp_path / "data" / "downloads" / "toy.tar.gz").is_file() and not (tmp_path / "mv").exists()


def test_download_mvtec_replaces_an_incomplete_category_folder(tmp_path, monkeypatch):
    """A category folder without train/good (a copy by hand that stopped) is fetched again and replaced."""
    archive = _make_tar(tmp_path / "toy.tar.gz", _toy_category(np.random.default_rng(0)))
    monkeypatch.setattr(download_module, "mvtec_category_info",
                        lambda category: _info(archive, sha256=None, name=f"{category}.tar.gz"))
    root = tmp_path / "mv"
    (root / "toy" / "test" / "good").mkdir(parents=True)
    (root / "toy" / "test" / "good" / "stale.png").write_bytes(b"half")
    assert download_mvtec("toy", root) == root
    assert len(MVTecDataset(root, "toy", "test", image_size=8)) == 2
    assert not (root / "toy" / "test" / "good" / "stale.png").exists()


def test_the_full_mvtec_archive_keeps_the_complete_categories_already_there(tmp_path, monkeypatch):
    """The full archive brings every category: one already complete, with the user's own files, stays as it is."""
    rng = np.random.default_rng(0)
    archive = _make_tar(tmp_path / "all.tar.xz", {**_toy_category(rng, "toy"), **_toy_category(rng, "other"),
                                                  "license.txt": b"CC BY-NC-SA 4.0"}, mode="w:xz")
    monkeypatch.setattr(download_module, "MVTEC_CATEGORIES", ("toy", "other"))
    monkeypatch.setattr(download_module, "MVTEC_AD", _info(archive, name="all.tar.xz"))
    root = tmp_path / "mv"
    for name, data in _toy_category(rng, "toy").items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    kept = {p: p.read_bytes() for p in root.rglob("*.png")}
    (root / "toy" / "train" / "good" / "mine.png").write_bytes(b"my own image")
    assert download_mvtec(None, root) == root
    assert (root / "toy" / "train" / "good" / "mine.png").read_bytes() == b"my own image"
    assert all(path.read_bytes() == data for path, data in kept.items())  # not the archive's copies
    assert len(MVTecDataset(root, "other", "test", image_size=8)) == 2
    assert sorted(p.name for p in root.iterdir()) == ["license.txt", "other", "toy"]  # no staging left
    monkeypatch.setattr(download_module, "download_and_extract", None)  # all complete now: no download
    assert download_mvtec(None, root) == root


class _DroppedResponse:
    """A response that says it has 100 bytes and delivers 40: chunked (raising, as http.client does
    for a cut chunked stream) or with a Content-Length (simply ending early)."""

    def __init__(self, chunked: bool) -> None:
        self.chunked, self.sent = chunked, False
        self.headers = {} if chunked else {"Content-Length": "100"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def read(self, size):
        if self.sent:
            if self.chunked:
                raise http.client.IncompleteRead(b"", 60)
            return b""
        self.sent = True
        return b"PK" + b"x" * 38  # a zip's start (MTD is a zip), then cut


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_dropped_download_is_a_download_error_and_keeps_nothing(tmp_path, monkeypatch, chunked):
    """GitHub sends the MTD archive chunked; a cut connection must give the by-hand instructions,
    and a short file must never reach the final name (there is no checksum to catch it later)."""
    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda *a, **k: _DroppedResponse(chunked))
    folder = tmp_path / "downloads"
    with pytest.raises(DownloadError, match="Download it by hand") as caught:
        download_module.download_file(download_module.MTD, folder, progress=False)
    assert ("dropped after 40 bytes" if chunked else "dropped after 40 of 100 bytes") in str(caught.value)
    assert download_module.MTD.sha256 is None and not folder.exists()


def test_download_dtd_returns_images_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    archive = _make_tar(tmp_path / "dtd.tar.gz", {"dtd/images/banded/banded_0001.jpg": _png_bytes(rng),
                                                  "dtd/labels/labels_joint_anno.txt": b""})
    monkeypatch.setattr(download_module, "DTD", _info(archive, name="dtd-r1.0.1.tar.gz"))
    images = download_dtd()
    assert images == tmp_path / "data" / "dtd" / "images"
    assert (images / "banded" / "banded_0001.jpg").is_file()


def _offer_mtd_zip(path: Path, counts: dict[str, int], monkeypatch) -> None:
    """A small MTD archive (``counts`` images with masks per folder) as what download_mtd fetches."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zipped:
        for folder, count in counts.items():
            for i in range(count):
                stem = f"Magnetic-tile-defect-datasets.-master/{folder}/Imgs/exp{i}"
                zipped.writestr(f"{stem}.jpg", cv2.imencode(".jpg", rng.integers(0, 255, (20, 30), dtype=np.uint8))[1].tobytes())
                zipped.writestr(f"{stem}.png", _png_bytes(rng, grey=True))
    monkeypatch.setattr(download_module, "MTD", _info(path, sha256=None, name="mtd.zip"))
    monkeypatch.setattr(download_module, "MTD_IMAGE_COUNTS", counts)


def test_download_mtd_checks_content_and_writes_split(tmp_path, monkeypatch):
    counts = {"MT_Free": 5, "MT_Blowhole": 1, "MT_Break": 1, "MT_Crack": 1, "MT_Fray": 1, "MT_Uneven": 1}
    _offer_mtd_zip(tmp_path / "mtd.zip", counts, monkeypatch)
    root = download_module.download_mtd()
    assert root == tmp_path / "data" / "mtd"
    assert sorted(p.name for p in root.parent.iterdir()) == ["downloads", "mtd"]  # no staging left
    assert not any((root.parent / "downloads").iterdir())  # the archive is deleted once the copy is in place
    lines = (root / "split.csv").read_text().splitlines()
    assert lines[0] == "split,label,image,mask" and len(lines) == 1 + 10
    assert sum(line.startswith("train,good") for line in lines) == 4  # floor(0.8 * 5)

    monkeypatch.setattr(download_module, "MTD_IMAGE_COUNTS", {**counts, "MT_Free": 6})
    with pytest.raises(DownloadError, match="MT_Free: 5 images, expected 6"):
        download_module.check_mtd_folder(root)


def test_mtd_archive_survives_a_failed_final_move(tmp_path, monkeypatch):
    """The archive is deleted only after the extracted copy is in place: nothing downloaded is lost."""
    _offer_mtd_zip(tmp_path / "mtd.zip", dict.fromkeys(download_module.MTD_IMAGE_COUNTS, 1), monkeypatch)

    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target) == tmp_path / "data" / "mtd":  # only the final move of the extracted copy
            raise PermissionError("no permission to move it")
        real_replace(source, target)

    monkeypatch.setattr(download_module.os, "replace", failing_replace)
    with pytest.raises(PermissionError, match="no permission to move it"):
        download_module.download_mtd(keep_archive=False)
    monkeypatch.undo()
    assert (tmp_path / "data" / "downloads" / "mtd.zip").is_file()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]


def test_mtd_images_without_masks_are_reported(tmp_path, monkeypatch):
    """Every MTD image needs its .png mask: without it a defective tile could not be scored."""
    monkeypatch.setattr(download_module, "MTD_IMAGE_COUNTS", dict.fromkeys(download_module.MTD_IMAGE_COUNTS, 1))
    for folder in download_module.MTD_IMAGE_COUNTS:
        (tmp_path / folder / "Imgs").mkdir(parents=True)
        (tmp_path / folder / "Imgs" / "exp1_num_1.jpg").write_bytes(b"jpg")
        if folder != "MT_Crack":
            (tmp_path / folder / "Imgs" / "exp1_num_1.png").write_bytes(b"png")
    with pytest.raises(DownloadError, match=r"MT_Crack: 1 images without a \.png mask \(e\.g\. exp1_num_1\.jpg\)"):
        download_module.check_mtd_folder(tmp_path)


def test_mtd_archive_with_wrong_content_is_kept_and_root_not_created(tmp_path, monkeypatch):
    path = tmp_path / "mtd.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("Magnetic-tile-defect-datasets.-master/README.md", b"no images here")
    monkeypatch.setattr(download_module, "MTD", _info(path, sha256=None, name="mtd.zip"))
    with pytest.raises(DownloadError, match=r"MT_Free: 0 images(.|\n)*[Dd]elete"):
        download_module.download_mtd(keep_archive=False)
    assert (tmp_path / "data" / "downloads" / "mtd.zip").is_file()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]


def test_mtd_into_a_used_folder_is_refused_before_the_download(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the root could not take the result")

    monkeypatch.setattr(download_module, "download_and_extract", no_download)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("x")
    with pytest.raises(DownloadError, match="holds no MTD copy: give an empty or new folder"):
        download_module.download_mtd(tmp_path / "used")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


def test_mtd_fills_an_existing_empty_root_in_place(tmp_path, monkeypatch):
    """An empty root (a mount point, a folder on another disk) is filled, not replaced: its parent is
    never written, and a move that fails half-way leaves it empty again."""
    counts = dict.fromkeys(download_module.MTD_IMAGE_COUNTS, 1)
    _offer_mtd_zip(tmp_path / "mtd.zip", counts, monkeypatch)
    root = tmp_path / "mount" / "mtd"
    (root / "lost+found").mkdir(parents=True)  # what an ext4 mount point holds: not "used"
    real_replace, calls, failed = os.replace, [], []

    def replace(source, target):
        assert Path(target).parent != root.parent, "wrote beside the root"
        if Path(target).parent == root:
            calls.append(target)
            if len(calls) == 3 and not failed:
                failed.append(target)
                raise PermissionError("no permission to move it")
        real_replace(source, target)

    monkeypatch.setattr(download_module.os, "replace", replace)
    with pytest.raises(PermissionError, match="no permission"):
        download_module.download_mtd(root)
    assert [p.name for p in root.iterdir()] == ["lost+found"] and (tmp_path / "data" / "downloads" / "mtd.zip").is_file()
    inode, calls[:] = root.stat().st_ino, []
    assert download_module.download_mtd(root) == root
    assert root.stat().st_ino == inode and sorted(p.name for p in root.parent.iterdir()) == ["mtd"]
    assert {p.name for p in root.iterdir()} == {*counts, "split.csv", "lost+found"}
    assert Path(calls[-1]).name == "MT_Free"  # the mark of a complete copy comes last


def test_mtd_extraction_stages_inside_the_download_staging_folder(tmp_path, monkeypatch):
    """A killed download_mtd leaves one staging folder (removed by the next run), not two."""
    seen = []

    def interrupted_unpack(archive, staging):
        seen.append(staging)
        raise KeyboardInterrupt

    path = tmp_path / "mtd.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("Magnetic-tile-defect-datasets.-master/README.md", b"x")
    monkeypatch.setattr(download_module, "MTD", _info(path, sha256=None, name="mtd.zip"))
    monkeypatch.setattr(download_module, "_unpack", interrupted_unpack)
    with pytest.raises(KeyboardInterrupt):
        download_module.download_mtd()
    (extract_staging,) = seen
    outer = extract_staging.parent.parent  # inside .../archive, the extraction's destination
    assert outer.parent == tmp_path / "data" and outer.name.startswith(".mtd.download-")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["downloads"]  # Ctrl-C cleaned up
