"""The command line: ``python -m memseg_tutorial <command>`` (or ``memseg <command>``).

Every command fails with ONE line on stderr that starts with ``error:`` and a non-zero exit code
(1 for bad input or a failed step, 2 for a malformed command line, 130 for Ctrl-C), and leaves no
half-written output behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

EPILOG = """\
examples:
  python -m memseg_tutorial demo                      # train + evaluate on the offline sample (quick)
  python -m memseg_tutorial download sample           # write the offline sample dataset (seconds)
  python -m memseg_tutorial download mvtec --category bottle
  python -m memseg_tutorial train --category surface --preset quick --name surface_quick
  python -m memseg_tutorial train --resume runs/surface_quick/checkpoint.pt
  python -m memseg_tutorial evaluate runs/surface_quick/checkpoint.pt
  python -m memseg_tutorial predict runs/surface_quick/checkpoint.pt my_images/ --out predictions/

Without --data the offline sample dataset is used (categories: surface, object). The preset is
--preset, else $MEMSEG_PRESET, else "full" for train (paper settings, for a GPU) and "quick" for
demo. Runs are written to runs/<name>/ ($MEMSEG_RUNS_DIR overrides the folder).
"""


DEMO_HOLDOUT = 6  # normal training images kept out of training to set the thresholds
# The quick preset's 60 steps are enough for the lessons; the demo trains longer (150 steps, seed 42: pixel
# AUROC 0.999; 60 steps: 0.987, 0.995 and 0.991 with seeds 1, 7 and 42) and still takes under 6 minutes on
# 2 cores of a slow AVX2-only CPU (5.5 measured).
DEMO_STEPS = 150


class CommandError(Exception):
    """A problem with the user's input, reported as one line."""


class Interrupted(CommandError):
    """Ctrl-C: reported in one line, exit code 130."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a malformed command line in one line (not usage + message)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _config(args, default_preset: str, **overrides):
    from .config import active_preset, get_config

    preset = args.preset or (os.environ.get("MEMSEG_PRESET") and active_preset()) or default_preset
    values = {key: value for key, value in overrides.items() if value is not None}
    if "backbone_weights" in values:  # from --weights or --set
        values["backbone_weights"] = _weights(values["backbone_weights"])
    return get_config(preset, **values)


def _dataset_root(args) -> tuple[Path, bool]:
    """(dataset root, is the offline sample)."""
    if args.data is not None:
        from .data import is_sample_dataset

        root = Path(args.data).expanduser().resolve()  # stored in the run: valid from any folder
        if not root.is_dir():
            raise CommandError(f"Dataset folder not found: {root} (expected MVTec AD layout).")
        return root, is_sample_dataset(root)
    from .data import ensure_sample_dataset

    return ensure_sample_dataset(), True


def _run_data(run: dict) -> str | None:
    """The data folder a run recorded, if it is still there; a clear error if it is gone (never a
    silent switch to the sample). The offline sample's own folder is simply generated again."""
    from .data import default_sample_root

    root = run.get("data_root")
    if not root or Path(root).is_dir() or Path(root) == default_sample_root():
        return root if root and Path(root).is_dir() else None
    raise CommandError(f"The run's data folder {root} is gone; pass --data with where the data is now.")


def _run_textures(run: dict, given: str | None) -> str | None:
    """The texture folder a resumed run continues with: its own; ``given`` (--textures) only where
    that has moved (another source would change the run's anomalies without a word)."""
    recorded = run.get("textures")
    if given is None:
        if recorded and not Path(recorded).is_dir():
            raise CommandError(f"The run's texture folder {recorded} is gone; pass --textures with where it is now.")
        return recorded
    if recorded is None:
        raise CommandError("--textures cannot change a run being resumed: it trained with the built-in "
                           "textures (scikit-image's), and keeps them.")
    _only_if_moved(recorded, given, "--textures", "textures")
    return given


def _only_if_moved(recorded: str | None, given: str, flag: str, what: str) -> None:
    """A resumed run takes ``flag`` (--data, --textures) only where its own folder has moved: other
    images would change its batches without a word (the Trainer also compares the counts)."""
    if recorded and Path(recorded).is_dir() and Path(given).expanduser().resolve() != Path(recorded).resolve():
        raise CommandError(f"{flag} cannot change a run being resumed: its {what} are still in {recorded} "
                           f"(pass {flag} only when they have moved).")


def _kind(args, is_sample: bool) -> str:
    if getattr(args, "kind", None):
        return args.kind
    from .data import SAMPLE_CATEGORIES

    if is_sample and args.category in SAMPLE_CATEGORIES:
        return SAMPLE_CATEGORIES[args.category]
    if is_sample and args.data is None:
        raise CommandError(
            f"Unknown category {args.category!r} for the offline sample dataset; "
            f"choose one of {', '.join(SAMPLE_CATEGORIES)}."
        )
    from .data.download import MVTEC_TEXTURES

    return "texture" if args.category in MVTEC_TEXTURES else "object"


def _weights(value):
    """Encoder weights as the config stores them: a .pth path made absolute (valid from any folder)."""
    if not isinstance(value, str) or value.lower() in ("imagenet", "none"):
        return value  # the config checks the type and writes the words in lower case
    return str(Path(value).expanduser().resolve())


