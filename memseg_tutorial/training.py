"""The training loop of lesson 08: memory bank once, then batches of normal + simulated anomalies.

One step k:
  1. batch k = samples k*B .. k*B+B-1 of the training stream (B = batch_normal + batch_synthetic);
     every sample is a pure function of (seed, index), so a resumed run sees the same batch k;
  2. logits = model(images)                       # (B, 2, S, S)
  3. loss = 0.6 * L1 + 0.4 * focal                # MemSegLoss with the config weights
  4. backward, optimiser step, schedule step.

On CUDA the anomalies are simulated on the GPU (``synthesize_batch_torch``), because on Colab
two CPU cores cannot feed a GPU with imgaug; on the CPU the same samples come from the
``TrainingSampleDataset`` through a DataLoader. The two paths draw different (equally valid)
anomalies; each is reproducible on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .device import checked_device, get_device
from .seeding import make_rng, use_deterministic_algorithms
from .staging import writable_problem

MEMORY_KEY = 1_000_003  # make_rng(seed, MEMORY_KEY) picks the memory images (no clash with sample i)
GPU_BATCH_KEY = 2_000_003  # make_rng(seed, GPU_BATCH_KEY, step) drives the GPU synthesis of step k
GPU_TEXTURE_KEY = 2_000_029  # make_rng(seed, GPU_TEXTURE_KEY, g) draws the textures of GPU texture pool g
TEXTURE_POOL_SIZE = 64  # textures on the GPU at a time (lesson 08, section 5)
TEXTURE_POOL_REFRESH_EVERY = 50  # steps between two redraws of the pool
MEMORY_MAP_KEY = 4_000_037  # make_rng(seed, MEMORY_MAP_KEY) picks the images that calibrate the memory map
MEMORY_MAP_IMAGES = 64
CHECKPOINT_NAME = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite: more steps cannot repair them."""


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C stopped :meth:`Trainer.fit` inside a step: nothing was saved."""


def _ignore_ctrl_c(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which finishes its step first (a
    forked worker would run its handler too, a spawned one would die and fail the step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Interrupts:
    """Ctrl-C while :meth:`Trainer.fit` runs, held until the step ends.

    A step moves BatchNorm statistics in its forward pass and the weights in its optimiser step,
    and counts itself only at the end: a checkpoint saved from the middle of one would say step k
    and hold part of step k + 1, so its resume would not repeat the run. A second Ctrl-C stops at
    once (a step that hangs), and then nothing is saved over the last checkpoint.
    """

    def __init__(self, saves: bool = True) -> None:
        self.pending = self.forced = False
        self.saves = saves  # only for what the first press announces

    def check(self) -> None:
        if self.pending:
            raise KeyboardInterrupt

    @contextmanager
    def held(self):
        """Hold Ctrl-C meanwhile; only the main thread may set a signal handler (else: nothing held)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        then = "saving after this step (press it again to stop at once, without saving)" if self.saves else (
            "stopping after this step (press it again to stop at once)")

        def handler(signum, frame) -> None:
            if self.pending:
                self.forced = True
                raise StoppedAtOnce
            self.pending = True
            message = f"\nCtrl-C: {then}.\n"
            try:  # os.write: print() to a file could re-enter a buffered write that the signal interrupted
                os.write(sys.stderr.fileno(), message.encode())
            except (OSError, ValueError):  # no file descriptor (a Jupyter kernel's stream): its own write
                with contextlib.suppress(Exception):
                    sys.stderr.write(message)

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """SGD with momentum (the full preset's choice, at the paper's lr 0.04) or AdamW (the public
    re-implementation's, lr 3e-3), each with ``config.weight_decay`` (5e-4 in both presets)."""
    params = trainable_parameters(model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, config: Config, total_steps: int | None = None) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    cosine: linear warm-up over the first ``warmup_fraction`` of the steps (from 1/warmup up to
    1), then half a cosine that would reach 0 one step after the last, so the last step trains at
    a small positive rate (the quick preset: 2.5e-6). constant: always 1.
    """
    if config.schedule == "constant":
        return 1.0
    total = total_steps or config.steps
    warmup = int(round(config.warmup_fraction * total))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Config
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))


def learning_rates(config: Config) -> np.ndarray:
    """The learning rate of every step, for the schedule plot of lesson 08."""
    return np.array([config.lr * lr_factor(step, config) for step in range(config.steps)])


# ---------------------------------------------------------------------------------------------
# Memory bank
# ---------------------------------------------------------------------------------------------


def memory_indices(num_images: int, config: Config) -> list[int]:
    """Which normal training images fill the memory bank: ``memory_size`` drawn with the seed."""
    if num_images < 1:
        raise ValueError("The training set has no normal images to build the memory bank from.")
    count = min(config.memory_size, num_images)
    if count < config.memory_size:
        warnings.warn(
            f"memory_size={config.memory_size} but only {num_images} training images: "
            f"the bank holds {count}.",
            stacklevel=2,
        )
    chosen = make_rng(config.seed, MEMORY_KEY).choice(num_images, size=count, replace=False)
    return sorted(int(i) for i in chosen)


def dataset_images(dataset, indices) -> torch.Tensor:
    """The normalised images (N, 3, S, S) of a dataset at ``indices``, stacked."""
    return torch.stack([dataset[int(i)]["image"] for i in indices])


def memory_images(dataset, config: Config) -> torch.Tensor:
    """Normalised normal training images (N, 3, S, S) for ``model.build_memory_bank``."""
    return dataset_images(dataset, memory_indices(len(dataset), config))


def memory_map_indices(num_images: int, config: Config, count: int = MEMORY_MAP_IMAGES) -> list[int]:
    """Normal training images, outside the bank, that calibrate the memory map (``memory_map_weight``).

    Outside, because a bank image finds itself (m1 = 0 everywhere), which no new image does.
    """
    bank = set(memory_indices(num_images, config))
    order = make_rng(config.seed, MEMORY_MAP_KEY).permutation(num_images)
    others = [int(i) for i in order if int(i) not in bank]
    if not others:
        raise ValueError(
            f"memory_map_weight needs normal training images outside the memory bank, but all "
            f"{num_images} are in it (memory_size={config.memory_size}): lower memory_size or "
            f"set memory_map_weight=0."
        )
    return sorted(others[:count])


def memory_map_images(dataset, config: Config) -> torch.Tensor:
    """The normal training images (N, 3, S, S) that calibrate the memory map after training: the
    Trainer's, and those of a trained model scored with another ``memory_map_level`` (``evaluate
    --set``, ``predict --set``)."""
    return dataset_images(dataset, memory_map_indices(len(dataset), config))


class DatasetSubset(torch.utils.data.Dataset):
    """Some images of a dataset, with the same interface (``load_rgb``, ``image_paths``, ...)."""

    def __init__(self, dataset, indices) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]

    def load_rgb(self, index: int) -> np.ndarray:
        return self.dataset.load_rgb(self.indices[index])

    @property
    def image_paths(self) -> list:
        return [self.dataset.image_paths[i] for i in self.indices]

    @property
    def image_size(self) -> int | None:
        return getattr(self.dataset, "image_size", None)

    @property
    def labels(self) -> list[int]:
        return [self.dataset.labels[i] for i in self.indices]

    @property
    def defects(self) -> list[str]:
        return [self.dataset.defects[i] for i in self.indices]


# The same number as MEMORY_MAP_KEY, by an early slip. Harmless: the two streams shuffle sets of
# different sizes (all normals here, the kept ones there), and changing either key would change
# the stored lesson outputs and the recorded benchmark figures.
HOLDOUT_KEY = 4_000_037


def split_holdout(dataset, count: int, seed: int = 42) -> tuple[DatasetSubset, DatasetSubset]:
    """(training part, held-out part of ``count`` images) of the normal training images.

    The held-out normals never train the model; they set the decision thresholds (a percentile
    of their scores), so that no threshold is ever tuned on the test set.
    """
    if not 0 < count < len(dataset):
        raise ValueError(f"Cannot hold out {count} of {len(dataset)} images; need 0 < count < total.")
    order = make_rng(seed, HOLDOUT_KEY).permutation(len(dataset))
    return DatasetSubset(dataset, sorted(order[count:])), DatasetSubset(dataset, sorted(order[:count]))


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def cuda_autocast_dtype(config: Config) -> torch.dtype | None:
    """The CUDA mixed-precision dtype, or None for float32.

    float16 runs on every CUDA GPU (Colab's T4 has no bfloat16); it was the fastest on an H200,
    bfloat16 on an H100 (benchmarks/training_speed.py). float16 needs a GradScaler, and the model
    keeps the half that reads the memory differences in float32 (``after_memory_precision``).
    bfloat16 has float32's range and needs neither.
    """
    return getattr(torch, config.amp_dtype) if config.amp else None


def _autocast(device: torch.device, config: Config):
    """Mixed precision on CUDA (``cuda_autocast_dtype``); bf16 on the CPU only when asked for."""
    if device.type == "cuda" and (dtype := cuda_autocast_dtype(config)) is not None:
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and config.cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def check_training_set(train_dataset, config: Config) -> None:
    """What a training set must be, where it says (``image_size``, ``labels``): at the config's
    size, since the checkpoint records that size and everything later resizes to it; and normal
    images only, since the memory bank and the normal half of every batch are drawn from it."""
    size = getattr(train_dataset, "image_size", None)
    if size is not None and size != config.image_size:
        raise ValueError(
            f"The training set gives {size} px images but config.image_size is {config.image_size}: "
            f"make it with image_size=config.image_size (the checkpoint records the config's size)."
        )
    labels = getattr(train_dataset, "labels", None)
    defective = 0 if labels is None else int(np.count_nonzero(np.asarray(labels)))
    if defective:
        raise ValueError(
            f"The training set holds {defective} defective image{'s' * (defective > 1)} of {len(labels)}: "
            f"MemSeg trains on normal images only (its memory bank and the normal half of every batch come "
            f"from them). Use the 'train' split, or split_holdout's normal images."
        )


def check_training_files(train_dataset, texture_source) -> None:
    """The first and last bytes of every training and texture file (``check_image_file``), where
    the dataset lists its files (``image_paths``, ``paths``): one bad file among thousands would
    otherwise stop a run when a batch first reaches it, maybe hours in. Raises
    :class:`UnreadableImageError` naming the first bad file and how many more there are."""
    from .data.images import UnreadableImageError, check_image_file
    from .inference import each_readable

    for paths, what in ((getattr(train_dataset, "image_paths", None), "training images"),
                        (getattr(texture_source, "paths", None), "texture images")):
        bad: list[tuple[Path, Exception]] = []
        each_readable([Path(path) for path in (() if paths is None else paths)], check_image_file,
                      lambda path, error, found=bad: found.append((path, error)))
        if not bad:
            continue
        others = [path.name for path, _ in bad[1:]]
        if not others:
            raise UnreadableImageError(f"{bad[0][1]} Move it away (or replace it) and train again.")
        unnamed = len(others) - 3
        listed = ", ".join(others[:3]) + (f" and {unnamed} other{'s' * (unnamed > 1)}" if unnamed > 0 else "")
        raise UnreadableImageError(f"{bad[0][1]} {len(others)} more {what} cannot be read either: {listed}. "
                                   f"Move them away (or replace them) and train again.")


class Trainer:
    """Owns the model, the training stream, the optimiser, the schedule and the loss history.

    >>> trainer = Trainer(config, train_dataset, TextureSource(), kind="texture", run_dir="runs/x")
    >>> history = trainer.fit()             # config.steps steps, checkpoint in run_dir
    >>> trainer = Trainer.resume("runs/x/checkpoint.pt", train_dataset, TextureSource())
    """

    def __init__(
        self,
        config: Config,
        train_dataset,
        texture_source,
        kind: str = "texture",
        run_dir: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        invert_foreground: bool = False,
        progress: bool = True,
        run_info: dict | None = None,
        load_encoder_weights: bool = True,
    ) -> None:
        """``load_encoder_weights=False`` leaves the encoder random although the config names
        weights: only for :meth:`resume`, whose ``load_state`` then replaces every weight, so that a
        resumed run needs neither the ImageNet download nor the ``.pth`` file it started from.
        Trained without that, the run would be random while its config says otherwise."""
        from .losses import MemSegLoss
        from .model import MemSeg
        from .model.backbone import random_weights_on_purpose
        from .synthesis import AnomalySynthesizer, TrainingSampleDataset

        self.config = config.validate()
        check_training_set(train_dataset, config)
        check_training_files(train_dataset, texture_source)
        if run_dir is not None and (problem := writable_problem(Path(run_dir), folder=True)) is not None:
            raise ValueError(f"Cannot write checkpoints in {run_dir}: {problem}.")  # before the training, not after
        self.device = checked_device(device) if device is not None else get_device(config)
        self.train_dataset = train_dataset
        self.texture_source = texture_source
        self.kind = kind
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.saved_step: int | None = None  # the step that run_dir's checkpoint holds, once written or read
        self.progress = progress
        # train_images: how many normals it trained on, so that a later calibration (evaluate --set)
        # can tell a folder that differs from them
        self.run_info = {"kind": kind, "invert_foreground": invert_foreground,
                         "train_images": len(train_dataset), **(run_info or {})}
        self.run_info.setdefault("gpu_synthesis", self.uses_gpu_synthesis)  # a resume elsewhere draws other batches
        self.run_info.setdefault("texture_images", len(texture_source))  # a moved copy must hold the same

        if config.deterministic:
            use_deterministic_algorithms()  # before the first kernel, so cuBLAS picks it up
        torch.manual_seed(config.seed)  # the same initial weights for the same seed
        weights = config.backbone_weights if load_encoder_weights else "none"
        with random_weights_on_purpose(weights == "none"):  # meant (the summary says so) or replaced
            self.model = MemSeg.from_config(config, backbone_weights=weights)
        if config.train_encoder:
            self.model.encoder.requires_grad_(True)  # no pretrained features worth freezing
        if not config.train_stem:
            self.model.encoder.freeze_stem()
        self.model.to(self.device)
        self.criterion = MemSegLoss.from_config(config)
        self.synthesizer = AnomalySynthesizer(config, texture_source, kind, invert_foreground)
        self.samples = TrainingSampleDataset(
            train_dataset,
            self.synthesizer,
            length=config.steps * config.batch_size,
            seed=config.seed,
            batch_normal=config.batch_normal,
            batch_synthetic=config.batch_synthetic,
        )
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        use_scaler = self.device.type == "cuda" and cuda_autocast_dtype(config) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.step = 0
        self.history: list[dict] = []
        self._memory_images: torch.Tensor | None = None
        self._memory_map_step: int | None = None  # the step at which the memory map was calibrated
        if config.memory_map_weight > 0:  # a set too small for the calibration fails before training
            memory_map_indices(len(train_dataset), config)
        self._gpu_stream = None

    # -- memory bank ------------------------------------------------------------------------

    def build_memory_bank(self) -> None:
        """Features of ``memory_size`` normal training images (never synthetic ones).

        The first time, a random encoder's BatchNorm statistics are set from the same images
        (``config.calibrate_batchnorm``; see ``ResNet18Encoder.calibrate_batchnorm``).
        """
        if self._memory_images is None:
            self._memory_images = memory_images(self.train_dataset, self.config)
        calibrate = self.config.backbone_weights == "none" and self.config.calibrate_batchnorm
        if calibrate and self.model.memory_bank.is_empty:  # once, before training (not on resume)
            self.model.encoder.calibrate_batchnorm(self._memory_images)
        self.model.build_memory_bank(self._memory_images.to(self.device))

    def calibrate_memory_map(self) -> None:
        """How the decoder's logit and log m (``memory_map_level``) spread on normal images, for
        ``memory_map_weight``.

        Runs when ``fit()`` ends by itself and before every checkpoint (once per step), so that a
        saved model scores like the one in memory; training itself never reads these numbers.
        Call it yourself after stopping ``fit()`` early with an exception from a callback.
        """
        if (self.config.memory_map_weight <= 0 or self._memory_map_step == self.step
                or self.model.memory_bank.is_empty):  # nothing trained or comparable yet
            return
        images = memory_map_images(self.train_dataset, self.config)
        self.model.calibrate_memory_map(images.to(self.device))
        self._memory_map_step = self.step

    # -- batches ------------------------------------------------------------------------------

    @property
    def uses_gpu_synthesis(self) -> bool:
        return self.device.type == "cuda" and self.config.gpu_synthesis

    def batch(self, step: int) -> dict:
        """Batch ``step`` of the stream (same batch for the same step, whatever happened before)."""
        if self.uses_gpu_synthesis:
            return self._gpu_batch(step)
        size = self.config.batch_size
        items = [self.samples[i] for i in range(step * size, (step + 1) * size)]
        return torch.utils.data.default_collate(items)

    def _batches(self, start: int, stop: int):
        """Batches start..stop-1: a DataLoader on the CPU path (workers keep the order)."""
        if self.uses_gpu_synthesis:
            for step in range(start, stop):
                yield self._gpu_batch(step)
            return
        size = self.config.batch_size
        loader = DataLoader(
            self.samples,
            batch_size=size,
            sampler=range(start * size, stop * size),
            num_workers=self.config.num_workers,
            persistent_workers=False,
            worker_init_fn=_ignore_ctrl_c if self.config.num_workers > 0 else None,
        )
        yield from loader

    def _gpu_batch(self, step: int) -> dict:
        if self._gpu_stream is None:
            self._gpu_stream = GpuSampleStream(self)
        return self._gpu_stream.batch(step)

    # -- one step -----------------------------------------------------------------------------

    def train_step(self, batch: dict) -> dict[str, float]:
        """Forward, loss, backward, optimiser and schedule step; returns the logged numbers."""
        self.model.train()
        images = batch["image"].to(self.device, non_blocking=True)  # (B, 3, S, S)
        masks = batch["mask"].to(self.device, non_blocking=True)  # (B, 1, S, S)
        lr = self.optimizer.param_groups[0]["lr"]
        with _autocast(self.device, self.config):
            logits = self.model(images)  # (B, 2, S, S)
        total, parts = self.criterion(logits.float(), masks)
        loss = float(total.detach())  # the one sync per step; checked before the optimiser step
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"The loss became {loss} at step {self.step + 1} (learning rate {lr:g}): training "
                f"diverged. Train again with a lower learning rate (the config's lr; on the command "
                f"line train --set lr=... with a new --name): resuming would repeat the same steps."
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record = {
            "step": self.step,
            "loss": loss,
            "l1": float(parts["l1"]),
            "focal": float(parts["focal"]),
            "lr": float(lr),
        }
        self.history.append(record)
        every = self.config.memory_refresh_every
        if every > 0 and self.step % every == 0 and self.step < self.config.steps:
            self.build_memory_bank()  # the encoder moved: compare with today's features
        return record

    # -- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        steps: int | None = None,
        callback: Callable[[Trainer, dict], None] | None = None,
        report_interrupt: bool = True,
    ) -> list[dict]:
        """Train until ``config.steps`` (or for ``steps`` more steps); returns the loss history.

        Saves ``run_dir/checkpoint.pt`` every ``checkpoint_every`` steps and at the end. Ctrl-C
        lets the step that runs finish, saves a checkpoint, says where (unless ``report_interrupt``
        is False: the command line says it in its own error line), then re-raises
        KeyboardInterrupt (resume with :meth:`Trainer.resume`); a second Ctrl-C stops at once and
        keeps the last checkpoint as it was.
        """
        interrupts = _Interrupts(saves=self.run_dir is not None)
        with interrupts.held():
            if any(scale.bank.is_empty for scale in self.model.scales):  # none yet, or one cut short
                self.build_memory_bank()
            interrupts.check()  # nothing trained yet: nothing to save
            stop = self.config.steps if steps is None else min(self.config.steps, self.step + steps)
            if self.step >= stop:
                return self.history
            self._fit(stop, callback, report_interrupt, interrupts)
        return self.history

    def _fit(self, stop: int, callback, report_interrupt: bool, interrupts: _Interrupts) -> None:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        start_time, start_step = time.perf_counter(), self.step
        try:
            for batch in self._batches(self.step, stop):
                record = self.train_step(batch)
                if bar is not None:
                    elapsed = time.perf_counter() - start_time
                    rate = (self.step - start_step) * self.config.batch_size / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{rate:.1f}")
                    bar.update(1)
                if callback is not None:
                    callback(self, record)
                if (
                    self.run_dir is not None
                    and self.config.checkpoint_every > 0
                    and self.step % self.config.checkpoint_every == 0
                    and self.step < stop
                ):
                    self.save()
                interrupts.check()  # between two steps: the state is whole
            self.seconds = time.perf_counter() - start_time
            self.images_per_second = (
                (self.step - start_step) * self.config.batch_size / max(self.seconds, 1e-9)
            )
            self.calibrate_memory_map()
            if self.run_dir is not None:
                self.save()
            interrupts.check()  # the run is complete and saved; the caller asked to stop all the same
        except KeyboardInterrupt:
            if self.run_dir is not None and interrupts.forced:
                if report_interrupt:
                    print(f"\nStopped at once (a second Ctrl-C): nothing was saved over {self.checkpoint_path}.")
            elif self.run_dir is not None:
                path = self.save() if self.saved_step != self.step else self.checkpoint_path
                if report_interrupt:
                    print(f"\nInterrupted at step {self.step}; checkpoint saved to {path}.")
            raise
        finally:
            if bar is not None:
                bar.close()

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        if self.run_dir is None:
            raise ValueError("This trainer has no run_dir; pass one or give save() a path.")
        return self.run_dir / CHECKPOINT_NAME

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the checkpoint atomically (temp file + rename); :class:`TrainingDiverged` instead
        when the model holds NaN or inf, so that a diverged run never replaces a good checkpoint.

        A finished run's checkpoint leaves out the optimiser's state (with AdamW, which keeps two
        numbers per trained weight, about three fifths of the file): no training continues from it, and
        evaluation and inference need only the model.
        """
        bad = next((name for name, value in self.model.state_dict().items()
                    if value.is_floating_point() and not torch.isfinite(value).all()), None)
        target = Path(path) if path is not None else self.checkpoint_path
        if bad is not None:  # never over a good checkpoint; checked before the calibration reads them
            raise TrainingDiverged(
                f"The model holds NaN or inf after step {self.step} (first in {bad}): training diverged, "
                f"so nothing was saved over {target}. Train again with a lower learning rate (the config's "
                f"lr; on the command line train --set lr=... with a new --name).")
        self.calibrate_memory_map()
        finished = self.step >= self.config.steps
        written = save_checkpoint(
            target,
            model=self.model,
            config=self.config,
            step=self.step,
            optimizer=None if finished else self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            history=self.history,
            run_info=self.run_info,
        )
        if path is None or (self.run_dir is not None and target == self.checkpoint_path):
            self.saved_step = self.step  # what the run's own checkpoint holds, for the messages
        return written

    def load_state(self, checkpoint: dict) -> None:
        """Restore model, optimiser, schedule, step and history from a checkpoint dict."""
        self.model.load_state_dict(checkpoint["model"])
        self.model.to(self.device)
        if checkpoint.get("optimizer") is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scheduler") is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        self.history = list(checkpoint.get("history", []))

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        train_dataset,
        texture_source,
        run_dir: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        checkpoint: dict | None = None,
    ) -> Trainer:
        """A trainer that continues a checkpoint exactly: same weights, same next batch (given the
        same number of training images: another count is refused).

        ``checkpoint``: what :func:`load_checkpoint` read from ``path``, when the caller has it
        already (the command line checks it first), so that a large file is not read twice. The
        trainer takes it over: the optimiser keeps its tensors and training changes them.
        """
        if checkpoint is None:
            checkpoint = load_checkpoint(path, map_location="cpu")
        config = Config.from_dict(checkpoint["config"])
        run = checkpoint.get("run", {})
        if run.get("train_images") not in (None, len(train_dataset)):  # the data moved, or is other data
            raise ValueError(f"{path} was trained on {run['train_images']} normal images, and the training set "
                             f"given holds {len(train_dataset)}: a resumed run continues on the same images.")
        if run.get("texture_images") not in (None, len(texture_source)):
            raise ValueError(f"{path} drew its anomalies from {run['texture_images']} texture images, and the "
                             f"texture source given holds {len(texture_source)}: a resumed run continues with "
                             f"the same textures.")
        trainer = cls(
            config,
            train_dataset,
            texture_source,
            kind=run.get("kind", "texture"),
            run_dir=run_dir if run_dir is not None else Path(path).parent,
            device=device,
            invert_foreground=run.get("invert_foreground", False),
            progress=progress,
            run_info=run,
            load_encoder_weights=False,  # load_state brings every weight
        )
        trainer.load_state(checkpoint)
        trainer.saved_step = trainer.step
        recorded = run.get("gpu_synthesis")
        if recorded is not None and recorded != trainer.uses_gpu_synthesis:
            where = ("the GPU there and on the CPU here" if recorded else "the CPU there and on the GPU here")
            warnings.warn(f"{path} simulated its anomalies on {where}: the weights continue exactly, but "
                          f"the batches from now on are not the ones the run would have drawn.", stacklevel=2)
            trainer.run_info["gpu_synthesis"] = trainer.uses_gpu_synthesis
        return trainer


