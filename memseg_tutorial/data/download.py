"""Downloading the real datasets: streamed, checksummed, renamed into place, extracted safely.

Everything lands under ``data_dir()`` (``$MEMSEG_DATA_DIR`` moves it; archives go to
``data_dir()/downloads``). When a download fails, the error says which file to fetch by hand and
where to put it: the functions verify and use a file that is already there.

URLs and SHA-256 sums are the ones published by the dataset owners and used by anomalib
(MVTec AD, DTD). Per-category MVTec archives and the MTD GitHub archive have no published
checksum: they are checked by their content (folders and image counts) after extraction into a
staging folder, before anything reaches the dataset root and before the archive is deleted.
A truncated, corrupt or wrong archive raises :class:`DownloadError` saying to delete that file.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import unicodedata
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..paths import data_dir
from ..staging import remove_abandoned, staging_dir, writable_problem

CHUNK_SIZE = 1 << 20
# What reading a truncated or corrupt archive raises (tarfile.TarError includes ReadError).
_CORRUPT_ARCHIVE_ERRORS = (EOFError, tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error,
                           gzip.BadGzipFile)
# Python >= 3.11.4: what the "data" extraction filter raises (a TarError, but not corruption).
_TAR_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
# How each kind of archive starts: a web page served instead (a moved link, a login or captive
# portal) is caught on its first bytes, before it can be saved under the archive's name.
_ARCHIVE_MAGIC = {".xz": b"\xfd7zXZ\x00", ".gz": b"\x1f\x8b", ".zip": b"PK"}
# A full disk (else a local write fails for want of permission, or a read-only disk).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class DownloadInfo:
    """Where a dataset archive lives and how to recognise it."""

    name: str
    url: str
    sha256: str | None  # None: no stable published checksum (see the module docstring)
    filename: str
    homepage: str = ""


MVTEC_AD = DownloadInfo(
    name="MVTec AD",
    url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/"
    "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    filename="mvtec_anomaly_detection.tar.xz",
    homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
)
# Per-category archives in the same share (file ids as published by MVTec); one category is a fraction of the ~5 GB.
_MVTEC_CATEGORY_IDS = {
    "bottle": "420937370-1629958698",
    "cable": "420937413-1629958794",
    "capsule": "420937454-1629958872",
    "carpet": "420937484-1629959013",
    "grid": "420937487-1629959044",
    "hazelnut": "420937545-1629959162",
    "leather": "420937607-1629959262",
    "metal_nut": "420937637-1629959294",
    "pill": "420938129-1629960351",
    "screw": "420938130-1629960389",
    "tile": "420938133-1629960456",
    "toothbrush": "420938134-1629960477",
    "transistor": "420938166-1629960554",
    "wood": "420938383-1629960649",
    "zipper": "420938385-1629960680",
}
MVTEC_CATEGORIES = tuple(_MVTEC_CATEGORY_IDS)
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")

DTD = DownloadInfo(
    name="DTD (Describable Textures Dataset)",
    url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
    sha256="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
    filename="dtd-r1.0.1.tar.gz",
    homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
)

# GitHub builds branch archives on the fly; their bytes (and so any checksum) are not stable.
# The content is checked instead: the six MT_* folders and their image and mask counts.
MTD = DownloadInfo(
    name="Magnetic Tile Defect dataset",
    url="https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip",
    sha256=None,
    filename="magnetic-tile-defect-datasets-master.zip",
    homepage="https://github.com/abin24/Magnetic-tile-defect-datasets.",
)
MTD_IMAGE_COUNTS = {"MT_Free": 952, "MT_Blowhole": 115, "MT_Break": 85, "MT_Crack": 57,
                    "MT_Fray": 32, "MT_Uneven": 103}


class DownloadError(RuntimeError):
    """A download failed; the message says how to get the file by hand."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the published one."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


def mvtec_category_info(category: str) -> DownloadInfo:
    """The archive of one MVTec AD category (no published checksum: checked by content)."""
    if category not in _MVTEC_CATEGORY_IDS:
        raise ValueError(f"Unknown MVTec AD category {category!r}; choose from {MVTEC_CATEGORIES}.")
    return DownloadInfo(
        name=f"MVTec AD {category}",
        url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/"
        f"download/{_MVTEC_CATEGORY_IDS[category]}/{category}.tar.xz",
        sha256=None,
        filename=f"{category}.tar.xz",
        homepage=MVTEC_AD.homepage,
    )