def _texture_source(folder, image_size: int):
    from .data import TextureSource

    return TextureSource(Path(folder).expanduser() if folder else None, image_size=image_size)


def _check_run_name(name: str) -> str:
    if not name or Path(name).name != name or name.startswith("."):
        raise CommandError(f"Run name {name!r} must be a plain folder name (no '/', not hidden).")
    return name


def _require_folder_or_absent(path: Path, flag: str = "--name") -> None:
    if path.exists() and not path.is_dir():
        raise CommandError(f"{path} exists and is not a folder; choose another {flag}.")


def _check_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """A new run never mixes its files with an older run's: a used folder needs --overwrite.

    Returns whether the folder must be cleared; that happens only once the data, textures and
    settings have been checked (``_train``), so a typo never costs the old run.
    """
    _require_folder_or_absent(run_dir)
    clear = run_dir.is_dir() and any(run_dir.iterdir())
    if clear and not overwrite:
        checkpoint = run_dir / "checkpoint.pt"
        resume = f"continue it with --resume {checkpoint} if unfinished, " if checkpoint.is_file() else ""
        raise CommandError(
            f"{run_dir} is already in use: {resume}choose another --name, or pass --overwrite to "
            f"replace it."
        )
    _check_writable(run_dir, folder=True)
    if clear:  # removed (its files, then itself) and made again
        _check_writable(run_dir)
    return clear


DEMO_FILES = frozenset({"checkpoint.pt", "history.json", "loss_curve.png", "metrics.json", "overlays.png"})


OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # written by file browsers


def _is_demo_run(folder: Path) -> bool:
    """A demo run's metrics.json has its threshold figures, and its checkpoint the thresholds
    (the checkpoint is asked only when an older ``evaluate`` overwrote metrics.json)."""
    from .checkpoint import load_checkpoint

    try:
        if "test_detection_rate" in json.loads((folder / "metrics.json").read_text()):
            return True
    except (OSError, ValueError):
        pass
    try:
        return "thresholds" in load_checkpoint(folder).get("run", {})
    except (OSError, ValueError):  # missing, damaged or foreign: not a demo run we may replace
        return False


def _check_demo_target(final_dir: Path) -> None:
    """The demo replaces an earlier demo run of the same name (with the evaluations made of it),
    and nothing else: a user's own files in the folder are never deleted."""
    _require_folder_or_absent(final_dir)
    if not final_dir.exists():
        return
    foreign = sorted(
        path.name + ("/" if path.is_dir() else "") for path in final_dir.iterdir()
        if path.name not in DEMO_FILES | OS_LITTER
        and not (path.name.startswith("evaluation_") and path.suffix == ".json")
    )
    if foreign:
        raise CommandError(
            f"{final_dir} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which the "
            f"demo did not write; move it away or choose another --name."
        )
    if not _is_demo_run(final_dir):
        raise CommandError(
            f"{final_dir} holds a run that is not a demo run (the demo replaces only those); "
            f"choose another --name or move the folder away."
        )


