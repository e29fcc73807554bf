"""Real-data benchmark: MemSeg with RANDOM encoder weights on the Magnetic Tile Defect dataset.

Trains on the 761 normal training tiles of ``split.csv`` (texture anomalies from the Flickr Material
Database folder beside the checkout, else scikit-image's textures), evaluates the LAST step on the
test split (191 normal + 392 defective tiles) and prints image AUROC, pixel AUROC, AUPRO@0.3,
training and evaluation images/s (with ``half_scale_map``, as chosen, also the figures of the
full-size map alone from the same run). Nothing is chosen on the test split: the settings below were
picked with ``--validate``, which holds out 160 training normals and scores 80 of them as they are
against 80 that received a faded drawn defect: scratch, crack, hole, stain from the sample-data
painters, or a wide band of changed brightness like MTD's "uneven", families the training simulation
never produces. Every exposure of a tile that receives a defect is held out, as the test split keeps
its defective tiles apart from training; the normals are held out one exposure at a time, as there.
It prints a row per family.

    python benchmarks/mtd.py                       # the benchmark (~30 min on 2 CPU cores)
    python benchmarks/mtd.py --minutes 10          # fewer steps, fitted to a 10-minute budget
    python benchmarks/mtd.py --steps 600 --image-size 128 --out runs/mtd.json
    python benchmarks/mtd.py --steps 827 --run-dir runs/mtd   # keep the model; run again to resume or re-score
    python benchmarks/mtd.py --steps 827 --run-dir runs/mtd --set memory_map_level=1   # its model, scored otherwise
    python benchmarks/mtd.py --validate --minutes 8   # tuning: no test image is read
    python benchmarks/mtd.py --validate --steps 200 --set texture_probability=0.2   # any Config field
    python benchmarks/mtd.py --image-size 256 --steps 10174 --threads 8 --set "device='cuda'" --set amp=False
        # a GPU: the step count of mtd_experiments.md's first H100 run (5.7 min there with an earlier
        # model at 238 images/s; 7.2 min at 189 images/s with the current one)

Without ``--steps`` the number of steps is fitted to ``--minutes`` from the measured speed of a
few warm-up steps, so the cosine schedule ends when the time does. On a shared machine that
speed (and so the step count) is lower than on a quiet one; pass ``--steps`` to pin it.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads are 5-10x slower when other programs share the cores; passive
# waiting costs nothing on a quiet machine. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from memseg_tutorial import get_config  # noqa: E402
from memseg_tutorial.checkpoint import atomic_write_json, load_checkpoint  # noqa: E402
from memseg_tutorial.config import (  # noqa: E402
    SCORING_FIELDS,
    Config,
    input_multiple,
    parse_overrides,
    size_rule,
)
from memseg_tutorial.data import MTDDataset, TextureSource  # noqa: E402
from memseg_tutorial.data.images import to_tensor  # noqa: E402
from memseg_tutorial.data.mtd import tile_groups, tile_members  # noqa: E402
from memseg_tutorial.data.sample import DEFECT_DRAWERS, MIN_DEFECT_PIXELS  # noqa: E402
from memseg_tutorial.device import model_device  # noqa: E402
from memseg_tutorial.evaluation import (  # noqa: E402
    compute_metrics,
    evaluate,
    format_results_table,
    per_defect_metrics,
)
from memseg_tutorial.paths import runs_dir, shared_data_dir  # noqa: E402
from memseg_tutorial.seeding import make_rng  # noqa: E402
from memseg_tutorial.staging import writable_problem  # noqa: E402
from memseg_tutorial.training import CHECKPOINT_NAME, Trainer  # noqa: E402

VALIDATION_KEY = 3_000_017

# The CPU preset of this benchmark (random weights, 2 cores, 30 minutes). Lesson 08 (section 8) sums up
# why; mtd_experiments.md records every setting tried.
BENCHMARK_SETTINGS = dict(
    preset="quick",
    image_size=128,
    memory_size=30,
    batch_normal=4,
    batch_synthetic=4,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=5e-4,
    schedule="cosine",
    warmup_fraction=0.1,
    backbone_weights="none",
    # Validation (mtd_experiments.md): calibrated frozen random layer1-3 did as well as training them
    # (0.734/0.879 vs 0.729/0.869) at a cheaper step; calibration beat none (0.705/0.862).
    train_encoder=False,
    # Fifth round (mtd_experiments.md): the stem trains, so a bank built once holds features the encoder no
    # longer computes; rebuilt every 25 steps (2 % of the time), with the memory map below.
    memory_refresh_every=25,
    train_stem=True,  # as in lesson 04; a fixed stem was 14 % faster but worse on validation pixels
    calibrate_batchnorm=True,
    grey_sources=True,
    # Validation with wide bands (mtd_experiments.md): structure anomalies 4 times in 5 instead of 1 in 2
    # raised image AUROC on two seeds (0.725 vs 0.702, 0.718 vs 0.687) at the same pixel AUROC.
    texture_probability=0.2,
    # Validation, third round (mtd_experiments.md): per-image standardisation removes the tile-to-tile
    # exposure spread that random features cannot discount (+0.04 image, +0.02 pixel AUROC on
    # both seeds), and a Gaussian blur of sigma 2 px on the 128 px map adds about +0.015 pixel
    # AUROC at the same image AUROC (sigma 4: pixel +0.03, image -0.02).
    per_image_standardization=True,
    map_smoothing_sigma=2.0,
    # Fifth round (mtd_experiments.md): MemSeg's own memory map m1, added to the decoder's logit at a
    # quarter of its normal spread, with the bank refreshed: after 800 steps pixel AUROC +0.016 and
    # +0.044 at image AUROC +0.000 and +0.016 on two seeds (after 200 steps it traded 0.01-0.015
    # of image AUROC for +0.015 to +0.03 of pixel AUROC); with a bank built once, a trade in three
    # of the four runs. The MTD test run then lost pixel AUROC (README, mtd_experiments.md).
    # Lab notebook, "The memory map read from the coarsest level": m3 (layer3's difference alone) at
    # half a spread instead of m1 at a quarter, scored on the same 200-step models (seeds 42, 7): image AUROC
    # +0.019 and +0.012 with --validate (0.771 vs 0.752, 0.769 vs 0.757), +0.023 and +0.017 on the
    # notebook's aspect-ratio validation; pixel AUROC -0.006 to +0.005, AUPRO -0.005 to -0.016 (m1
    # multiplies m3 by the two finer levels' differences). The bands did not fill better: the gain
    # is in the image score. On the test split (827 steps, the same weights: training reads neither
    # field) a draw, 0.757 / 0.656 against 0.762 / 0.652, with AUPRO 0.572 against 0.594 (seed 7:
    # 0.761 / 0.660 / 0.591 against 0.757 / 0.647 / 0.602).
    memory_map_weight=0.5,
    memory_map_level=3,
    # More checks (mtd_experiments.md): the map of a half-size copy averaged in, scored after training
    # on two seeds' 800-step models, pixel AUROC +0.022 and +0.030, AUPRO +0.017 and +0.043, image
    # AUROC -0.007 and +0.002. Training never reads it; with it, the script also prints the
    # full-size map's figures of the same run (test split: pixel +0.025, image +0.013, AUPRO -0.006).
    # Image sizes must then be multiples of 64: --set half_scale_map=False for 96, 160 or 192 px.
    half_scale_map=True,
    # Validation (mtd_experiments.md, "The image score of a wide defect"): the image score read as the mean
    # of the top 400 pixels (2.4 % of a 128 px map) instead of 100 raised image AUROC by 0.016-0.019 on
    # two seeds of two validations (200 steps); the wide bands gained most. Pixel metrics do not read it.
    # On the test split (827 steps, the same model) a draw: 0.762 against 0.763.
    score_top_k=400,
    checkpoint_every=0,
    device="cpu",
)


class InMemory(torch.utils.data.Dataset):
    """The resized uint8 tiles of a dataset, read once (decoding JPEGs every step costs time)."""

    def __init__(self, dataset, indices=None):
        indices = range(len(dataset)) if indices is None else indices
        self.rgb = [dataset.load_rgb(i) for i in indices]

    def __len__(self) -> int:
        return len(self.rgb)

    def load_rgb(self, index: int) -> np.ndarray:
        return self.rgb[index].copy()

    def __getitem__(self, index: int) -> dict:
        return {"image": to_tensor(self.rgb[index]), "label": 0}

    def fingerprint(self) -> str:
        """A digest of the tiles as training sees them: ``--run-dir`` refuses to continue a run on
        other tiles (another ``--root``, another split.csv), whatever folder they are read from."""
        digest = hashlib.sha256()
        for tile in self.rgb:
            digest.update(str(tile.shape).encode())
            digest.update(np.ascontiguousarray(tile).tobytes())
        return digest.hexdigest()[:16]


VALIDATION_DEFECTS = ("scratch", "crack", "hole", "stain")  # small, local defects
WIDE_DEFECTS = ("band",)  # large-area ones (MTD "uneven" holds most of the test's defective pixels)


def draw_band(image, foreground, background, rng):
    """A wide band, from one edge to a wavy boundary, ground brighter or darker than the rest.

    Large-area, low-contrast defects (MTD's "uneven" is one) are what small local defects do not
    exercise: the validation needs one family that covers 15-50 % of the tile.
    """
    h, w = image.shape[:2]
    x = np.arange(w, dtype=np.float32) / w
    depth = rng.uniform(0.15, 0.5) * h
    boundary = depth + rng.uniform(0.01, 0.05) * h * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * x
                                                              + rng.uniform(0, 2 * np.pi))
    rows = np.arange(h, dtype=np.float32)[:, None]
    mask = rows < boundary[None, :]
    if rng.random() < 0.5:
        mask = mask[::-1]  # from the bottom edge
    mask = mask & foreground
    mean = image[mask].mean(axis=0)
    contrast = rng.uniform(0.6, 1.6)
    gain = rng.uniform(1.25, 1.5) if rng.random() < 0.5 else rng.uniform(0.6, 0.8)
    out = image.copy()
    out[mask] = np.clip(gain * (mean + contrast * (image[mask] - mean)), 0, 255)
    return out, mask


DRAWERS = {**DEFECT_DRAWERS, "band": draw_band}  # every validation family, by name


def drawn_defect(image: np.ndarray, rng: np.random.Generator,
                 families: tuple[str, ...] = VALIDATION_DEFECTS) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, mask, family name): one defect of ``families``, drawn by the sample-data painters
    or :func:`draw_band`.

    A validation anomaly of another family than the training anomalies, so a setting cannot win
    by fitting the simulation; grey tiles get grey defects, as real ones are. The name lets the
    validation report each family apart (the bands and the small defects behave differently).
    """
    from memseg_tutorial.synthesis import is_grey, to_grey

    foreground = np.ones(image.shape[:2], bool)
    name = families[int(rng.integers(len(families)))]
    # The painters size defects relative to the image: on small tiles the minimum shrinks with the
    # area (at most 0.5 % of the tile), from 96 px up it is the sample data's own minimum.
    min_pixels = min(MIN_DEFECT_PIXELS, image.shape[0] * image.shape[1] // 200)
    for _ in range(50):
        drawn, mask = DRAWERS[name](image.astype(np.float32), foreground, image, rng)
        if mask.sum() >= min_pixels:
            break
    else:
        raise RuntimeError(f"Could not draw a {name} of at least {min_pixels} pixels on a {image.shape[:2]} tile.")
    # Faded to 30-70 % of its full contrast: real tile defects are subtle, and at full strength
    # every setting scores above 0.9, which cannot tell settings apart.
    strength = rng.uniform(0.3, 0.7)
    drawn = image + strength * (drawn - image)
    drawn = np.clip(np.rint(drawn), 0, 255).astype(np.uint8)
    return (to_grey(drawn) if is_grey(image) else drawn), mask.astype(np.float32), name


VALIDATION_ANOMALIES = {"drawn+band": VALIDATION_DEFECTS + WIDE_DEFECTS, "drawn": VALIDATION_DEFECTS}


def validation_split(train: MTDDataset, config, n_normal: int = 80, n_anomalous: int = 80,
                     anomalies: str = "drawn+band"):
    """(training tiles, validation dict) from the training normals only.

    Held-out normals stay normal or receive one anomaly (seeded): a drawn defect, small and local
    (``"drawn"``: scratch, crack, hole, stain) or one of those or a wide band (``"drawn+band"``,
    the default), or one from the training synthesizer (``"synthetic"``, which flatters settings
    that fit the simulation). Either way no test image is ever read.

    The split mirrors the test split's: MTD photographed each tile under up to six exposures
    (:func:`tile_groups`), and no defective test tile has an exposure among the training tiles,
    while most normal test tiles do. So the tiles that receive a defect are held out with every
    exposure, and the normals one exposure at a time.
    """
    from memseg_tutorial.synthesis import AnomalySynthesizer

    order = [int(i) for i in make_rng(config.seed, VALIDATION_KEY).permutation(len(train))]
    # Without file names (the tests' stand-in tiles) each image is a tile of its own.
    groups = tile_groups([str(path) for path in getattr(train, "image_paths", [])]) or list(range(len(train)))
    members = tile_members(groups)
    anomalous: list[int] = []
    for index in order:  # whole tiles, in the seeded order, as long as they fit
        tile = members[groups[index]]
        if index == tile[0] and len(anomalous) + len(tile) <= n_anomalous:
            anomalous += tile
    if len(anomalous) < n_anomalous:
        raise ValueError(f"Cannot make {n_anomalous} defective validation images of whole tiles (all their "
                         f"exposures) from {len(train)} images: the tiles' sizes do not add up to it.")
    defective_tiles = {groups[i] for i in anomalous}
    normal = [i for i in order if groups[i] not in defective_tiles][:n_normal]
    if len(normal) < n_normal:  # the labels below count on n_normal normals first
        raise ValueError(f"Only {len(normal)} images are left for {n_normal} normal validation images.")
    held = normal + anomalous
    kept = sorted(set(range(len(train))) - set(held))
    synthesizer = AnomalySynthesizer(config, TEXTURES(config), kind="texture")
    images, masks, labels, families = [], [], [], []
    for rank, index in enumerate(held):
        image = train.load_rgb(int(index))
        mask = np.zeros(image.shape[:2], np.float32)
        family = "good"
        if rank >= n_normal:
            rng = make_rng(config.seed, VALIDATION_KEY, rank)
            if anomalies in VALIDATION_ANOMALIES:
                image, mask, family = drawn_defect(image, rng, VALIDATION_ANOMALIES[anomalies])
            else:
                sample = synthesizer.synth(image, rng)
                image, mask, family = sample.image, sample.mask, "synthetic"
        images.append(to_tensor(image))
        masks.append(mask)
        labels.append(int(rank >= n_normal))
        families.append(family)
    return kept, {"images": torch.stack(images), "masks": np.stack(masks), "labels": np.array(labels),
                  "families": families}


def TEXTURES(config) -> TextureSource:  # noqa: N802 - reads like a constant at the call sites
    shared = shared_data_dir()
    folder = shared / "fmd" if shared is not None and (shared / "fmd").is_dir() else None
    return TextureSource(folder, image_size=config.image_size)


# Ways to read an image score off a map (k, mode), printed side by side from the same maps: the top
# k pixels favour defects of about k pixels or more (a 128 px map has 16384; MTD's "uneven" areas
# cover a quarter of the tile).
SCORE_READINGS = {"max": (1, "max"), "top25": (25, "topk_mean"), "top100": (100, "topk_mean"),
                  "top400": (400, "topk_mean"), "top1600": (1600, "topk_mean")}


def image_auroc_by_score(maps: torch.Tensor, labels) -> dict[str, float]:
    """Image AUROC for each of SCORE_READINGS, from the same maps (B, S, S)."""
    from sklearn.metrics import roc_auc_score

    from memseg_tutorial.model import image_scores

    return {name: float(roc_auc_score(labels, image_scores(maps, k, mode).numpy()))
            for name, (k, mode) in SCORE_READINGS.items()}


def by_score_line(metrics: dict) -> str:
    """The readings of :func:`image_auroc_by_score` on one line, as the VALIDATION line prints them (never the
    test split's: nothing is chosen there)."""
    return "image AUROC by score " + " ".join(f"{k} {v:.3f}" for k, v in metrics["image_auroc_by_score"].items())


@torch.no_grad()
def score_validation(model, validation: dict, config) -> dict:
    from memseg_tutorial.model import image_scores

    model.eval()
    device = model_device(model)
    start = time.perf_counter()
    maps = torch.cat([model.anomaly_map(x.to(device)).float().cpu()
                      for x in validation["images"].split(16)])
    seconds = time.perf_counter() - start
    scores = image_scores(maps, config.score_top_k, config.score_mode).numpy()
    labels, masks = validation["labels"], validation["masks"]
    metrics = compute_metrics(labels, scores, masks, maps.numpy(), config.aupro_fpr_limit)
    # Each family against all held-out normals: the wide bands and the small defects differ a lot.
    metrics["per_family"] = per_defect_metrics(labels, scores, masks, maps.numpy(), validation["families"],
                                               config.aupro_fpr_limit)
    metrics["image_auroc_by_score"] = image_auroc_by_score(maps, labels)
    metrics["eval_images_per_s"] = len(maps) / max(seconds, 1e-9)
    return metrics


def headline(metrics: dict, fpr_limit: float) -> str:
    """The three figures of a run, as every summary line prints them."""
    return (f"image AUROC {metrics['image_auroc']:.3f}  pixel AUROC {metrics['pixel_auroc']:.3f}  "
            f"AUPRO@{fpr_limit:g} {metrics['aupro']:.3f}")


def evaluation_record(evaluation) -> dict:
    """What the JSON file keeps of a test-split evaluation."""
    return {"eval_images_per_s": evaluation.images_per_second, "per_defect": evaluation.per_defect,
            **evaluation.metrics}


class TimeUp(Exception):
    """Raised from the training callback when the budget is spent."""


RESULT_NEUTRAL_FIELDS = ("checkpoint_every", "num_workers")


def saved_run(run_dir: Path | None, config: Config, split: str, steps_asked: int | None,
              tiles: str | None = None) -> tuple[dict | None, dict[str, tuple]]:
    """The checkpoint that ``--run-dir`` holds, if any, after checking that it is a run of these settings
    on this split and these training tiles (``InMemory.fingerprint``; a mismatch stops the script, in
    one line: continuing it would mix two runs), and the score-only fields asked otherwise, as
    {field: (saved, asked)}.

    Its step count is its own: with ``--minutes`` the steps were fitted when it started. Fields that
    change no result (how often to save, loader workers) may differ; so may SCORING_FIELDS once
    the run is finished.
    """
    path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    if path is None or not path.exists():
        return None, {}
    checkpoint = load_checkpoint(path, map_location="cpu")
    saved = Config.from_dict(checkpoint["config"]).to_dict()  # older saves: defaults filled in
    asked = {**config.to_dict(), "steps": saved["steps"] if steps_asked is None else steps_asked}
    changed = sorted(key for key, value in saved.items()
                     if asked[key] != value and key not in RESULT_NEUTRAL_FIELDS)
    finished = checkpoint["step"] >= saved["steps"]
    rescoring = {key: (saved[key], asked[key]) for key in changed if finished and key in SCORING_FIELDS}
    changed = [key for key in changed if key not in rescoring]
    run = checkpoint.get("run", {})
    saved_split, saved_tiles = run.get("mtd_split"), run.get("train_tiles")
    other_tiles = saved_split == split and None not in (saved_tiles, tiles) and saved_tiles != tiles
    if changed or saved_split != split or other_tiles:
        what = ", ".join(f"{key} {saved[key]!r} -> {asked[key]!r}" for key in changed)
        if saved_split != split:
            what = ", ".join(filter(None, [what, f"split {saved_split!r} -> {split!r}"]))
        if other_tiles:  # a split change alone changes the tiles too
            what = ", ".join(filter(None, [what, "other training tiles (another --root or split.csv?)"]))
        finish = ("finish it with its own settings first (scoring settings may differ once it is finished), "
                  if not finished and set(changed) & set(SCORING_FIELDS) else "")
        raise SystemExit(f"mtd.py: {path} is a run with other settings ({what}); "
                         f"{finish}use another --run-dir, or delete it to start again.")
    if rescoring:  # the model is built from the asked config; the file keeps the settings it was saved with
        checkpoint["config"] = asked
    if saved_tiles is None and tiles is not None:  # saved before the digest
        print(f"note: {path} does not record its training tiles; assuming they are these", flush=True)
        run["train_tiles"] = tiles  # kept by Trainer.resume: an unfinished run saves it, then is checked
        checkpoint["run"] = run
    return checkpoint, rescoring


def fit_steps(config, train, textures, minutes: float, warmup_steps: int = 10) -> int:
    """Steps that fit in ``minutes`` at the speed of a few measured steps (after one warm-up)."""
    probe = Trainer(dataclasses.replace(config, steps=warmup_steps + 1), train, textures, progress=False)
    probe.build_memory_bank()
    probe.train_step(probe.batch(0))  # first step pays for allocations
    start = time.perf_counter()
    for step in range(1, warmup_steps + 1):
        probe.train_step(probe.batch(step))
    seconds_per_step = (time.perf_counter() - start) / warmup_steps
    refresh = config.memory_refresh_every
    # 0.85: on a shared machine the speed varies by tens of percent within the half hour (a probe
    # measured 1.48 s/step, the run then averaged 2.03); the deadline in main() is the hard limit.
    budget = minutes * 60.0 * 0.85
    steps = int(budget / seconds_per_step)
    if refresh:  # a bank rebuild costs about memory_size / batch_size forward passes (+1/4: half size)
        rebuild = 0.15 * config.memory_size / config.batch_size * (1.25 if config.half_scale_map else 1.0)
        steps = int(steps / (1.0 + rebuild / refresh))
    steps = max(steps, 10)
    print(f"measured {seconds_per_step:.2f} s/step -> {steps} steps in {minutes:g} min", flush=True)
    return steps


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="MTD folder (default: $MEMSEG_SHARED_DATA/mtd or ../shared/data/mtd, else "
                             "data/mtd as `python -m memseg_tutorial download mtd` fills it)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget (default 30)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps (overrides --minutes)")
    parser.add_argument("--image-size", type=int, default=BENCHMARK_SETTINGS["image_size"],
                        help="tile side in px, a multiple of 64 while half_scale_map is on (default 128)")
    parser.add_argument("--lr", type=float, default=BENCHMARK_SETTINGS["lr"])
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default=BENCHMARK_SETTINGS["optimizer"])
    parser.add_argument("--memory-size", type=int, default=BENCHMARK_SETTINGS["memory_size"])
    parser.add_argument("--memory-refresh", type=int, default=None,
                        help="rebuild the bank every k steps (default 25 while any encoder part trains, else 0)")
    parser.add_argument("--train-stem", choices=("on", "off"), default="on" if BENCHMARK_SETTINGS["train_stem"] else "off",
                        help="train the stem as the model of lesson 04 does (on) or keep the random stem fixed (off)")
    parser.add_argument("--calibrate-bn", choices=("on", "off"),
                        default="on" if BENCHMARK_SETTINGS["calibrate_batchnorm"] else "off",
                        help="BatchNorm statistics of the random stem..layer3 from normal images")
    parser.add_argument("--train-encoder", action="store_true",
                        help="also train layer1..3 (memory bank refreshed every --memory-refresh steps)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--validate", action="store_true", help="tune: score held-out train normals vs the same with drawn defects; no test image is read")
    parser.add_argument("--validation-anomalies", choices=(*VALIDATION_ANOMALIES, "synthetic"),
                        default="drawn+band",
                        help="validation defects: small drawn ones and wide bands (default), only the "
                             "small drawn ones, or simulated ones")
    parser.add_argument("--grey-sources", choices=("on", "off"),
                        default="on" if BENCHMARK_SETTINGS["grey_sources"] else "off",
                        help="grey anomaly sources on grey tiles (default on)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other Config field, e.g. --set texture_probability=0.2 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default mtd_benchmark.json, with --validate mtd_validation.json, in "
                             "runs/ or $MEMSEG_RUNS_DIR)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the trained model in DIR/checkpoint.pt (also every N steps with --set "
                             "checkpoint_every=N, and on Ctrl-C); a later run with the same settings continues "
                             "it, or only scores it again once it is finished (then the scoring settings "
                             "may differ: --set memory_map_level=1, score_top_k, map_smoothing_sigma, ...)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    settings = {**BENCHMARK_SETTINGS, "image_size": args.image_size, "lr": args.lr,
                "optimizer": args.optimizer, "memory_size": args.memory_size,
                "memory_refresh_every": args.memory_refresh if args.memory_refresh is not None
                else (BENCHMARK_SETTINGS["memory_refresh_every"]
                      if args.train_encoder or args.train_stem == "on" else 0),
                "train_stem": args.train_stem == "on", "calibrate_batchnorm": args.calibrate_bn == "on",
                "train_encoder": args.train_encoder, "grey_sources": args.grey_sources == "on"}
    try:
        settings.update(parse_overrides(args.set))
        if "steps" in settings:  # fitted to --minutes, or --steps: one way to give it
            raise ValueError("give the number of steps with --steps N, not --set steps=N")
        preset = settings.pop("preset")
        config = get_config(preset, **settings)
    except (TypeError, ValueError) as error:  # an unknown or invalid setting (--set, --image-size), in one line
        size = settings.get("image_size")
        fits_without = isinstance(size, int) and size > 0 and size % input_multiple(False) == 0
        needs_half_off = fits_without and size_rule(True) in str(error)  # the size check of the option itself
        hint = " Add --set half_scale_map=False for other sizes." if needs_half_off else ""
        raise SystemExit(f"mtd.py settings (--image-size, --set, ...): {error}{hint}") from None
    if args.out is not None:  # before the training, not after
        reason = "it is a folder" if args.out.is_dir() else writable_problem(args.out)
        if reason is not None:
            raise SystemExit(f"mtd.py: cannot write --out {args.out}: {reason}.")
    try:
        full_train = MTDDataset(args.root, "train", image_size=config.image_size)
    except (FileNotFoundError, ValueError) as error:  # no MTD folder, or a split.csv without training tiles
        raise SystemExit(f"mtd.py: {error}") from None
    textures = TEXTURES(config)
    validation = None
    if args.validate:
        kept, validation = validation_split(full_train, config, anomalies=args.validation_anomalies)
        train = InMemory(full_train, kept)
    else:
        train = InMemory(full_train)
    print(f"MTD: {len(train)} training tiles at {config.image_size} px, {len(textures)} textures, "
          f"{torch.get_num_threads()} threads", flush=True)

    split = f"validate:{args.validation_anomalies}" if args.validate else "train"
    tiles = train.fingerprint() if args.run_dir is not None else None
    checkpoint, rescoring = saved_run(args.run_dir, config, split, args.steps, tiles)
    if checkpoint is not None:
        steps = checkpoint["config"]["steps"]
        doing = "continuing" if checkpoint["step"] < steps else "scoring the finished run"
        if rescoring:
            doing += " with " + ", ".join(f"{key} {new!r} (saved with {old!r})"
                                          for key, (old, new) in rescoring.items()) + ","
        print(f"{doing} {args.run_dir / CHECKPOINT_NAME} at step {checkpoint['step']} of {steps}", flush=True)
    else:
        steps = args.steps or fit_steps(config, train, textures, args.minutes)
    config = get_config(preset, **{**settings, "steps": steps})
    print(config.summary(), f"train_encoder={config.train_encoder} train_stem={config.train_stem} "
          f"calibrate_bn={config.calibrate_batchnorm} grey_sources={config.grey_sources} "
          f"refresh={config.memory_refresh_every} lr={config.lr} "
          f"standardize={config.per_image_standardization} map_sigma={config.map_smoothing_sigma} "
          f"memory_map_weight={config.memory_map_weight} memory_map_level={config.memory_map_level} "
          f"half_scale_map={config.half_scale_map} "
          f"image_score={config.score_mode}:{config.score_top_k}", flush=True)
    if checkpoint is not None:
        trainer = Trainer.resume(args.run_dir / CHECKPOINT_NAME, train, textures, progress=sys.stderr.isatty(),
                                 checkpoint=checkpoint)
        if rescoring:
            trainer.calibrate_memory_map()  # the saved one may be of another level, or none (weight 0)
    else:
        trainer = Trainer(config, train, textures, progress=sys.stderr.isatty(), run_dir=args.run_dir,
                          run_info={"mtd_split": split, "train_tiles": tiles})
    start, start_step = time.perf_counter(), trainer.step
    deadline = None if args.steps else start + args.minutes * 60.0

    def stop_at_deadline(trainer, record):
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeUp

    cut = False
    try:
        trainer.fit(callback=stop_at_deadline)
    except TimeUp:
        cut = True
        print(f"time budget reached: stopped after {trainer.step} of {steps} steps "
              f"(lr {trainer.history[-1]['lr']:.2e} not yet at 0)", flush=True)
        trainer.calibrate_memory_map()  # fit() does it only when it ends by itself
        if args.run_dir is not None:
            trainer.save()  # unfinished: a later run with this --run-dir continues it
    history, steps_planned, steps = trainer.history, steps, trainer.step
    train_seconds, trained_now = time.perf_counter() - start, trainer.step - start_step
    images_per_s = trained_now * config.batch_size / train_seconds if trained_now else None
    losses = [r["loss"] for r in history]
    earlier = f" (after {start_step} steps of an earlier run)" if start_step else ""
    speed = f"{images_per_s:.2f} images/s" if images_per_s else "no step to time"
    print(f"trained {trained_now} steps{earlier} in {train_seconds / 60:.1f} min ({speed}); "
          f"loss first 20 {np.mean(losses[:20]):.4f} -> last 20 {np.mean(losses[-20:]):.4f}", flush=True)

    result = {"settings": config.to_dict(), "steps": steps, "steps_planned": steps_planned,
              "steps_of_earlier_runs": start_step,
              "rescored_from": {key: old for key, (old, _) in rescoring.items()},
              "stopped_by_time_budget": cut, "train_minutes": train_seconds / 60 if trained_now else None,
              "train_images_per_s": images_per_s,
              "loss_first20": float(np.mean(losses[:20])), "loss_last20": float(np.mean(losses[-20:]))}
    if validation is not None:
        metrics = score_validation(trainer.model, validation, config)
        result.update(split=f"validation (80 held-out train normals + 80 with {args.validation_anomalies} defects)",
                      **metrics)
        print(format_results_table(metrics["per_family"], metrics, config.aupro_fpr_limit))
        print(f"VALIDATION {headline(metrics, config.aupro_fpr_limit)}  eval {metrics['eval_images_per_s']:.2f} "
              f"img/s  {by_score_line(metrics)}")
        if config.half_scale_map:
            plain = score_validation(trainer.model.without_half_scale_map(), validation, config)
            print("the same run, scored with the full-size map only:")
            print(format_results_table(plain["per_family"], plain, config.aupro_fpr_limit))
            print(f"VALIDATION with the full-size map only: {headline(plain, config.aupro_fpr_limit)}", flush=True)
            result["full_size_map_only"] = plain
    else:
        test = MTDDataset(args.root, "test", image_size=config.image_size)
        evaluation = evaluate(trainer.model, test, config, batch_size=16)
        result.update(split="test", **evaluation_record(evaluation))
        print(evaluation.table())
        print(f"TEST {headline(evaluation.metrics, evaluation.fpr_limit)}  "
              f"train {speed.replace('images/s', 'img/s')}  eval {evaluation.images_per_second:.2f} img/s")
        if rescoring:
            print("note: scored on the test split with other scoring settings than the run's own: a figure to "
                  "report, never one to choose by (settings are chosen with --validate)")
        if config.half_scale_map:
            plain = evaluate(trainer.model.without_half_scale_map(), test, config, batch_size=16)
            print("the same run, scored with the full-size map only:")
            print(plain.table())
            print(f"TEST with the full-size map only: {headline(plain.metrics, plain.fpr_limit)}", flush=True)
            result["full_size_map_only"] = evaluation_record(plain)
    # A finished run scored again keeps the file of its training run (with the training speed) as it is.
    scored = "" if trained_now else "_scored"
    out = args.out or runs_dir() / (f"mtd_validation{scored}.json" if args.validate else f"mtd_benchmark{scored}.json")
    atomic_write_json(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
