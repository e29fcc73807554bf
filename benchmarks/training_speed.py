"""Training speed: where the anomalies are simulated (CPU workers or the GPU) and mixed precision.

Run:  python benchmarks/training_speed.py [--preset full] [--steps 40] [--workers 2]

Trains the same model on the offline sample data ("surface") and prints training images/s for
each variant, measured one after another in this process (after a few warm-up steps each):
  - on a CUDA machine: imgaug synthesis in ``--workers`` DataLoader processes (what two Colab
    CPU cores give) with float16 autocast, then the batched torch synthesis on the GPU with
    float16, bfloat16 (where the GPU has it natively) and no autocast, and last float16 with
    ``deterministic=True`` (fixed-order kernels: what bit-exact repeats and resumes cost);
  - on a CPU: fp32, then bf16 autocast (fast only on CPUs with native bf16).
Random encoder weights (offline machine): speed does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
import warnings

import torch

from memseg_tutorial import get_config
from memseg_tutorial.data import MVTecDataset, TextureSource, ensure_sample_dataset
from memseg_tutorial.model.backbone import RANDOM_WEIGHTS_WARNING
from memseg_tutorial.training import Trainer

warnings.filterwarnings("ignore", message=RANDOM_WEIGHTS_WARNING)


def images_per_second(config, train_set, textures, warmup: int, steps: int) -> float:
    """Training images/s of ``steps`` steps after ``warmup`` steps (memory bank excluded)."""
    config = dataclasses.replace(config, steps=warmup + steps, checkpoint_every=0)
    trainer = Trainer(config, train_set, textures, kind="texture", run_dir=None, progress=False)
    trainer.build_memory_bank()
    trainer.fit(steps=warmup)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit(steps=steps)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - start)


def variants(cuda: bool, workers: int) -> list[tuple[str, dict]]:
    if cuda:
        rows = [
            (f"CPU synthesis ({workers} workers), float16",
             dict(device="cuda", gpu_synthesis=False, num_workers=workers, amp_dtype="float16")),
            ("GPU synthesis, float16", dict(device="cuda", gpu_synthesis=True, amp_dtype="float16")),
            ("GPU synthesis, float32 (TF32 convs)", dict(device="cuda", gpu_synthesis=True, amp=False)),
        ]
        if torch.cuda.is_bf16_supported(including_emulation=False):
            rows.insert(2, ("GPU synthesis, bfloat16",
                            dict(device="cuda", gpu_synthesis=True, amp_dtype="bfloat16")))
        # Last: its switches are process-wide, and would slow every variant after it.
        rows.append(("GPU synthesis, float16, deterministic",
                     dict(device="cuda", gpu_synthesis=True, amp_dtype="float16", deterministic=True)))
        return rows
    return [
        (f"CPU, fp32, {workers} synthesis workers", dict(device="cpu", cpu_bf16=False, num_workers=workers)),
        (f"CPU, bf16 autocast, {workers} synthesis workers", dict(device="cpu", cpu_bf16=True, num_workers=workers)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("quick", "full"), default="full")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (CPU synthesis)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    base = get_config(args.preset, category="surface", backbone_weights="none")
    root = ensure_sample_dataset()
    train_set = MVTecDataset(root, "surface", "train", image_size=base.image_size)
    textures = TextureSource(None, image_size=base.image_size)
    where = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"device: {where}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    print(f"preset {args.preset}: {base.image_size} px, batch {base.batch_size}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per variant")
    rates = {}
    for name, overrides in variants(cuda, args.workers):
        rates[name] = images_per_second(dataclasses.replace(base, **overrides), train_set, textures,
                                        args.warmup, args.steps)
        print(f"  {name:<40} {rates[name]:8.1f} img/s")
    first = next(iter(rates.values()))
    for name, value in rates.items():
        print(f"  {name:<40} {value / first:8.2f}x the first")
    steps = get_config(args.preset).steps
    best = max(rates.values())
    print(f"the preset's {steps} steps at the best rate: "
          f"{steps * base.batch_size / best / 60:.1f} min (memory bank and evaluation not included)")


if __name__ == "__main__":
    main()