class NotWritable(CommandError):
    """``path`` could not be written, for ``reason`` (the message says both)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"Cannot write {path}: {reason}.")
        self.path, self.reason = path, reason


def _check_writable(path: Path, folder: bool = False, permission: bool = True) -> None:
    """Fail before the work, not after it, when ``path`` could not be written (:func:`writable_problem`)."""
    from .staging import writable_problem

    reason = writable_problem(path, folder, permission)
    if reason is not None:
        raise NotWritable(path, reason)


def _check_output_file(path: Path, default: bool = False) -> Path:
    """Fail before the work, not after it, when the result could not be written (``default``: a
    file the user did not name, so the way out is --out)."""
    try:
        if path.is_dir():
            raise NotWritable(path, "it is a folder")
        _check_writable(path)
    except NotWritable as error:
        if default:
            raise CommandError(f"Cannot write the default output file {path}: {error.reason}; give --out to "
                               f"write elsewhere.") from None
        if error.reason == "it is a folder":
            raise CommandError(f"--out {path} is a folder; give a file name (e.g. {path / 'metrics.json'}).") from None
        raise
    return path


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .staging import atomic_target

    try:
        with atomic_target(path) as temporary:  # same name, so matplotlib reads the format off ".png"
            figure.savefig(temporary, dpi=90, bbox_inches="tight")
    finally:
        plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_download(args) -> int:
    from .data import download

    if args.category is not None and args.dataset != "mvtec":
        raise CommandError(f"--category is for mvtec only; {args.dataset} is downloaded whole.")
    given = Path(args.root).expanduser() if args.root is not None else None
    if given is not None:
        _require_folder_or_absent(given, "--root")
        # A root still to be made is made beside its siblings; one that is there may hold the
        # data already (then nothing is written), so its own permissions are left to the writes.
        _check_writable(given, folder=True, permission=not given.exists())
    if args.dataset == "sample":
        from .data import generate_sample_dataset

        root = generate_sample_dataset(given)
    elif args.dataset == "mvtec":
        root = download.download_mvtec(args.category, given)
    elif args.dataset == "dtd":
        root = download.download_dtd(given)
    else:
        root = download.download_mtd(given)
    print(f"{args.dataset}: ready in {root}")
    return 0


def _train(args, config, run_dir: Path, resume: Path | None = None, clear_run_dir: bool = False,
           checkpoint: dict | None = None):
    """Train (or resume ``checkpoint``, read from ``resume``) into ``run_dir``; returns the trainer.
    ``clear_run_dir`` (--overwrite) empties the folder once everything has been checked and
    training is about to start."""
    from .data import MVTecDataset
    from .training import StoppedAtOnce, Trainer, split_holdout

    root, is_sample = _dataset_root(args)
    kind = _kind(args, is_sample) if resume is None else None  # a resumed run keeps its own
    if args.invert_foreground and kind == "texture":
        raise CommandError(f"--invert-foreground finds a dark object on a bright background, for --kind object; "
                           f"{args.category!r} trains as a texture, where anomalies go anywhere.")
    train = MVTecDataset(root, args.category, "train", image_size=config.image_size)
    holdout = checkpoint.get("run", {}).get("holdout") if resume is not None else None
    if holdout:  # a demo run kept normals out of training for its threshold: they stay out
        train, _ = split_holdout(train, holdout, config.seed)
    textures = _texture_source(args.textures, config.image_size)
    run_info = {"data_root": str(root), "category": args.category,
                "textures": str(Path(args.textures).expanduser().resolve()) if args.textures else None}
    if resume is not None:
        trainer = Trainer.resume(resume, train, textures, run_dir=run_dir, progress=not args.no_progress,
                                 checkpoint=checkpoint)
        trainer.run_info.update(run_info)  # where its data and textures are now (moved, or as they were)
        print(f"resuming {resume} at step {trainer.step} of {trainer.config.steps}")
    else:
        trainer = Trainer(config, train, textures, kind=kind, run_dir=run_dir, progress=not args.no_progress,
                          invert_foreground=args.invert_foreground, run_info=run_info)
    inverted = ", inverted foreground" if trainer.run_info.get("invert_foreground") else ""
    print(f"training: {trainer.config.summary()} | {len(train)} normal images of "
          f"{args.category!r} ({trainer.kind}{inverted}) | device {trainer.device}", flush=True)
    if resume is None and trainer.device.type == "cpu" and trainer.config.preset == "full":
        print(f"warning: the full preset ({trainer.config.steps} steps at {trainer.config.image_size} px) "
              f"takes hours on a CPU; --preset quick trains in minutes.", file=sys.stderr, flush=True)
    if clear_run_dir:
        shutil.rmtree(run_dir)
    try:
        trainer.fit(report_interrupt=False)  # the error line below says it
    except StoppedAtOnce:  # a second Ctrl-C, inside a step: the checkpoint on disk is an older one
        kept = (f"{trainer.checkpoint_path} (step {trainer.saved_step}) is kept; continue with --resume "
                f"{trainer.checkpoint_path}" if trainer.saved_step is not None else "no checkpoint was written")
        raise Interrupted(f"stopped at once (a second Ctrl-C), without saving: {kept}") from None
    except KeyboardInterrupt:
        if not trainer.checkpoint_path.is_file():  # stopped before the first step: nothing to resume
            raise Interrupted("interrupted before training started; nothing was saved") from None
        raise Interrupted(
            f"interrupted at step {trainer.step}; checkpoint saved in {run_dir}; continue with "
            f"--resume {trainer.checkpoint_path}"
        ) from None
    return trainer


def cmd_train(args) -> int:
    from .checkpoint import atomic_write_json
    from .paths import runs_dir
    from .plots import plot_loss_curve

    if args.resume is not None:
        from .checkpoint import checkpoint_file, load_checkpoint
        from .config import Config

        given = [flag for flag, value in (
            ("--set", args.set or None), ("--preset", args.preset), ("--steps", args.steps),
            ("--image-size", args.image_size), ("--weights", args.weights), ("--device", args.device),
            ("--kind", args.kind), ("--invert-foreground", args.invert_foreground or None),
            ("--category", args.category), ("--name", args.name),
            ("--overwrite", args.overwrite or None)) if value is not None]  # 0 is given, too
        if given:
            raise CommandError(
                f"{', '.join(given)} cannot change a run being resumed (it keeps its settings, schedule "
                f"and folder); start a new run with --name for other settings."
            )

        resume = checkpoint_file(args.resume)
        checkpoint = load_checkpoint(resume)  # clear error when missing
        if resume.name != "checkpoint.pt" and (resume.parent / "checkpoint.pt").exists():
            raise CommandError(
                f"Resuming writes checkpoint.pt beside {resume.name}, and {resume.parent / 'checkpoint.pt'} "
                f"exists: copy {resume.name} into a new run folder as checkpoint.pt and resume that."
            )
        config = Config.from_dict(checkpoint["config"])
        if checkpoint["step"] >= config.steps:  # nothing to continue: leave its files as they are
            print(f"{resume} has finished ({checkpoint['step']} of {config.steps} steps): nothing to train. "
                  f"Evaluate it with: python -m memseg_tutorial evaluate {resume}")
            return 0
        run = checkpoint.get("run", {})
        if args.data is None:
            args.data = _run_data(run)  # the run's own data (None: the offline sample)
        else:
            _only_if_moved(run.get("data_root"), args.data, "--data", "data")
        args.category = run.get("category", config.category)
        args.textures = _run_textures(run, args.textures)
        run_dir = resume.parent
        _check_writable(run_dir, folder=True)  # its checkpoints are written there
    else:
        resume = checkpoint = None
        from .config import parse_overrides

        overrides = parse_overrides(args.set)
        if "preset" in overrides:
            raise CommandError("Choose the preset with --preset, not --set preset=...")
        flags = dict(image_size=args.image_size, steps=args.steps, backbone_weights=args.weights,
                     device=args.device, category=args.category)  # a given flag beats --set
        config = _config(args, "full", **{**overrides, **{k: v for k, v in flags.items() if v is not None}})
        args.category = config.category  # --category, else --set category=..., else the preset's
        name = args.name if args.name is not None else f"{config.category}_{config.preset}"
        run_dir = runs_dir() / _check_run_name(name)
        clear = _check_run_dir(run_dir, args.overwrite)
    trainer = _train(args, config, run_dir, resume, clear_run_dir=resume is None and clear,
                     checkpoint=checkpoint)
    atomic_write_json({"history": trainer.history}, run_dir / "history.json")
    _save_figure(plot_loss_curve(trainer.history), run_dir / "loss_curve.png")
    print(f"done: {trainer.step} steps; checkpoint {trainer.checkpoint_path}")
    return 0


def _evaluate_run(model, config, data_root: Path, category: str):
    from .data import MVTecDataset
    from .evaluation import evaluate

    test = MVTecDataset(data_root, category, "test", image_size=config.image_size)
    return evaluate(model, test, config, progress=_on_a_terminal())  # where the model is


def _on_a_terminal() -> bool:
    """Progress bars for evaluate and predict only where someone watches: not in logs or pipes."""
    return sys.stderr.isatty()


def _metrics_record(result, config, extra: dict | None = None) -> dict:
    return {
        **result.metrics,
        "per_defect": result.per_defect,
        "eval_images_per_s": result.images_per_second,
        "test_images": len(result.labels),
        "config": config.to_dict(),
        **(extra or {}),
    }


def _calibrate_memory_map(model, config, run: dict, data: str | None = None) -> None:
    """For a model scored with another ``memory_map_level`` or a memory-map weight it was not
    trained with (``--set``): the calibration its Trainer makes after training, on the same normal
    training images outside the bank, of the category it was trained on (``data``: where that data
    is now, default the run's own; a demo run trained without its held-out normals, so they are
    left out here too). Nothing to do for a model that needs no calibration."""
    if config.memory_map_weight <= 0 or model.memory_map_calibrated:
        return
    from .data import MVTecDataset, ensure_sample_dataset
    from .device import model_device
    from .training import memory_map_images, split_holdout

    why = ("--set memory_map_level / memory_map_weight: the memory map is calibrated on the normal images "
           "the model was trained on, but")
    if data is None and not run.get("data_root"):
        raise CommandError(f"{why} this run does not record them (it was trained outside the command line); "
                           f"call model.calibrate_memory_map(...) in Python instead.")
    try:
        root = Path(data) if data is not None else Path(_run_data(run) or ensure_sample_dataset())
    except CommandError:  # its folder is gone
        raise CommandError(f"{why} the run's data folder {run['data_root']} is gone.") from None
    category = run.get("category") or config.category
    train = MVTecDataset(root, category, "train", image_size=config.image_size)
    if run.get("holdout"):
        train, _ = split_holdout(train, run["holdout"], config.seed)
    if run.get("train_images") not in (None, len(train)):
        raise CommandError(f"{why} it was trained on {run['train_images']} normal images of {category!r}, "
                           f"and {root} holds {len(train)}.")
    if run.get("train_images") is None:
        print(f"note: this run does not record how many normals it trained on (saved by an earlier version); "
              f"the memory map is calibrated as if it trained on the {len(train)} that {root} holds now.")
    images = memory_map_images(train, config)
    model.calibrate_memory_map(images.to(model_device(model)))
    print(f"memory map (m{config.memory_map_level}) calibrated on {len(images)} normal training images "
          f"of {category!r} outside the bank")


def _is_metrics_file(path: Path) -> bool:
    """Whether ``path`` holds what evaluate writes (and may write again): a run's history.json, a
    benchmark's record or any other file is never replaced."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not text, not JSON
        return False
    return isinstance(record, dict) and {"image_auroc", "per_defect", "step", "scoring_set"} <= set(record)