def downloads_dir() -> Path:
    """Where archives are saved: ``data_dir()/downloads``."""
    return data_dir() / "downloads"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, expected: str | None) -> None:
    """Raise :class:`ChecksumError` when ``path`` does not hash to ``expected`` (None: no check)."""
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"Checksum mismatch for {path}: expected SHA-256 {expected}, got {actual}. "
            "The file is incomplete or a different version: delete it and download it again."
        )


def _manual_instructions(info: DownloadInfo, target: Path) -> str:
    lines = [
        f"Download it by hand: open {info.url}",
        f"  (dataset page: {info.homepage})" if info.homepage else "",
        f"and save the file as {target}",
        "then run the same call again: it checks the file that is already there and extracts it.",
    ]
    return "\n".join(line for line in lines if line)


def download_file(info: DownloadInfo, folder: str | Path | None = None, timeout: float = 60.0,
                  progress: bool = True) -> Path:
    """Fetch ``info.url`` into ``folder/info.filename`` (default ``downloads_dir()``).

    Streams into a hidden staging folder beside it (``.<filename>.part-...``) with a progress bar,
    hashes on the way, verifies the checksum, then moves the file into place: the final name exists
    only for a complete, verified file. A file already at the final name is verified and reused.
    A web page sent instead of the archive, and a disk too small for it, are refused before the
    stream is saved; a full or read-only disk is reported as such (downloading again cannot help).
    """
    folder = Path(folder) if folder is not None else downloads_dir()
    target = folder / info.filename
    if target.is_file():
        verify_checksum(target, info.sha256)
        return target
    problem = writable_problem(target)
    if problem is not None:  # a read-only disk or folder: before the download, and not called a network error
        raise DownloadError(f"Could not save {info.name} in {folder}: {problem}. Make it writable, or set "
                            "MEMSEG_DATA_DIR to a folder on another disk, and run the same call again.")
    digest = hashlib.sha256()
    try:
        with staging_dir(target, "part") as staging:  # locked while it downloads; removed after
            partial = staging / info.filename
            with urllib.request.urlopen(info.url, timeout=timeout) as response, _local(open, partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                _check_free_space(info, staging, total)
                received, cut = 0, False
                with tqdm(total=total, unit="B", unit_scale=True, desc=info.filename, disable=not progress) as bar:
                    try:
                        for block in iter(lambda: response.read(CHUNK_SIZE), b""):
                            if received == 0:
                                _check_archive_start(info, target, block, response.headers.get("Content-Type"))
                            _local(out.write, block)
                            digest.update(block)
                            received += len(block)
                            bar.update(len(block))
                    except http.client.IncompleteRead:  # a cut chunked stream (GitHub's archives)
                        cut = True
            if cut or (total is not None and received != total):  # a cut sized stream just ends
                of_total = f" of {total:,}" if total is not None else ""
                raise _download_error(info, target, f"the connection dropped after {received:,}{of_total} bytes; "
                                                    "nothing was kept")
            actual = digest.hexdigest()
            if info.sha256 is not None and actual != info.sha256.lower():
                raise ChecksumError(
                    f"Checksum mismatch for {info.name} from {info.url}: expected SHA-256 {info.sha256}, "
                    f"got {actual}. The download was incomplete or the file changed; nothing was kept.\n"
                    + _manual_instructions(info, target)
                )
            _local(os.replace, partial, target)
    except (ChecksumError, DownloadError):
        raise
    except _LocalWriteError as wrapped:  # the disk, not the network: fetching the file again cannot help
        error = wrapped.error
        remedy = "Free some space there" if error.errno in _FULL_ERRNOS else "Make it writable"
        raise DownloadError(f"Could not save {info.name} in {folder}: {error.strerror or error}. Nothing "
                            f"was kept. {remedy}, or set MEMSEG_DATA_DIR to a folder on another disk, and "
                            "run the same call again.") from error
    except OSError as error:
        raise _download_error(info, target, getattr(error, "reason", None) or error) from error
    except (http.client.HTTPException, ValueError) as error:  # ValueError: unknown url type
        raise _download_error(info, target, error) from error
    return target


class _LocalWriteError(Exception):
    """An OSError of the local disk while a download is saved (a network error is an OSError too)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _local(function, *args):
    """``function(*args)``, a write to the local disk: its OSError becomes a :class:`_LocalWriteError`."""
    try:
        return function(*args)
    except OSError as error:
        raise _LocalWriteError(error) from error


def _check_free_space(info: DownloadInfo, folder: Path, size: int | None) -> None:
    """Refuse at once a download that cannot fit, rather than after gigabytes of it."""
    if size is None:
        return
    free = shutil.disk_usage(folder).free
    if free < size:
        raise DownloadError(f"Could not save {info.name} in {folder.parent}: it needs {size / 1e9:.1f} GB and "
                            f"{free / 1e9:.1f} GB are free. Free some space there, or set MEMSEG_DATA_DIR to a "
                            "folder on another disk, and run the same call again.")


def _check_archive_start(info: DownloadInfo, target: Path, first: bytes, content_type: str | None) -> None:
    """Refuse what is not the expected kind of archive: most often a web page (moved link, login)."""
    magic = _ARCHIVE_MAGIC.get(Path(info.filename).suffix)
    if magic is not None and not first.startswith(magic):
        sent = f"a {content_type.split(';')[0]} file" if content_type else "a file"
        raise _download_error(info, target, f"the server sent {sent}, not the archive {info.filename} (it "
                                            f"starts with {first[:24]!r}), perhaps a web page: the link may "
                                            "have moved; nothing was kept")


def _download_error(info: DownloadInfo, target: Path, reason: object) -> DownloadError:
    return DownloadError(f"Could not download {info.name} from {info.url}: {reason}.\n"
                         + _manual_instructions(info, target))


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------
def _check_member_path(name: str, archive: Path) -> PurePosixPath:
    """Reject absolute paths, drive letters and ``..`` parts: members must stay inside."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: member {name!r} would be written outside the target folder."
        )
    return path


