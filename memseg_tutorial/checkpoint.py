"""Checkpoints that survive a crash: written to a temporary file, then renamed in one step.

A checkpoint holds everything a run needs to continue exactly where it stopped: the model
(memory bank included, it is a buffer), the optimiser and schedule states, the step, the config,
the seed and the loss history. ``os.replace`` is atomic on one file system, so a reader sees
either the old complete file or the new complete file, never half of one, even if the process
is killed (or Ctrl-C is pressed) in the middle of ``torch.save``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import zipfile
from pathlib import Path, PosixPath, PurePath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import torch

from .config import Config
from .staging import atomic_target

CHECKPOINT_FORMAT = "memseg-tutorial-checkpoint"
CHECKPOINT_VERSION = 2
# Why a file of an older version cannot be read into the current model (its weights do not fit).
OLDER_VERSIONS = {
    1: "its model had BatchNorm and ReLU after MSFF's convs, which are plain 3x3 convs now (as in the SPEC)",
}


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a file in a hidden staging folder beside ``path``, then move it over ``path``."""
    path = Path(path)
    with atomic_target(path) as temporary:
        torch.save(obj, temporary)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (metrics.json, scores.csv) the same all-or-nothing way."""
    path = Path(path)
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def atomic_write_json(data: dict, path: str | os.PathLike) -> Path:
    """A JSON record (metrics, history) the same all-or-nothing way. An undefined metric (NaN or
    inf) is written as null: NaN is not valid JSON and strict readers reject the file."""
    text = json.dumps(_finite_or_none(data), indent=2, default=float, allow_nan=False)
    return atomic_write_text(text + "\n", path)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def make_checkpoint(
    model: torch.nn.Module,
    config: Config,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    history: list[dict] | None = None,
    run_info: dict | None = None,
) -> dict:
    """The dictionary that :func:`save_checkpoint` writes (plain tensors and Python values)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "seed": int(config.seed),
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": list(history or []),
        "run": dict(run_info or {}),  # data root, category, kind, texture folder
    }


def save_checkpoint(path: str | os.PathLike, **parts) -> Path:
    """Build (see :func:`make_checkpoint` for the keywords) and write atomically."""
    return atomic_save(make_checkpoint(**parts), path)


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint a user means: ``path`` itself, or ``checkpoint.pt`` inside a run folder."""
    path = Path(path).expanduser()
    return path / "checkpoint.pt" if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, with errors that say what to do."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint not found: {path}. Train first (python -m memseg_tutorial train ...) "
            f"or pass the checkpoint.pt of a run folder under runs/."
        )
    damaged = _damaged_part(path)
    if damaged is not None:
        raise ValueError(
            f"Cannot read checkpoint {path}: it is damaged (its part {damaged} fails its checksum; a disk "
            f"or copy error). Use another copy, or an earlier checkpoint of the run."
        )
    try:  # weights_only: tensors and plain Python values only, so a file cannot run code when read
        with _allow_paths():
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Cannot read checkpoint {path}: {torch_load_problem(error)}. "
            f"Pass the checkpoint.pt that a run of this project wrote (or its run folder)."
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a memseg-tutorial checkpoint (no '{CHECKPOINT_FORMAT}' marker)."
        )
    if checkpoint.get("version") in OLDER_VERSIONS:
        raise ValueError(
            f"{path} was written by an earlier memseg_tutorial (checkpoint version {checkpoint['version']}): "
            f"{OLDER_VERSIONS[checkpoint['version']]}. Its weights do not fit the current model: train again "
            f"(python -m memseg_tutorial train ..., or demo)."
        )
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is a checkpoint of format version {checkpoint.get('version')!r}; this version of "
            f"memseg_tutorial reads version {CHECKPOINT_VERSION}."
        )
    for key, kind in (("config", dict), ("model", dict), ("step", int)):
        if not isinstance(checkpoint.get(key), kind):
            raise ValueError(f"{path} is damaged: its '{key}' entry is missing or not of type {kind.__name__}.")
    if not isinstance(checkpoint.get("run", {}), dict):
        raise ValueError(f"{path} is damaged: its 'run' entry is not of type dict.")
    checkpoint["config"] = {key: os.fspath(value) if isinstance(value, PurePath) else value
                            for key, value in checkpoint["config"].items()}  # older files held Paths
    try:
        Config.from_dict(checkpoint["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"The settings stored in {path} are not valid here: {error}") from error
    return checkpoint


def _damaged_part(path: Path) -> str | None:
    """The first part of a checkpoint whose bytes do not match the checksum torch.save wrote
    (``torch.load`` does not compare them, so a flipped bit would load as a changed weight), or
    None. About a second per GB. A file that is no zip archive torch can read is left to
    ``torch.load``, and so are parts saved without a checksum (torch writes 0 for them after
    ``torch.serialization.set_crc32_options(False)``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for part in archive.infolist():
                if part.CRC == 0 and part.file_size > 0:
                    continue
                try:
                    with archive.open(part) as stream:
                        while stream.read(1 << 24):  # the checksum is compared at the end
                            pass
                except zipfile.BadZipFile:
                    return part.filename
    except Exception:  # truncated, not a zip, encrypted, another compression: torch.load says what it is
        return None
    return None


def _allow_paths():
    """Let weights_only read the pathlib objects that older versions stored in the config.

    On torch 2.4 (no ``safe_globals`` context) the allow-list entry stays for the process; it only
    admits path objects. A Windows path pickled on Windows cannot be rebuilt on Linux, and the
    reverse: such a file loads only on the kind of system that wrote it.
    """
    classes = [PosixPath, PurePosixPath, PureWindowsPath, WindowsPath]
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
        return torch.serialization.safe_globals(classes)
    torch.serialization.add_safe_globals(classes)
    return contextlib.nullcontext()


def torch_load_problem(error: BaseException) -> str:
    """What a failed ``torch.load(..., weights_only=True)`` means, in a few words.

    torch's own text runs to a page of advice with terminal colour codes, and an empty file gives
    an ``EOFError`` with no text at all.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
    if found:  # weights_only met a class: a pickled object (e.g. a whole model), which could run code
        return f"it holds Python objects ({found.group(1)}), which are not read because that could run code"
    if isinstance(error, OSError):  # permission denied, a folder, a disk error: say that
        return error.strerror or f"{type(error).__name__}: {text}"
    return "it is empty, truncated, or not a file written by torch.save"  # EOFError, unpickling errors


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", scoring: dict | None = None
) -> tuple[torch.nn.Module, Config, dict]:
    """(model in eval mode with its memory bank, its config, the raw checkpoint) from a file.

    ``scoring``: other values of ``config.SCORING_FIELDS`` to score with (see
    :meth:`Config.with_scoring`). With another ``memory_map_level`` the saved calibration belongs to
    the old level and is dropped: call ``model.calibrate_memory_map`` before scoring (it says so).
    """
    from .model import MemSeg
    from .model.backbone import random_weights_on_purpose

    checkpoint = load_checkpoint(path, map_location="cpu")
    saved = Config.from_dict(checkpoint["config"])
    config = saved.with_scoring(**scoring) if scoring else saved
    with random_weights_on_purpose():  # the weights come from the checkpoint, not from ImageNet
        model = MemSeg.from_config(config, backbone_weights="none")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # missing or misshapen weights: torch's text does not name the file
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ValueError(f"The weights in {checkpoint_file(path)} do not fit the model: {first}") from error
    if config.memory_map_level != saved.memory_map_level:
        model.forget_memory_map_calibration()
    model.to(device).eval()
    return model, config, checkpoint
