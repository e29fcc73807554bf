"""A small offline dataset in MVTec AD layout that the package draws itself, in about a second.

Two categories, so that both branches of MemSeg's synthesis are exercised:

* ``surface`` (kind ``texture``): a woven, brushed plate that fills the whole image;
* ``object`` (kind ``object``): a bright machined washer on a dark bench; the foreground mask
  matters here, because anomalies must land on the washer, not on the bench.

Normal images vary in the way real captures vary (texture phase and orientation, position,
size, lighting) but look alike, so a memory bank of normals is meaningful. Test defects are
drawn by their own procedures (jittered polylines for scratches and cracks, shaded ellipses for
holes, blurred blobs for stains, cut-outs for missing pieces). They deliberately share nothing
with the training-time anomaly synthesis (no Perlin noise, no pasted textures, no shuffled
grids): evaluating on defects made the same way as the training anomalies would be circular.

Everything comes from ``make_rng(seed, ...)``, so one seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ..paths import data_dir
from ..seeding import make_rng
from ..staging import staging_dir

SAMPLE_CATEGORIES: dict[str, str] = {"surface": "texture", "object": "object"}
SAMPLE_DEFECTS: dict[str, tuple[str, ...]] = {
    "surface": ("scratch", "crack", "hole", "stain"),
    "object": ("scratch", "stain", "missing"),
}
SAMPLE_FOLDER = "memseg_sample"
SAMPLE_IMAGE_SIZE = 256
N_TRAIN = 40  # normal training images per category
N_TEST_GOOD = 10  # normal test images per category
N_PER_DEFECT = 6  # test images per defect type
MIN_DEFECT_PIXELS = 40  # a drawn defect smaller than this is redrawn
VISIBLE_CHANGE = 20.0  # grey levels: where a soft stain changes the image less, it is not marked
_VERSION = 2  # bump when the drawings change: older copies on disk are regenerated
_MARKER = ".complete"


# --------------------------------------------------------------------------------------------
# Normal images
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel coordinates, float32 (size, size), computed once per size (read-only)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def _smooth_noise(rng: np.random.Generator, size: int, sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    """White noise blurred by a Gaussian, rescaled to unit standard deviation: (size, size)."""
    noise = rng.standard_normal((size, size), dtype=np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y or sigma_x,
                               borderType=cv2.BORDER_REFLECT)
    return blurred / max(float(blurred.std()), 1e-6)


def _lighting(rng: np.random.Generator, size: int, strength: tuple[float, float]) -> np.ndarray:
    """A linear illumination gradient in a random direction, around 1: (size, size)."""
    y, x = _pixel_grid(size)
    phi = rng.uniform(0.0, 2 * np.pi)
    ramp = ((x - size / 2) * np.cos(phi) + (y - size / 2) * np.sin(phi)) / (size / 2)
    return 1.0 + rng.uniform(*strength) * ramp


def render_surface(rng: np.random.Generator, size: int = SAMPLE_IMAGE_SIZE) -> np.ndarray:
    """A woven, brushed plate: float32 (size, size, 3) in [0, 255]."""
    y, x = _pixel_grid(size)
    theta = np.deg2rad(rng.uniform(-6.0, 6.0))  # small misalignment of the part
    period = size / 16 * rng.uniform(0.97, 1.03)
    u = x * np.cos(theta) + y * np.sin(theta) + rng.uniform(0, period)
    v = -x * np.sin(theta) + y * np.cos(theta) + rng.uniform(0, period)
    weave = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)  # checker of bumps
    grain = _smooth_noise(rng, size, sigma_x=10.0, sigma_y=0.7)  # brushing along x
    fine = _smooth_noise(rng, size, sigma_x=0.8)
    shade = 1.0 + 0.07 * weave + 0.05 * grain + 0.03 * fine
    light = _lighting(rng, size, (0.04, 0.12)) * rng.uniform(0.94, 1.06)
    base = np.array([152.0, 140.0, 118.0], np.float32)  # warm grey, RGB
    return np.clip(base * (shade * light)[..., None], 0, 255)


def render_object(rng: np.random.Generator, size: int = SAMPLE_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A machined washer on a dark bench.

    Returns (image, foreground, background): float32 (size, size, 3) in [0, 255], bool (size, size)
    (the washer), and the bench alone (what a missing piece reveals).
    """
    y, x = _pixel_grid(size)
    bench = 58.0 + 5.0 * _smooth_noise(rng, size, 1.2) + 4.0 * _smooth_noise(rng, size, 10.0)
    bench = bench * _lighting(rng, size, (0.05, 0.15))
    background = np.clip(np.stack([bench, bench * 1.02, bench * 1.08], axis=-1), 0, 255)

    cx = size / 2 + rng.uniform(-0.04, 0.04) * size
    cy = size / 2 + rng.uniform(-0.04, 0.04) * size
    outer = 0.32 * size * rng.uniform(0.97, 1.03)
    inner = 0.34 * outer
    dist = np.hypot(x - cx, y - cy)
    # anti-aliased ring: 1 inside the washer, 0 outside, a one-pixel ramp at both edges
    alpha = np.clip(outer + 0.5 - dist, 0, 1) * np.clip(dist - inner + 0.5, 0, 1)

    phi = rng.uniform(0, 2 * np.pi)  # where the lamp is
    hx, hy = cx + 0.45 * outer * np.cos(phi), cy + 0.45 * outer * np.sin(phi)
    highlight = np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * (0.45 * outer) ** 2))
    rings = np.sin(2 * np.pi * dist / (size / 50) + rng.uniform(0, 2 * np.pi))  # lathe marks
    bevel = np.clip((dist - (outer - 0.03 * size)) / (0.03 * size), 0, 1)  # darker outer chamfer
    metal = (172.0 + 45.0 * highlight + 5.0 * rings - 40.0 * bevel
             + 3.0 * _smooth_noise(rng, size, 0.8)) * rng.uniform(0.94, 1.06)
    washer = np.stack([metal, metal * 0.98, metal * 0.93], axis=-1)
    image = alpha[..., None] * washer + (1 - alpha[..., None]) * background
    return np.clip(image, 0, 255), alpha > 0.5, background