def _escapes(path: PurePosixPath) -> bool:
    """Whether a path relative to the target folder (a member's link target) leads out of it."""
    return path.is_absolute() or ".." in PurePosixPath(os.path.normpath(str(path))).parts


def _key(path: PurePosixPath | str) -> str:
    """A member path as the file system may see it: normalised, case-blind (macOS, Windows) and
    with one Unicode spelling per accented name (macOS treats "é" and "e" + accent as one name)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", os.path.normpath(str(path))).casefold())


def _check_tar_members(tar: tarfile.TarFile, archive: Path) -> None:
    """Refuse any member that could write outside the target folder, before anything is written.

    Links are the hard part: a link that points inside on its own can lead outside through
    another link, so no path may pass through a symbolic link of the archive (in any order), no
    file may replace one, and a hard link may only alias a regular file listed before it.
    """
    members = tar.getmembers()
    symlinks = {_key(_check_member_path(m.name, archive)) for m in members if m.issym()}
    files: set[str] = set()

    def refuse(problem: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"Refusing to extract {archive}: {problem}, which could lead outside "
                                  f"the target folder.")

    def first_symlink_on(path: PurePosixPath) -> str | None:
        """The first symbolic link that ``path`` passes through (its own name excluded)."""
        return next((str(p) for p in reversed(path.parents) if str(p) != "." and _key(p) in symlinks), None)

    for member in members:
        path = _check_member_path(member.name, archive)
        through = first_symlink_on(PurePosixPath(os.path.normpath(str(path))))
        if through is not None:
            raise refuse(f"member {member.name!r} lies under the symbolic link {through!r}")
        if not member.issym() and _key(path) in symlinks:
            raise refuse(f"member {member.name!r} has the name of a symbolic link in the archive")
        if member.issym():
            link = PurePosixPath(member.linkname.replace("\\", "/"))
            target = path.parent / link  # as written: every step of it must be a real folder
            if link.is_absolute() or _escapes(target):
                raise refuse(f"link {member.name!r} points outside the target folder ({member.linkname!r})")
            for step in target.parents[:-1]:  # every folder on the way, not "." itself
                if _key(step) in symlinks and step != path:
                    raise refuse(f"link {member.name!r} points through the symbolic link {str(step)!r}")
            if _key(target) in symlinks:
                raise refuse(f"link {member.name!r} points to the symbolic link {member.linkname!r}")
        elif member.islnk():
            target = PurePosixPath(member.linkname.replace("\\", "/"))
            if _escapes(target):
                raise refuse(f"link {member.name!r} points outside the target folder ({member.linkname!r})")
            if _key(target) not in files:
                raise refuse(f"hard link {member.name!r} does not point to a regular file listed before it "
                             f"({member.linkname!r})")
        elif member.isfile():
            files.add(_key(path))
        elif not member.isdir():
            raise UnsafeArchiveError(f"Refusing to extract {archive}: member {member.name!r} is a device or pipe.")


def _bad_archive(archive: Path, problem: str) -> DownloadError:
    return DownloadError(f"Cannot extract {archive}: {problem}. Delete that file and download it again.")


def _unpack(archive: Path, staging: Path) -> None:
    """Check every member of a tar (any compression) or zip, then unpack it into ``staging``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                _check_member_path(name, archive)
            zipped.extractall(staging)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tar:
            _check_tar_members(tar, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)  # noqa: S202 (members checked above)
    else:
        raise _bad_archive(archive, "it is neither a tar nor a zip archive, or it is truncated")