def _setting_label(value) -> str:
    """A --set value as a file name shows it: one name for 2 and 2.0, so that the same settings
    write the same file (never over the plain one, which has none)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def cmd_evaluate(args) -> int:
    from .checkpoint import atomic_write_json, checkpoint_file, load_model
    from .config import parse_overrides
    from .device import get_device

    out = _check_output_file(Path(args.out).expanduser()) if args.out else None
    if out is not None and out.is_file():  # written over: only metrics, never the model or another file
        model_file = checkpoint_file(args.checkpoint)
        if model_file.is_file() and os.path.samefile(out, model_file):
            raise CommandError(f"--out {out} is the checkpoint being evaluated; give a new .json file name.")
        if not _is_metrics_file(out):
            raise CommandError(f"--out {out} exists and holds no metrics that evaluate wrote; give a new .json "
                               f"file name.")
    scoring, given_data = parse_overrides(args.set), args.data
    model, config, checkpoint = load_model(args.checkpoint, get_device(args.device or "auto"), scoring=scoring)
    run = checkpoint.get("run", {})
    trained_on = run.get("category") or config.category
    category = args.category or trained_on
    if category != trained_on:
        print(f"note: this checkpoint was trained on {trained_on!r}; evaluating it on {category!r}.")
    if args.data is None:
        args.data = _run_data(run)  # the run's own data (None: the offline sample)
    root, is_sample = _dataset_root(args)
    if is_sample:
        args.category = category
        _kind(args, True)  # unknown sample category -> clear error
    if out is None:  # beside the checkpoint, never over the metrics.json that a demo run wrote
        scored = "".join(f"_{key}-{_setting_label(value)}" for key, value in sorted(scoring.items()))
        name = re.sub(r"[^\w.-]", "", f"evaluation_{category}{scored}") + ".json"
        out = _check_output_file(checkpoint_file(args.checkpoint).parent / name, default=True)
    # where --data says the run's data is now; with another category, --data is other data
    _calibrate_memory_map(model, config, run, given_data if category == trained_on else None)
    if checkpoint["step"] < config.steps:
        print(f"note: this checkpoint stopped at step {checkpoint['step']} of {config.steps} (training was cut); "
              f"train --resume finishes it.")
    result = _evaluate_run(model, config, root, category)
    # Written before anything is printed: a reader that stops early (| head) cannot cost the result.
    atomic_write_json(_metrics_record(result, config, {"step": checkpoint["step"], "category": category,
                                                 "data_root": str(root), "scoring_set": scoring}), out)
    print(result.table())
    print(f"metrics written to {out}")
    return 0


def _calibrate(predictor, normals, **percentiles):
    """``predictor.calibrate`` with its warnings (too few normals) as plain "note:" lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thresholds = predictor.calibrate(normals, **percentiles)
    for warning in caught:
        print(f"note: {warning.message}")
    return thresholds