def render_normal(category: str, rng: np.random.Generator, size: int = SAMPLE_IMAGE_SIZE):
    """(image float32 (S, S, 3), foreground bool (S, S), background float32 (S, S, 3)).

    For the texture category the whole image is foreground and there is no separate background.
    """
    if category == "surface":
        image = render_surface(rng, size)
        return image, np.ones((size, size), bool), image
    if category == "object":
        return render_object(rng, size)
    raise ValueError(f"Unknown sample category {category!r}; expected one of {tuple(SAMPLE_CATEGORIES)}.")


# --------------------------------------------------------------------------------------------
# Defects: each takes (image, foreground, background, rng) and returns (defective image, mask)
# --------------------------------------------------------------------------------------------
def _pick_point(rng: np.random.Generator, foreground: np.ndarray, margin: int) -> np.ndarray:
    """A random (x, y) inside the foreground, at least ``margin`` pixels from its border."""
    inside = foreground.astype(np.uint8)
    inside[:margin], inside[-margin:], inside[:, :margin], inside[:, -margin:] = 0, 0, 0, 0
    eroded = cv2.erode(inside, np.ones((2 * margin + 1,) * 2, np.uint8))
    ys, xs = np.nonzero(eroded if eroded.any() else foreground)
    k = int(rng.integers(len(xs)))
    return np.array([xs[k], ys[k]], np.float32)


def _jittered_polyline(rng: np.random.Generator, start: np.ndarray, length: float, n_points: int,
                       turn_std: float, side_std: float, centred: bool = False) -> np.ndarray:
    """A path that mostly keeps its heading: int32 (n_points, 2) for cv2.polylines.

    ``centred`` moves the path so that its middle, not its start, sits at ``start``.
    """
    heading = rng.uniform(0, 2 * np.pi)
    step = length / (n_points - 1)
    points = [start.copy()]
    for _ in range(n_points - 1):
        heading += rng.normal(0.0, turn_std)
        direction = np.array([np.cos(heading), np.sin(heading)], np.float32)
        normal = np.array([-direction[1], direction[0]], np.float32)
        points.append(points[-1] + step * direction + rng.normal(0.0, side_std) * normal)
    path = np.array(points)
    if centred:
        path += start - path.mean(axis=0)
    return np.round(path).astype(np.int32)