def safe_extract(archive: str | Path, destination: str | Path,
                 check: Callable[[Path], None] | None = None, keep: frozenset[str] = frozenset()) -> Path:
    """Extract a tar (any compression) or zip archive into ``destination``, safely and atomically.

    Every member is checked before anything is written. The archive is unpacked into a hidden
    staging folder inside ``destination`` (on its disk, however it is mounted or linked: a rename
    cannot cross disks); ``check`` (which raises to reject) inspects that folder, and only then is
    each top-level entry renamed into place, replacing one of the same name unless that name is in
    ``keep``. So an interrupted extraction, or an archive with the wrong content, never leaves
    files in ``destination``. A truncated or corrupt archive raises :class:`DownloadError` naming
    the file to delete.
    """
    archive, destination = Path(archive), Path(destination)
    remove_abandoned(destination, "extract")  # what a killed extraction left beside it (staged there before 2026-11-28)
    # Locked while it is written and removed after; a destination made for it goes again if it fails.
    with staging_dir(destination / archive.name, "extract") as staging:
        try:
            _unpack(archive, staging)
        except _TAR_FILTER_ERRORS as error:
            raise UnsafeArchiveError(f"Refusing to extract {archive}: {error}.") from error
        except _CORRUPT_ARCHIVE_ERRORS as error:
            raise _bad_archive(archive, f"it is truncated or corrupt ({type(error).__name__}: {error})") from error
        if check is not None:
            check(staging)
        for entry in sorted(staging.iterdir()):
            final = destination / entry.name
            if entry.name in keep and final.exists():
                continue
            if final.exists():
                if final.is_dir() and entry.is_dir():
                    shutil.rmtree(final)
                else:
                    final.unlink()
            os.replace(entry, final)
    return destination


def download_and_extract(info: DownloadInfo, destination: str | Path, keep_archive: bool = False,
                         progress: bool = True,
                         content_problem: Callable[[Path], str | None] | None = None,
                         keep: frozenset[str] = frozenset()) -> Path:
    """Download (or reuse) ``info``'s archive, verify it and extract it into ``destination``.

    ``content_problem`` looks at the extracted folder and says what is wrong with it (None: it
    is fine). It runs before anything reaches ``destination``, and the archive is deleted only
    after it passes: a wrong file saved by hand is reported, not half-used and lost. Top-level
    entries named in ``keep`` that ``destination`` already holds are left as they are.
    """
    archive = download_file(info, progress=progress)

    def check(folder: Path) -> None:
        problem = content_problem(folder) if content_problem is not None else None
        if problem:
            raise DownloadError(
                f"{archive} is not the {info.name} archive that was expected: {problem}. "
                "Delete that file and download it again.\n" + _manual_instructions(info, archive)
            )

    safe_extract(archive, destination, check=check, keep=keep)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return Path(destination)


# --------------------------------------------------------------------------------------------
# The datasets
# --------------------------------------------------------------------------------------------
def _mvtec_problem(folder: Path, categories: tuple[str, ...]) -> str | None:
    """What keeps ``folder`` from being an MVTec AD root with ``categories`` (None: nothing)."""
    for category in categories:
        train = folder / category / "train" / "good"
        if not (train.is_dir() and any(train.iterdir()) and (folder / category / "test").is_dir()):
            return f"it holds no {category}/train/good with images and {category}/test"
    return None


def download_mvtec(category: str | None = None, root: str | Path | None = None,
                   keep_archive: bool = False) -> Path:
    """MVTec AD in ``root`` (default ``data_dir()/mvtec_anomaly_detection``); returns the root.

    ``category`` fetches only that category's archive (recommended: the full archive is 4.9 GB).
    Complete categories already present are not downloaded again, and the full archive leaves
    them as they are (with any files added to them); an incomplete one is replaced.
    Licence: CC BY-NC-SA 4.0.
    """
    root = Path(root) if root is not None else data_dir() / "mvtec_anomaly_detection"
    categories = MVTEC_CATEGORIES if category is None else (category,)
    complete = frozenset(c for c in categories if _mvtec_problem(root, (c,)) is None)
    if len(complete) == len(categories):
        return root
    info = MVTEC_AD if category is None else mvtec_category_info(category)
    download_and_extract(info, root, keep_archive=keep_archive, keep=complete,
                         content_problem=lambda folder: _mvtec_problem(folder, categories))
    return root