def cmd_predict(args) -> int:
    from tqdm.auto import tqdm

    from .config import parse_overrides
    from .data.images import UnreadableImageError
    from .inference import Predictor, earlier_outputs, resolve_images

    skipped = []
    skip_hint = "Add --skip-unreadable to leave such files out."

    def unreadable(path, error):  # raising here, during predictions, leaves nothing written (save_overlays)
        if not args.skip_unreadable:
            raise CommandError(f"{error} {skip_hint}")
        skipped.append(path)
        tqdm.write(f"skipped: {error}", file=sys.stderr)  # above the progress bar, not through it

    # errors before the model is loaded; with --skip-unreadable, files that are no image are left out here
    try:
        paths = resolve_images(args.inputs, unreadable if args.skip_unreadable else None)
    except UnreadableImageError as error:  # (with --skip-unreadable, unreadable() has them)
        raise CommandError(f"{error} {skip_hint}") from None
    nothing_read = f"no image could be read ({len(paths) + len(skipped)} tried, each named above)."
    if not paths:
        raise CommandError(nothing_read)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; give a folder for the overlays and scores.csv.")
    _check_writable(out, folder=True)
    read = [Path(item).expanduser() for item in [*args.inputs, *([args.normals] if args.normals else [])]]
    if out.is_dir() and any(item.is_dir() and os.path.samefile(item, out) for item in read):
        raise CommandError(f"--out {out} is one of the folders of images to read; give another folder for the "
                           f"overlays and scores.csv (they would be read as images next time).")
    earlier = earlier_outputs(out)  # a scores.csv that predict did not write: a clear error
    if earlier and not args.overwrite:
        raise CommandError(
            f"--out {out} holds the results of an earlier predict ({len(earlier)} files: scores.csv and "
            f"overlays); choose another --out, or pass --overwrite to replace them."
        )
    if args.normals is None and (args.image_percentile is not None or args.pixel_percentile is not None):
        raise CommandError("--image-percentile and --pixel-percentile choose thresholds on held-out normal images: "
                           "add --normals FOLDER (without it the thresholds saved with the model are used).")
    scoring = parse_overrides(args.set)
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, scoring=scoring)  # checks --set
    if scoring and args.normals is None:
        raise CommandError("--set changes the scores, so thresholds saved with the model no longer fit them: "
                           "add --normals with held-out normal images to choose new ones.")
    _calibrate_memory_map(predictor.model, predictor.config, predictor.run_info)
    hint = "; --normals FOLDER sets new ones"
    if args.normals is not None:
        given = dict(image_percentile=args.image_percentile, pixel_percentile=args.pixel_percentile)
        _calibrate(predictor, args.normals, **{k: v for k, v in given.items() if v is not None})  # sets thresholds
        hint = ""
    thresholds = predictor.thresholds
    print(f"thresholds: image {thresholds.image:.4f}, pixel {thresholds.pixel:.4f} ({thresholds.source}{hint})")
    start = time.perf_counter()
    results = []  # (score, anomalous, path): the maps are written and dropped batch by batch

    def predictions():
        with tqdm(total=len(paths), desc="predict", unit="image", leave=False,
                  disable=not _on_a_terminal()) as bar:
            for prediction in predictor.iter_predict(paths, on_unreadable=unreadable):
                results.append((prediction.score, prediction.is_anomalous, prediction.path))
                bar.update()
                yield prediction
        if not results:
            raise CommandError(nothing_read)

    written = {path.name.casefold() for path in predictor.save_overlays(predictions(), out, replace=earlier)}
    for stale in earlier:  # only after the new set is complete (--overwrite); on a case-blind disk
        if stale.name.casefold() not in written:  # IMG_overlay.png may now be the new img_overlay.png
            stale.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    for score, anomalous, path in results:
        print(f"{score:.4f}  {'ANOMALOUS' if anomalous else 'normal':<9}  {path}")
    count = len(skipped)
    left_out = f"; {count} unreadable file{'s' if count > 1 else ''} left out (named on stderr)" if count else ""
    print(f"{len(results)} images in {seconds:.1f} s (with the overlays){left_out}; overlays and scores.csv "
          f"in {out}")
    return 0


