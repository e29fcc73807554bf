"""Real-data benchmark: MemSeg with RANDOM encoder weights on the Magnetic Tile Defect dataset.

Trains on the 761 normal training tiles of ``split.csv`` (texture anomalies from the Flickr
Material Database folder), evaluates the LAST step on the test split (191 normal + 392 defective
tiles) and prints image AUROC, pixel AUROC, AUPRO@0.3, training and evaluation images/s. Nothing
is chosen on the test split: the settings below were picked with ``--validate``, which holds out
training normals and scores them against synthetic anomalies made from other held-out normals.

    python benchmarks/mtd.py                       # the benchmark (~30 min on 2 CPU cores)
    python benchmarks/mtd.py --minutes 10          # fewer steps, fitted to a 10-minute budget
    python benchmarks/mtd.py --steps 600 --image-size 128 --out runs/mtd.json
    python benchmarks/mtd.py --validate --minutes 8   # tuning: no test image is read

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
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from memseg_tutorial import get_config  # noqa: E402
from memseg_tutorial.checkpoint import atomic_write_text  # noqa: E402
from memseg_tutorial.data import MTDDataset, TextureSource  # noqa: E402
from memseg_tutorial.data.images import to_tensor  # noqa: E402
from memseg_tutorial.evaluation import compute_metrics, evaluate, format_results_table  # noqa: E402
from memseg_tutorial.paths import runs_dir, shared_data_dir  # noqa: E402
from memseg_tutorial.seeding import make_rng  # noqa: E402
from memseg_tutorial.training import Trainer  # noqa: E402

VALIDATION_KEY = 3_000_017

# The CPU preset of this benchmark (random weights, 2 cores, 30 minutes). See lesson 08.
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
    train_encoder=False,  # validation: frozen random layer1-3 beat trained ones (see lesson 08)
    memory_refresh_every=25,  # used only with --train-encoder
    score_top_k=100,
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


def validation_split(train: MTDDataset, config, n_normal: int = 40, n_anomalous: int = 40):
    """(training tiles, validation dict) from the training normals only.

    Held-out normals stay normal or receive one synthetic anomaly (seeded), so the validation
    score measures what the settings can learn without ever reading a test image.
    """
    from memseg_tutorial.synthesis import AnomalySynthesizer

    order = make_rng(config.seed, VALIDATION_KEY).permutation(len(train))
    held = order[: n_normal + n_anomalous]
    kept = sorted(int(i) for i in order[n_normal + n_anomalous :])
    synthesizer = AnomalySynthesizer(config, TEXTURES(config), kind="texture")
    images, masks, labels = [], [], []
    for rank, index in enumerate(held):
        image = train.load_rgb(int(index))
        mask = np.zeros(image.shape[:2], np.float32)
        if rank >= n_normal:
            sample = synthesizer.synth(image, make_rng(config.seed, VALIDATION_KEY, rank))
            image, mask = sample.image, sample.mask
        images.append(to_tensor(image))
        masks.append(mask)
        labels.append(int(rank >= n_normal))
    return kept, {"images": torch.stack(images), "masks": np.stack(masks), "labels": np.array(labels)}


def TEXTURES(config) -> TextureSource:  # noqa: N802 - reads like a constant at the call sites
    shared = shared_data_dir()
    folder = shared / "fmd" if shared is not None and (shared / "fmd").is_dir() else None
    return TextureSource(folder, image_size=config.image_size)


@torch.no_grad()
def score_validation(model, validation: dict, config) -> dict:
    from memseg_tutorial.model import image_scores

    model.eval()
    maps = torch.cat([model.anomaly_map(x) for x in validation["images"].split(16)])
    scores = image_scores(maps, config.score_top_k, config.score_mode)
    return compute_metrics(validation["labels"], scores.numpy(), validation["masks"], maps.numpy())


def fit_steps(config, train, textures, minutes: float, warmup_steps: int = 6) -> int:
    """Steps that fit in ``minutes`` at the speed of a few measured steps (after one warm-up)."""
    probe = Trainer(config, train, textures, progress=False)
    probe.build_memory_bank()
    probe.train_step(probe.batch(0))  # first step pays for allocations
    start = time.perf_counter()
    for step in range(1, warmup_steps + 1):
        probe.train_step(probe.batch(step))
    seconds_per_step = (time.perf_counter() - start) / warmup_steps
    refresh = config.memory_refresh_every
    budget = minutes * 60.0 * 0.97
    steps = int(budget / seconds_per_step)
    if refresh:  # a bank rebuild costs about memory_size / batch_size forward passes
        steps = int(steps / (1.0 + 0.15 * config.memory_size / config.batch_size / refresh))
    print(f"measured {seconds_per_step:.2f} s/step -> {steps} steps in {minutes:g} min", flush=True)
    return max(steps, 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="MTD folder (default: ../shared/data/mtd)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget (default 30)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps (overrides --minutes)")
    parser.add_argument("--image-size", type=int, default=BENCHMARK_SETTINGS["image_size"])
    parser.add_argument("--lr", type=float, default=BENCHMARK_SETTINGS["lr"])
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default=BENCHMARK_SETTINGS["optimizer"])
    parser.add_argument("--memory-size", type=int, default=BENCHMARK_SETTINGS["memory_size"])
    parser.add_argument("--memory-refresh", type=int, default=BENCHMARK_SETTINGS["memory_refresh_every"])
    parser.add_argument("--train-encoder", action="store_true",
                        help="also train layer1..3 (memory bank refreshed every --memory-refresh steps)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--validate", action="store_true", help="tune: score held-out train normals vs synthetic anomalies; no test image is read")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default runs/mtd_benchmark.json)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    settings = {**BENCHMARK_SETTINGS, "image_size": args.image_size, "lr": args.lr,
                "optimizer": args.optimizer, "memory_size": args.memory_size,
                "memory_refresh_every": args.memory_refresh if args.train_encoder else 0,
                "train_encoder": args.train_encoder}
    preset = settings.pop("preset")
    config = get_config(preset, **settings)
    full_train = MTDDataset(args.root, "train", image_size=config.image_size)
    textures = TEXTURES(config)
    validation = None
    if args.validate:
        kept, validation = validation_split(full_train, config)
        train = InMemory(full_train, kept)
    else:
        train = InMemory(full_train)
    print(f"MTD: {len(train)} training tiles at {config.image_size} px, {len(textures)} textures, "
          f"{torch.get_num_threads()} threads", flush=True)

    steps = args.steps or fit_steps(config, train, textures, args.minutes)
    config = get_config(preset, **{**settings, "steps": steps})
    print(config.summary(), f"train_encoder={config.train_encoder} refresh={config.memory_refresh_every}", flush=True)
    trainer = Trainer(config, train, textures, progress=sys.stderr.isatty())
    start = time.perf_counter()
    history = trainer.fit()
    train_seconds = time.perf_counter() - start
    losses = [r["loss"] for r in history]
    print(f"trained {steps} steps in {train_seconds / 60:.1f} min "
          f"({steps * config.batch_size / train_seconds:.2f} images/s); "
          f"loss first 20 {np.mean(losses[:20]):.4f} -> last 20 {np.mean(losses[-20:]):.4f}", flush=True)

    result = {"settings": config.to_dict(), "steps": steps, "train_minutes": train_seconds / 60,
              "train_images_per_s": steps * config.batch_size / train_seconds,
              "loss_first20": float(np.mean(losses[:20])), "loss_last20": float(np.mean(losses[-20:]))}
    if validation is not None:
        metrics = score_validation(trainer.model, validation, config)
        result.update(split="validation (held-out train normals + synthetic anomalies)", **metrics)
        print(f"VALIDATION image AUROC {metrics['image_auroc']:.3f}  pixel AUROC "
              f"{metrics['pixel_auroc']:.3f}  AUPRO@0.3 {metrics['aupro']:.3f}")
    else:
        test = MTDDataset(args.root, "test", image_size=config.image_size)
        evaluation = evaluate(trainer.model, test, config, batch_size=16)
        result.update(split="test", eval_images_per_s=evaluation.images_per_second,
                      per_defect=evaluation.per_defect, **evaluation.metrics)
        print(format_results_table(evaluation.per_defect, evaluation.metrics))
        print(f"TEST image AUROC {evaluation.metrics['image_auroc']:.3f}  pixel AUROC "
              f"{evaluation.metrics['pixel_auroc']:.3f}  AUPRO@0.3 {evaluation.metrics['aupro']:.3f}  "
              f"train {result['train_images_per_s']:.2f} img/s  eval {evaluation.images_per_second:.2f} img/s")
    out = args.out or runs_dir() / ("mtd_validation.json" if args.validate else "mtd_benchmark.json")
    atomic_write_text(json.dumps(result, indent=2), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