def _dtd_problem(folder: Path) -> str | None:
    return None if (folder / "dtd" / "images").is_dir() else "it holds no dtd/images folder"


def download_dtd(root: str | Path | None = None, keep_archive: bool = False) -> Path:
    """DTD (5640 texture photos, 47 classes); returns its ``images`` folder for :class:`TextureSource`."""
    root = Path(root) if root is not None else data_dir()
    images = root / "dtd" / "images"
    if not images.is_dir():
        download_and_extract(DTD, root, keep_archive=keep_archive, content_problem=_dtd_problem)
    return images


def _mtd_problems(folder: Path) -> list[str]:
    """What is missing from a MTD folder: per MT_* class, image count and one mask per image."""
    problems = []
    for name, expected in MTD_IMAGE_COUNTS.items():
        images = sorted((folder / name / "Imgs").glob("*.jpg"))
        if len(images) != expected:
            problems.append(f"{name}: {len(images)} images, expected {expected}")
        missing = [p.name for p in images if not p.with_suffix(".png").is_file()]
        if missing:
            problems.append(f"{name}: {len(missing)} images without a .png mask (e.g. {missing[0]})")
    return problems


def check_mtd_folder(folder: str | Path) -> None:
    """Verify a MTD folder by content: each MT_* class with its image count and one mask per image."""
    folder = Path(folder)
    problems = _mtd_problems(folder)
    if problems:
        raise DownloadError(f"{folder} is not a complete MTD copy: " + "; ".join(problems) + ".")


def _mtd_source(folder: Path) -> Path:
    """The MT_* classes' parent in an extracted MTD archive: its single top folder, or itself."""
    tops = [p for p in folder.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 and not (folder / "MT_Free").is_dir() else folder


def _mtd_problem(folder: Path) -> str | None:
    return "; ".join(_mtd_problems(_mtd_source(folder))) or None


def _move_contents(source: Path, folder: Path) -> None:
    """Move everything in ``source`` into the existing ``folder``: all of it, or on an error none.

    MT_Free goes last: it marks a complete copy (a process killed half-way leaves none, and the
    next run says the folder is in use rather than take it for a copy)."""
    moved = []
    try:
        for entry in sorted(source.iterdir(), key=lambda path: (path.name == "MT_Free", path.name)):
            os.replace(entry, folder / entry.name)
            moved.append(folder / entry.name)
    except BaseException:
        for path in moved:  # copies from the archive, which is kept: the folder is left as it was
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def download_mtd(root: str | Path | None = None, keep_archive: bool = False) -> Path:
    """The Magnetic Tile Defect dataset in ``root`` (default ``data_dir()/mtd``), with a split.csv.

    Checked by content (no stable archive checksum exists). When the folder has no ``split.csv``,
    one is written with :func:`memseg_tutorial.data.mtd.write_mtd_split`.
    """
    from .mtd import SPLIT_FILE, write_mtd_split

    root = Path(root) if root is not None else data_dir() / "mtd"
    if not (root / "MT_Free").is_dir():
        # An existing empty root (a mount point, a folder on another disk) is filled, never replaced:
        # it is staged in, as a rename cannot cross disks, and its parent need not be writable.
        inside = root.is_dir()
        staged = root / MTD.filename if inside else root
        if inside:
            remove_abandoned(staged, "download")  # what a killed run left in it does not make it "used"
        mine = f".{staged.name}.download-"
        if root.exists() and (not inside or any(not p.name.startswith(mine) and p.name != "lost+found"
                                                for p in root.iterdir())):  # an ext4 mount point's own folder
            raise DownloadError(f"{root} exists and holds no MTD copy: give an empty or new folder as the root.")
        with staging_dir(staged, "download") as staging:  # the extraction stages inside: one folder to clean
            # The archive stays until the copy is in place: a failed move must not cost the download.
            extracted = download_and_extract(MTD, staging / "archive", keep_archive=True,
                                             content_problem=_mtd_problem)
            source = _mtd_source(extracted)
            if inside:
                _move_contents(source, root)
            else:
                os.replace(source, root)
        if not keep_archive:
            (downloads_dir() / MTD.filename).unlink(missing_ok=True)
    check_mtd_folder(root)
    if not (root / SPLIT_FILE).is_file():
        write_mtd_split(root)
    return root