class TexturePool:
    """The textures the GPU synthesis draws from: ``size`` of them on the device at a time.

    DTD has 5,640 images; the CPU path draws from all of them, so the GPU path must not settle for
    one fixed handful. Every ``refresh_every`` steps the pool is redrawn from the whole source
    (without repeats within a pool), and the next pool is read in a background thread while the
    current one is in use, so the GPU does not wait for JPEG decoding. Pool g is a pure function
    of (seed, g), so batch k sees the same textures in a resumed run. A source that fits in one
    pool is loaded once, whole; no pool is read ahead past ``total_steps``.
    """

    def __init__(self, source, seed: int, device: torch.device, size: int = TEXTURE_POOL_SIZE,
                 refresh_every: int = TEXTURE_POOL_REFRESH_EVERY,
                 total_steps: int | None = None):
        if size < 1 or refresh_every < 1:
            raise ValueError(f"TexturePool needs size >= 1 and refresh_every >= 1, got {size} and {refresh_every}.")
        self.source, self.seed, self.device, self.total_steps = source, seed, device, total_steps
        self.size = min(size, len(source))
        self.refresh_every = refresh_every if len(source) > self.size else 0  # 0: one pool, never redrawn
        self.generation: int | None = None
        self.textures: torch.Tensor | None = None  # (T, 3, S, S) float in [0, 1] on the device
        self._next: tuple[int, Future] | None = None  # the pool being read in the background

    def generation_of(self, step: int) -> int:
        return step // self.refresh_every if self.refresh_every else 0

    def indices(self, generation: int) -> np.ndarray:
        """The source indices of pool ``generation``."""
        if not self.refresh_every:
            return np.arange(self.size)
        rng = make_rng(self.seed, GPU_TEXTURE_KEY, generation)
        return rng.choice(len(self.source), size=self.size, replace=False)

    def _read(self, generation: int) -> np.ndarray:
        return np.stack([self.source.load(i) for i in self.indices(generation)])  # (T, S, S, 3) uint8

    def _read_ahead(self, generation: int) -> Future:
        """A daemon thread: it never holds up the interpreter's exit, and ends with its read."""
        future: Future = Future()

        def read() -> None:
            try:
                future.set_result(self._read(generation))
            except BaseException as error:  # handed to whoever asks for this pool
                future.set_exception(error)

        threading.Thread(target=read, name=f"texture-pool-{generation}", daemon=True).start()
        return future

    def at(self, step: int) -> torch.Tensor:
        """The pool for training step ``step``."""
        generation = self.generation_of(step)
        if generation != self.generation:
            ahead = self._next
            # Another pool's read-ahead (a jump, a resume) is left to finish on its own.
            textures = ahead[1].result() if ahead is not None and ahead[0] == generation else self._read(generation)
            self._next = None
            self.textures = torch.from_numpy(textures).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            self.generation = generation
            following = (generation + 1) * self.refresh_every
            if self.refresh_every and (self.total_steps is None or following < self.total_steps):
                self._next = (generation + 1, self._read_ahead(generation + 1))
        return self.textures