def demo_config(args):
    """The quick preset with :data:`DEMO_STEPS`, unless ``--steps`` or another preset is given."""
    config = _config(args, "quick", steps=args.steps, device=args.device, category=args.category,
                     backbone_weights=args.weights)
    if args.steps is None and config.preset == "quick":
        config = dataclasses.replace(config, steps=DEMO_STEPS).validate()
    return config


def cmd_demo(args) -> int:
    """Offline sample -> train (quick) -> evaluate -> runs/<name>/ with metrics and figures."""
    from .checkpoint import atomic_write_json
    from .data import SAMPLE_CATEGORIES, MVTecDataset, ensure_sample_dataset
    from .evaluation import evaluate
    from .inference import Predictor, expected_false_alarm_rate
    from .paths import runs_dir
    from .plots import plot_loss_curve, plot_test_overlays
    from .staging import staging_dir
    from .training import Trainer, split_holdout

    if args.category not in SAMPLE_CATEGORIES:
        raise CommandError(
            f"Unknown category {args.category!r} for the demo; choose one of "
            f"{', '.join(SAMPLE_CATEGORIES)}."
        )
    start = time.perf_counter()
    config = demo_config(args)
    name = _check_run_name(args.name)
    final_dir = runs_dir() / name
    _check_demo_target(final_dir)  # before the minutes of training, not after
    root = ensure_sample_dataset()
    normals = MVTecDataset(root, args.category, "train", image_size=config.image_size)
    train, holdout = split_holdout(normals, DEMO_HOLDOUT, config.seed)
    test = MVTecDataset(root, args.category, "test", image_size=config.image_size)
    textures = _texture_source(None, config.image_size)
    with staging_dir(final_dir) as staging:  # locked while it is written; removed at the end
        run = staging / name  # a plain folder (usual mode), moved into place when complete
        run.mkdir()
        # No run_dir: the demo is all-or-nothing, so no checkpoints along the way (one write at the end).
        trainer = Trainer(config, train, textures, kind=SAMPLE_CATEGORIES[args.category],
                          progress=not args.no_progress,
                          run_info={"data_root": str(root), "category": args.category, "holdout": DEMO_HOLDOUT})
        print(f"demo: {config.summary()} | {len(train)} normal training images of "
              f"{args.category!r} (+{len(holdout)} held out for the threshold) | "
              f"{len(test)} test images", flush=True)
        try:
            trainer.fit()
        except KeyboardInterrupt:
            raise Interrupted("interrupted; the demo run was not written") from None
        train_seconds = trainer.seconds
        result = evaluate(trainer.model, test, config, device=trainer.device)
        predictor = Predictor(trainer.model, config, trainer.device)
        thresholds = _calibrate(predictor, holdout.image_paths)
        trainer.run_info["thresholds"] = dataclasses.asdict(thresholds)
        trainer.save(run / "checkpoint.pt")  # the thresholds travel with it (used by predict)
        flagged = result.scores > thresholds.image
        record = _metrics_record(result, config, {
            "steps": trainer.step,
            "train_seconds": train_seconds,
            "train_images_per_s": trainer.images_per_second,
            "loss_first": trainer.history[0]["loss"],
            "loss_last": trainer.history[-1]["loss"],
            "thresholds": dataclasses.asdict(thresholds),
            "test_false_alarm_rate": float(flagged[result.labels == 0].mean()),
            "expected_false_alarm_rate": expected_false_alarm_rate(len(holdout), 99.0),
            "test_detection_rate": float(flagged[result.labels == 1].mean()),
        })
        atomic_write_json(record, run / "metrics.json")
        atomic_write_json({"history": trainer.history}, run / "history.json")
        _save_figure(plot_loss_curve(trainer.history), run / "loss_curve.png")
        _save_figure(plot_test_overlays(result), run / "overlays.png")
        _check_demo_target(final_dir)  # still only an earlier demo run (checked again: minutes passed)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(run, final_dir)
    print(result.table())
    print(
        f"\ndemo finished in {(time.perf_counter() - start) / 60:.1f} min "
        f"(training {train_seconds:.0f} s, {trainer.images_per_second:.1f} images/s): "
        f"image AUROC {result.metrics['image_auroc']:.3f}, pixel AUROC "
        f"{result.metrics['pixel_auroc']:.3f}, AUPRO@{result.fpr_limit:g} {result.metrics['aupro']:.3f}\n"
        f"threshold from {DEMO_HOLDOUT} held-out normals: {record['test_detection_rate']:.0%} of "
        f"test defects flagged, {record['test_false_alarm_rate']:.0%} false alarms on test normals "
        f"(about {record['expected_false_alarm_rate']:.0%} expected from {DEMO_HOLDOUT} normals)\n"
        f"written: {final_dir}/ (checkpoint.pt, metrics.json, history.json, loss_curve.png, overlays.png)"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, default_preset: str) -> None:
    parser.add_argument("--preset", choices=("quick", "full"), default=None,
                        help="quick (CPU, 128 px, minutes) or full (paper, GPU); "
                             f"default: $MEMSEG_PRESET, else {default_preset}")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to run (default: the preset's)")


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, metavar="ROOT",
                        help="dataset root in MVTec AD layout (default: the offline sample dataset)")
    parser.add_argument("--category", default=None,
                        help="category folder inside the root (sample: surface or object; default surface)")