def _stroke_mask(shape: tuple[int, int], paths: list[np.ndarray], thickness: list[int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    for path, width in zip(paths, thickness, strict=True):
        cv2.polylines(canvas, [path.reshape(-1, 1, 2)], False, 255, thickness=int(width), lineType=cv2.LINE_8)
    return canvas > 0


def draw_scratch(image, foreground, background, rng):
    """A thin, slightly wandering line where the coating is scraped off: bright or dark."""
    start = _pick_point(rng, foreground, margin=12)
    path = _jittered_polyline(rng, start, rng.uniform(0.2, 0.45) * image.shape[0],
                              n_points=int(rng.integers(5, 9)), turn_std=0.10, side_std=0.8, centred=True)
    mask = _stroke_mask(foreground.shape, [path], [int(rng.integers(2, 4))]) & foreground
    out = image.copy()
    tone = 245.0 if rng.random() < 0.6 else 35.0  # exposed bare metal or a dark groove
    strength = rng.uniform(0.65, 0.85)
    out[mask] = (1 - strength) * out[mask] + strength * tone
    return out, mask


def draw_crack(image, foreground, background, rng):
    """A dark, jagged fracture line with one side branch."""
    size = image.shape[0]
    start = _pick_point(rng, foreground, margin=16)
    main = _jittered_polyline(rng, start, rng.uniform(0.2, 0.4) * size,
                              n_points=int(rng.integers(9, 15)), turn_std=0.45, side_std=1.5, centred=True)
    fork = main[int(rng.integers(2, len(main) - 2))].astype(np.float32)
    branch = _jittered_polyline(rng, fork, rng.uniform(0.05, 0.12) * size,
                                n_points=int(rng.integers(4, 7)), turn_std=0.5, side_std=1.0)
    mask = _stroke_mask(foreground.shape, [main, branch], [int(rng.integers(2, 4)), 2]) & foreground
    out = image.copy()
    out[mask] *= rng.uniform(0.15, 0.3)
    return out, mask


def draw_hole(image, foreground, background, rng):
    """A pit: a dark ellipse, lit on its inner wall, with a bright lip on the side facing the lamp."""
    size = image.shape[0]
    centre = _pick_point(rng, foreground, margin=16)
    a, b = rng.uniform(0.03, 0.06) * size, rng.uniform(0.025, 0.05) * size
    angle = rng.uniform(0, np.pi)
    y, x = _pixel_grid(size)
    dx, dy = x - centre[0], y - centre[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
    r = np.hypot(u, v)
    mask = (r <= 1.0) & foreground
    lamp = rng.uniform(0, 2 * np.pi)
    facing = (u * np.cos(lamp) + v * np.sin(lamp)) / np.maximum(r, 1e-6)  # -1..1 around the rim
    depth = 22.0 + 55.0 * np.clip(0.5 + 0.5 * facing, 0, 1) * r  # darker at the bottom
    lip = (r > 0.78) & (facing < -0.35)
    shade = np.where(lip, 215.0, depth)
    out = image.copy()
    out[mask] = shade[mask][:, None] * np.array([1.0, 0.98, 0.95], np.float32)
    return out, mask


def draw_stain(image, foreground, background, rng):
    """A soft-edged blot of oil or rust: a few ellipses blurred together, tinting what is below."""
    size = image.shape[0]
    centre = _pick_point(rng, foreground, margin=20)
    blot = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        offset = rng.normal(0.0, 0.03 * size, 2)
        axes = (int(rng.uniform(0.025, 0.06) * size), int(rng.uniform(0.02, 0.05) * size))
        cv2.ellipse(blot, tuple(int(c) for c in np.round(centre + offset)), axes,
                    float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    blot = cv2.GaussianBlur(blot, (0, 0), sigmaX=rng.uniform(3.0, 5.0))
    blot = blot / max(float(blot.max()), 1e-6) * foreground
    colour = np.array([95.0, 62.0, 30.0] if rng.random() < 0.5 else [38.0, 36.0, 42.0], np.float32)
    opacity = blot[..., None] * rng.uniform(0.7, 0.85)
    stained = image * (1 - opacity) + colour * opacity
    mask = np.abs(stained - image).max(axis=2) > VISIBLE_CHANGE  # the soft rim is not a defect
    return stained, mask


def draw_missing(image, foreground, background, rng):
    """A piece broken off the rim: the bench shows through, with a dark fracture edge."""
    size = image.shape[0]
    ys, xs = np.nonzero(foreground)
    cx, cy = xs.mean(), ys.mean()
    outer = np.sqrt(((xs - cx) ** 2 + (ys - cy) ** 2).max())
    theta = rng.uniform(0, 2 * np.pi)
    centre = np.array([cx + outer * np.cos(theta), cy + outer * np.sin(theta)])
    n_vertices = 14
    angles = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
    radii = rng.uniform(0.05, 0.09) * size * rng.uniform(0.75, 1.2, n_vertices)
    polygon = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    cut = np.zeros((size, size), np.uint8)
    cv2.fillPoly(cut, [np.round(polygon).astype(np.int32).reshape(-1, 1, 2)], 1)
    removed = (cut > 0) & foreground
    edge = cv2.dilate(removed.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & foreground & ~removed
    out = image.copy()
    out[removed] = background[removed]
    out[edge] *= 0.55
    return out, removed | edge


DEFECT_DRAWERS: dict[str, Callable] = {
    "scratch": draw_scratch,
    "crack": draw_crack,
    "hole": draw_hole,
    "stain": draw_stain,
    "missing": draw_missing,
}


def make_defective(category: str, defect: str, rng: np.random.Generator, size: int = SAMPLE_IMAGE_SIZE):
    """(normal image, defective image, mask): float32 (S, S, 3) x2 and bool (S, S).

    A defect that ends up smaller than :data:`MIN_DEFECT_PIXELS` (e.g. a scratch that ran off
    the washer) is drawn again, so no "defective" test image is secretly normal.
    """
    if defect not in SAMPLE_DEFECTS.get(category, ()):
        raise ValueError(f"Defect {defect!r} is not drawn for category {category!r}: {SAMPLE_DEFECTS}.")
    image, foreground, background = render_normal(category, rng, size)
    for _ in range(50):
        defective, mask = DEFECT_DRAWERS[defect](image, foreground, background, rng)
        if mask.sum() >= MIN_DEFECT_PIXELS:
            return image, np.clip(defective, 0, 255), mask
    raise RuntimeError(f"Could not draw a {defect} of at least {MIN_DEFECT_PIXELS} pixels.")


# --------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------
def default_sample_root() -> Path:
    """Where the offline sample lives: ``data_dir()/memseg_sample`` (``MEMSEG_DATA_DIR`` moves it)."""
    return data_dir() / SAMPLE_FOLDER


def _write_png(path: Path, array: np.ndarray) -> None:
    array = np.round(array).astype(np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"Could not write {path}.")


def _layout(category: str) -> Iterator[tuple[int, int, str | None, str, str | None]]:
    """Every image of a category: (rng stream, index, defect or None, image path, mask path or None).

    Paths are POSIX, relative to the category folder. The writer and the check that tells a
    sample from a user's own folder both read this, so they cannot drift apart.
    """
    for i in range(N_TRAIN):
        yield 0, i, None, f"train/good/{i:03d}.png", None
    for i in range(N_TEST_GOOD):
        yield 1, i, None, f"test/good/{i:03d}.png", None
    for d, defect in enumerate(SAMPLE_DEFECTS[category]):
        for i in range(N_PER_DEFECT):
            yield 2 + d, i, defect, f"test/{defect}/{i:03d}.png", f"ground_truth/{defect}/{i:03d}_mask.png"


def _write_category(folder: Path, category: str, category_index: int, seed: int, size: int) -> None:
    for stream, i, defect, image_path, mask_path in _layout(category):
        rng = make_rng(seed, category_index, stream, i)
        if defect is None:
            image, mask = render_normal(category, rng, size)[0], None
        else:
            _, image, mask = make_defective(category, defect, rng, size)
        (folder / image_path).parent.mkdir(parents=True, exist_ok=True)
        _write_png(folder / image_path, image)
        if mask_path is not None:
            (folder / mask_path).parent.mkdir(parents=True, exist_ok=True)
            _write_png(folder / mask_path, mask.astype(np.uint8) * 255)


def _read_marker(root: Path) -> dict | None:
    """The content of ``root``'s completion marker, or None when it is absent or not ours."""
    try:
        info = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "version" in info else None


def _is_complete(root: Path, seed: int | None = None) -> bool:
    info = _read_marker(root)
    return info is not None and info.get("version") == _VERSION and (seed is None or info.get("seed") == seed)


def is_sample_dataset(root: str | Path) -> bool:
    """Whether ``root`` is a finished offline sample (``--data`` may point at one): its surface is a texture."""
    return _read_marker(Path(root)) is not None


@functools.lru_cache(maxsize=1)
def _sample_paths() -> tuple[frozenset[str], frozenset[str]]:
    """(files, folders) the generator writes, as POSIX paths relative to the root."""
    files = {_MARKER}
    for category in SAMPLE_CATEGORIES:
        for *_, image_path, mask_path in _layout(category):
            files |= {f"{category}/{path}" for path in (image_path, mask_path) if path is not None}
    folders = {str(parent) for path in files for parent in PurePosixPath(path).parents if str(parent) != "."}
    return frozenset(files), frozenset(folders)


def _foreign_paths(root: Path) -> Iterator[str]:
    """Paths under ``root`` that the generator never writes (links included), top-down."""
    files, folders = _sample_paths()
    for here, dirnames, filenames in os.walk(root):
        base = PurePosixPath(Path(here).relative_to(root).as_posix())
        for name in sorted(dirnames):
            path = str(base / name)
            if path not in folders or os.path.islink(os.path.join(here, name)):
                yield path
        dirnames[:] = sorted(name for name in dirnames if str(base / name) in folders)
        for name in sorted(filenames):
            path = str(base / name)
            if path not in files or os.path.islink(os.path.join(here, name)):
                yield path


def _check_replaceable(root: Path) -> None:
    """Raise unless ``root`` is absent or holds only a sample dataset, old or half-written.

    A folder is a sample when every file in it is one the generator writes (an interrupted,
    older non-atomic run), or, when it carries the sample's marker (maybe of an older version,
    with other files), when its top level holds only the sample's categories and the marker: a
    category a user added beside them is kept. Folder names alone prove nothing: a user's own
    ``surface/`` dataset must never be deleted.
    """
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is a file, not a sample dataset folder.")
    if _read_marker(root) is not None:
        foreign = sorted(p.name for p in root.iterdir()
                         if p.name not in SAMPLE_CATEGORIES and p.name != _MARKER)[:3]
    else:
        foreign = list(itertools.islice(_foreign_paths(root), 3))
    if foreign:
        raise FileExistsError(
            f"{root} exists and is not a memseg sample dataset (it holds {foreign}, which the "
            "sample does not write); nothing was deleted: pass another root or move that folder away."
        )


def _remove_old_sample(root: Path) -> None:
    """Delete a previous (possibly half-written) sample, refusing to touch anything else."""
    _check_replaceable(root)
    if root.exists():
        shutil.rmtree(root)


def generate_sample_dataset(root: str | Path | None = None, seed: int = 0) -> Path:
    """Draw the offline sample dataset into ``root`` (default ``data_dir()/memseg_sample``).

    Written inside a hidden staging folder beside ``root`` and moved into place at the end, with a
    ``.complete`` marker, so an interrupted run never leaves a dataset that looks finished.
    """
    root = Path(root).expanduser() if root is not None else default_sample_root()
    _check_replaceable(root)  # before spending any time drawing
    with staging_dir(root, "partial") as staging:  # locked while it is written; removed at the end
        result = staging / root.name  # a plain folder (usual mode), moved into place when complete
        for index, category in enumerate(SAMPLE_CATEGORIES):
            _write_category(result / category, category, index, seed, SAMPLE_IMAGE_SIZE)
        (result / _MARKER).write_text(json.dumps({"version": _VERSION, "seed": seed}))
        _remove_old_sample(root)
        try:
            os.replace(result, root)
        except OSError:
            if not _is_complete(root, seed):  # not another process finishing the same work first
                raise
    return root


def ensure_sample_dataset(root: str | Path | None = None, seed: int = 0) -> Path:
    """The offline sample dataset root, generated first if it is missing or incomplete."""
    root = Path(root).expanduser() if root is not None else default_sample_root()
    if _is_complete(root, seed):
        return root
    print(f"Generating the offline sample dataset in {root} ...")
    return generate_sample_dataset(root, seed=seed)