class GpuSampleStream:
    """The training stream on the GPU: normal images and textures live on the device as tensors,
    and ``synthesize_batch_torch`` simulates the anomalies of a batch in one go.

    Batch k draws its image indices from ``make_rng(seed, GPU_BATCH_KEY, k)`` and seeds a
    ``torch.Generator`` from it, and its textures come from :class:`TexturePool`, so batch k is
    reproducible and a resumed run continues exactly.
    """

    def __init__(self, trainer: Trainer, max_textures: int = TEXTURE_POOL_SIZE,
                 texture_refresh_every: int = TEXTURE_POOL_REFRESH_EVERY) -> None:
        from .synthesis import foreground_mask

        self.trainer = trainer
        config, device = trainer.config, trainer.device
        dataset = trainer.train_dataset
        images = np.stack([dataset.load_rgb(i) for i in range(len(dataset))])  # (N, S, S, 3)
        self.images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()  # uint8
        if trainer.kind == "object":
            invert = trainer.run_info.get("invert_foreground", False)
            fg = np.stack([foreground_mask(im, config.foreground_kernel, invert) for im in images])
            self.foregrounds = torch.from_numpy(fg).to(device)[:, None]  # (N, 1, S, S)
        else:
            self.foregrounds = None
        self.texture_pool = TexturePool(trainer.texture_source, config.seed, device, max_textures,
                                        texture_refresh_every, total_steps=config.steps)

    def batch(self, step: int) -> dict:
        from .data.images import normalize_tensor
        from .synthesis import synthesize_batch_torch

        config, device = self.trainer.config, self.trainer.device
        rng = make_rng(config.seed, GPU_BATCH_KEY, step)
        chosen = torch.from_numpy(rng.integers(len(self.images), size=config.batch_size)).to(device)
        images = self.images.index_select(0, chosen).float().div_(255.0)  # (B, 3, S, S)
        n = config.batch_normal
        generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
        foregrounds = None if self.foregrounds is None else self.foregrounds.index_select(0, chosen[n:])
        synthetic, synthetic_masks = synthesize_batch_torch(
            images[n:], self.texture_pool.at(step), foregrounds, generator, config
        )
        masks = torch.zeros(len(images), 1, *images.shape[-2:], device=device)
        images = torch.cat([images[:n], synthetic])
        masks[n:] = synthetic_masks
        return {
            "image": normalize_tensor(images),
            "mask": masks,
            "label": torch.tensor([0] * n + [1] * (len(images) - n), device=device),
        }