def _percentile(text: str) -> float:
    """An argparse type: a number from 0 to 100 (the flag is named in argparse's message)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} is not a percentile from 0 to 100")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .config import SCORING_FIELDS

    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="python -m memseg_tutorial",
        description="MemSeg, the tutorial's model: download data, train, evaluate, predict, or run "
                    "the whole thing on the offline sample data with 'demo'.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    download = commands.add_parser(
        "download", help="get a dataset (sample, mvtec, dtd, mtd)", formatter_class=formatter,
        description="Download (checked by SHA-256 where one is published, else by content) or generate a "
                    "dataset into data/ ($MEMSEG_DATA_DIR).",
        epilog="examples:\n  python -m memseg_tutorial download sample\n"
               "  python -m memseg_tutorial download mvtec --category bottle\n"
               "  python -m memseg_tutorial download dtd",
    )
    download.add_argument("dataset", choices=("sample", "mvtec", "dtd", "mtd"),
                          help="sample = offline generated data; mvtec = MVTec AD; dtd = textures; "
                               "mtd = Magnetic Tile Defects")
    download.add_argument("--category", default=None,
                          help="mvtec only: one category (e.g. bottle, a fraction of the whole); without it "
                               "the whole 4.9 GB archive")
    download.add_argument("--root", default=None,
                          help="target folder (default under data/); for dtd the folder that is to hold dtd/images")
    download.set_defaults(handler=cmd_download)

    train = commands.add_parser(
        "train", help="train a model into runs/<name>/", formatter_class=formatter,
        description="Train MemSeg on the normal images of one category; anomalies are simulated. "
                    "Ctrl-C saves a checkpoint; --resume continues it exactly.",
        epilog="examples:\n  python -m memseg_tutorial train --preset quick\n"
               "  python -m memseg_tutorial train --data data/mvtec_anomaly_detection --category "
               "bottle --textures data/dtd/images\n"
               "  python -m memseg_tutorial train --resume runs/surface_quick/checkpoint.pt",
    )
    _add_common(train, "full")
    _add_data(train)
    train.add_argument("--textures", default=None, metavar="DIR",
                       help="folder of texture images for texture anomalies (default: scikit-image's)")
    train.add_argument("--kind", choices=("texture", "object"), default=None,
                       help="texture (anomalies anywhere) or object (only on the foreground)")
    train.add_argument("--invert-foreground", action="store_true",
                       help="object kind: the object is darker than its background (the foreground mask "
                            "takes the dark side, lesson 02)")
    train.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    train.add_argument("--image-size", type=int, default=None,
                       help="input side, a multiple of 32, of 64 with half_scale_map (default: the preset's, "
                            "quick 128, full 256)")
    train.add_argument("--weights", default=None, metavar="W",
                       help="encoder weights: imagenet, none or a .pth path (default: preset)")
    train.add_argument("--name", default=None, help="run folder name (default <category>_<preset>)")
    train.add_argument("--resume", default=None, metavar="CHECKPOINT",
                       help="continue a checkpoint (its settings, schedule and folder are kept)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing run folder of the same name (deleted first)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any Config field, as a Python literal (repeatable), e.g. --set lr=0.01 "
                            "--set per_image_standardization=True")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="image AUROC, pixel AUROC and AUPRO of a checkpoint", formatter_class=formatter,
        description="Evaluate a checkpoint on the test split of its dataset (or --data/--category).",
        epilog="examples:\n  python -m memseg_tutorial evaluate runs/demo/checkpoint.pt\n"
               "  python -m memseg_tutorial evaluate runs/demo/checkpoint.pt --set \"score_mode='max'\" "
               "--out runs/demo/evaluation_max.json",
    )
    evaluate.add_argument("checkpoint", help="checkpoint.pt (or its run folder)")
    evaluate.add_argument("--data", default=None, metavar="ROOT", help="dataset root (default: the run's)")
    evaluate.add_argument("--category", default=None, help="category (default: the run's)")
    evaluate.add_argument("--out", default=None,
                          help="metrics JSON (default: evaluation_<category>.json beside the checkpoint; with "
                               "--set, the settings are added to the name)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                          help="where to run (default: auto, a CUDA GPU when one is visible)")
    scoring_help = ("score with another value of a setting that training does not read (repeatable): "
                    f"{', '.join(SCORING_FIELDS)}; e.g. --set \"score_mode='max'\"")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=scoring_help)
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="anomaly maps, scores and overlays for your own images",
        formatter_class=formatter,
        description="Score images of any size (resized for the model, maps resized back). "
                    "Thresholds come from held-out NORMAL images (--normals), never from defects.",
        epilog="examples:\n  python -m memseg_tutorial predict runs/demo/checkpoint.pt photo.png\n"
               "  python -m memseg_tutorial predict runs/demo/checkpoint.pt images/ --normals "
               "good_images/ --out predictions/",
    )
    predict.add_argument("checkpoint", help="checkpoint.pt (or its run folder)")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    predict.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    predict.add_argument("--normals", default=None, metavar="DIR",
                         help="held-out normal images to set the thresholds (default: the thresholds "
                              "a demo run saved in its checkpoint, else 0.5, not calibrated; needed with --set and "
                              "with --image-percentile or --pixel-percentile)")
    predict.add_argument("--image-percentile", type=_percentile, default=None,
                         help="with --normals: image threshold = this percentile of their scores (default 99)")
    predict.add_argument("--pixel-percentile", type=_percentile, default=None,
                         help="with --normals: pixel threshold = this percentile of their pixels (default 99.9)")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace the scores.csv and overlays of an earlier predict in --out")
    predict.add_argument("--skip-unreadable", action="store_true",
                         help="leave out images to predict that cannot be read (each named on stderr) "
                              "instead of stopping at the first; --normals must all be readable")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                         help="where to run (default: auto, a CUDA GPU when one is visible)")
    predict.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help=scoring_help + " (needs --normals: the thresholds follow the scores)")
    predict.set_defaults(handler=cmd_predict)

    demo = commands.add_parser(
        "demo", help="train + evaluate on the offline sample data (minutes on a CPU)",
        formatter_class=formatter,
        description="The whole pipeline offline: sample data -> training (quick preset) -> test "
                    "metrics -> runs/<name>/ with checkpoint.pt, metrics.json, history.json, "
                    "loss_curve.png and overlays.png.",
        epilog="examples:\n  python -m memseg_tutorial demo\n"
               "  python -m memseg_tutorial demo --category object --steps 30 --name demo_object",
    )
    _add_common(demo, "quick")
    demo.add_argument("--category", default="surface", help="surface (texture) or object")
    demo.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEMO_STEPS} in the quick preset)")
    demo.add_argument("--weights", default=None, metavar="W",
                      help="encoder weights: imagenet, none or a .pth path (default: preset; none in quick)")
    demo.add_argument("--name", default="demo", help="run folder under runs/ (default demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(handler=cmd_demo)
    return parser


def _passive_openmp_waiting() -> None:
    """Let torch's idle OpenMP threads sleep rather than spin, unless the user chose otherwise.

    Spinning threads help only on an otherwise idle machine; on a laptop or Colab's 2 cores shared
    with a browser or a notebook, a training step ran 1.4 times slower spinning (5.3 against 3.8 s
    with one busy process beside it on 2 cores; a quiet machine measured the same either way), and
    earlier shared machines 5-10 times. OpenMP reads the variable once, when torch loads it, so
    this must run before torch is imported: the package and this module import it lazily.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _quiet_opencv() -> None:
    """OpenCV prints its own "[ WARN ...]" line for a damaged image, beside the one-line error that
    names the file; on the command line only that one line should appear.

    The call differs between OpenCV builds (pip's opencv-python has ``cv2.setLogLevel``, others
    only ``cv2.utils.logging.setLogLevel``), and quieter logs are never worth a crash. A level
    the user set in ``OPENCV_LOG_LEVEL`` wins.
    """
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    os.environ["OPENCV_LOG_LEVEL"] = "ERROR"  # read when cv2 is first imported
    try:
        import cv2
    finally:
        del os.environ["OPENCV_LOG_LEVEL"]  # not passed on to notebooks or child processes
    logging_module = getattr(getattr(cv2, "utils", None), "logging", None)
    setter = getattr(logging_module, "setLogLevel", None) or getattr(cv2, "setLogLevel", None)
    try:
        if setter is not None:
            setter(2)  # 2 = errors only (OpenCV's utils::logging::LOG_LEVEL_ERROR)
    except Exception:  # a build whose call takes other arguments: keep its logs
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 1 error, 2 bad command line, 130 Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.command is None:  # a malformed command line: the help, and exit code 2
        parser.print_help()
        print(f"error: choose a command (see {parser.prog} --help)", file=sys.stderr)
        return 2
    _passive_openmp_waiting()
    _quiet_opencv()
    with warnings.catch_warnings():  # restored on return (main is also called from Python)
        warnings.showwarning = _show_warning
        return _run(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one "warning: ..." line, without the package's file and source line that
    Python's format adds: the message names what to look at."""
    print(f"warning: {message}", file=file or sys.stderr)


def _run(args) -> int:
    """The command, with every error as one line and an exit code."""
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Interrupted as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 130
    except (CommandError, FileNotFoundError, ValueError, RuntimeError, OSError, TypeError) as error:
        if os.environ.get("MEMSEG_DEBUG"):
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # a case no check foresaw: still one line, the type says where to look
        if os.environ.get("MEMSEG_DEBUG"):
            raise
        print(f"error: {type(error).__name__}: {_one_line(error)} (MEMSEG_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
