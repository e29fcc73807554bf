"""The command line: help that explains, and one-line errors with a non-zero exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import png_damaged_inside

from memseg_tutorial import cli, get_config
from memseg_tutorial.checkpoint import load_checkpoint
from memseg_tutorial.config import Config
from memseg_tutorial.data import MVTecDataset, ensure_sample_dataset, generate_sample_dataset
from memseg_tutorial.inference import Predictor, Thresholds
from memseg_tutorial.model import MemSeg
from memseg_tutorial.training import Trainer, memory_map_images, split_holdout

COMMANDS = ("download", "train", "evaluate", "predict", "demo")


@pytest.fixture(scope="module")
def checkpoint(sample_root, texture_source, tmp_path_factory):
    config = get_config("quick", image_size=64, memory_size=2, steps=1, score_top_k=10, device="cpu")
    train = MVTecDataset(sample_root, "surface", "train", image_size=64)
    trainer = Trainer(config, train, texture_source, run_dir=tmp_path_factory.mktemp("run"),
                      progress=False, run_info={"data_root": str(sample_root), "category": "surface"})
    trainer.build_memory_bank()
    return trainer.save()


@pytest.fixture
def calibrated_on(monkeypatch) -> list:
    """The images that each MemSeg.calibrate_memory_map call gets (the calls still calibrate)."""
    seen = []
    calibrate = MemSeg.calibrate_memory_map

    def recording(model, images, batch_size=16):
        seen.append(images.clone())
        return calibrate(model, images, batch_size)

    monkeypatch.setattr(MemSeg, "calibrate_memory_map", recording)
    return seen


REAL_ACCESS = os.access


def deny_write(monkeypatch, *folders: Path) -> None:
    """os.access says no for these folders only (the tests run as root, whom chmod would not stop)."""
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) not in folders and REAL_ACCESS(path, mode))


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


def test_main_help_has_examples(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "examples:" in out and all(command in out for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: python -m memseg_tutorial " + command)
    assert "example" in out


def test_module_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "memseg_tutorial", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout


# Runs the command line as `python -m memseg_tutorial` does and reports the OMP_WAIT_POLICY that the
# process had when it first imported torch (OpenMP reads it then, and only then).
POLICY_SPY = """
import os, runpy, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            seen.setdefault("policy", os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Spy())
sys.argv = ["memseg_tutorial", *sys.argv[1:]]
try:
    runpy.run_module("memseg_tutorial", run_name="__main__")
except SystemExit as exit_:
    print(exit_.code, seen.get("policy", "torch not loaded"))
"""


@pytest.mark.parametrize("user_policy, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_lets_idle_threads_sleep_unless_the_user_chose(tmp_path, user_policy, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the Makefile exports it
    if user_policy is not None:
        env["OMP_WAIT_POLICY"] = user_policy
    result = subprocess.run([sys.executable, "-c", POLICY_SPY, "download", "sample", "--root", str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.splitlines()[-1] == f"0 {expected}", result.stderr


def test_help_and_the_package_import_do_not_load_torch():
    result = subprocess.run([sys.executable, "-c", POLICY_SPY, "--help"], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "0 torch not loaded"
    result = subprocess.run([sys.executable, "-c", "import sys, memseg_tutorial; print('torch' in sys.modules); "
                             "print(memseg_tutorial.get_device('cpu'))"], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "cpu"]


def test_malformed_command_line(capsys):
    code, _, err = run(["fly"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "invalid choice")
    code, _, err = run(["train", "--steps", "many"], capsys)
    assert_one_line_error(code, err, "--steps")
    for flag, value, needle in (("--image-percentile", "150", "not a percentile from 0 to 100"),
                                ("--pixel-percentile", "-1", "not a percentile from 0 to 100"),
                                ("--image-percentile", "high", "'high' is not a number")):
        code, _, err = run(["predict", "run.pt", "x.png", flag, value], capsys)
        assert code == 2  # refused by the parser: before the model is loaded and the normals scored
        assert_one_line_error(code, err, flag, needle)
    code, out, err = run([], capsys)  # no command: the help, then the one error line
    assert code == 2 and out.startswith("usage: python -m memseg_tutorial")
    assert_one_line_error(code, err, "choose a command")


@pytest.mark.parametrize("dataset", ["sample", "dtd", "mtd"])
def test_download_category_is_for_mvtec_only(tmp_path, capsys, dataset):
    code, _, err = run(["download", dataset, "--category", "bottle", "--root", str(tmp_path / "x")], capsys)
    assert_one_line_error(code, err, "--category is for mvtec only", dataset)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, preset", [("train", "full"), ("demo", "quick")])
def test_preset_help_names_the_default_without_the_environment_variable(command, preset, capsys):
    _, out, _ = run([command, "--help"], capsys)
    assert f"default: $MEMSEG_PRESET, else {preset}" in " ".join(out.split())


def test_runs_and_data_folders_from_the_environment_may_start_with_a_tilde(tmp_path, monkeypatch):
    """MEMSEG_RUNS_DIR="~/memseg/runs" (quoted, so the shell leaves the ~ alone) is a folder in
    the home folder, not a folder named "~" in the working directory."""
    from memseg_tutorial.paths import data_dir, runs_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MEMSEG_RUNS_DIR", "~/memseg/runs")
    monkeypatch.setenv("MEMSEG_DATA_DIR", "~/memseg/data")
    assert (runs_dir(), data_dir()) == (tmp_path / "memseg" / "runs", tmp_path / "memseg" / "data")


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = run(["evaluate", str(tmp_path / "nope.pt")], capsys)
    assert_one_line_error(code, err, "checkpoint not found", "nope.pt")
    code, _, err = run(["train", "--resume", str(tmp_path / "nope.pt")], capsys)
    assert_one_line_error(code, err, "checkpoint not found")


def test_empty_image_folder(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(["predict", str(checkpoint), str(tmp_path / "empty"),
                        "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "empty", str(tmp_path / "empty"))
    assert not (tmp_path / "out").exists()


def test_unknown_category(sample_root, tmp_path, capsys):
    code, _, err = run(["train", "--preset", "quick", "--data", str(sample_root),
                        "--category", "teapot", "--name", "x"], capsys)
    assert_one_line_error(code, err, "teapot", "surface")
    code, _, err = run(["demo", "--category", "teapot"], capsys)
    assert_one_line_error(code, err, "teapot")


def test_size_not_divisible_by_32(sample_root, capsys):
    code, _, err = run(["train", "--preset", "quick", "--data", str(sample_root),
                        "--image-size", "100"], capsys)
    assert_one_line_error(code, err, "multiple of 32", "100")


def test_missing_dataset_folder(tmp_path, capsys):
    code, _, err = run(["train", "--preset", "quick", "--data", str(tmp_path / "nowhere")], capsys)
    assert_one_line_error(code, err, "not found", "nowhere")


def test_bad_run_name(sample_root, capsys):
    code, _, err = run(["train", "--preset", "quick", "--data", str(sample_root),
                        "--name", "../escape"], capsys)
    assert_one_line_error(code, err, "run name")


def test_train_set_reaches_the_config_and_flags_win(sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    code, out, err = run(["train", "--preset", "quick", "--data", str(sample_root), "--name", "x",
                          "--steps", "1", "--image-size", "64", "--set", "memory_size=2",
                          "--set", "map_smoothing_sigma=1.5", "--set", "steps=5"], capsys)
    assert code == 0, err
    config = load_checkpoint(tmp_path / "x").get("config")
    assert config["memory_size"] == 2 and config["map_smoothing_sigma"] == 1.5
    assert config["steps"] == 1  # --steps beats --set steps=5


@pytest.mark.parametrize(("preset", "warned"), [(None, True), ("full", True), ("quick", False)])
def test_the_full_preset_on_a_cpu_warns_that_it_takes_hours(sample_root, tmp_path, monkeypatch, capsys,
                                                            preset, warned):
    """train's default preset is full (without --preset or $MEMSEG_PRESET), and on a CPU it says so."""
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("MEMSEG_PRESET", raising=False)
    argv = _train_argv(sample_root, "--weights", "none", "--device", "cpu")
    del argv[1:3]  # the helper's --preset quick
    code, _, err = run(argv + (["--preset", preset] if preset else []), capsys)
    assert code == 0, err
    assert ("warning: the full preset (1 steps at 64 px) takes hours on a CPU; --preset quick" in err) is warned


@pytest.mark.parametrize(("item", "needle"), [("no_such_field=1", "no_such_field"),
                                              ("lr=three", "--set"), ("lr", "KEY=VALUE")])
def test_train_bad_set(sample_root, capsys, item, needle):
    code, _, err = run(["train", "--preset", "quick", "--data", str(sample_root), "--set", item],
                       capsys)
    assert_one_line_error(code, err, needle)


def test_resume_refuses_set(checkpoint, capsys):
    code, _, err = run(["train", "--resume", str(checkpoint), "--set", "lr=0.1"], capsys)
    assert_one_line_error(code, err, "--set cannot change")


def test_predict_writes_overlays(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    code, out, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out"),
                          "--normals", str(images)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_overlay.png", "scores.csv"]
    assert "thresholds: image" in out
    assert "note: too few normal images (1) for the 99th percentile" in out


def test_evaluate_writes_metrics(checkpoint, sample_root, tmp_path, capsys, monkeypatch):
    computed = []
    evaluate_run = cli._evaluate_run

    def recorded(*args, **kwargs):
        computed.append(evaluate_run(*args, **kwargs))
        return computed[-1]

    monkeypatch.setattr(cli, "_evaluate_run", recorded)
    out_file = tmp_path / "metrics.json"
    code, out, err = run(["evaluate", str(checkpoint), "--data", str(sample_root),
                          "--out", str(out_file)], capsys)
    assert code == 0, err
    metrics = json.loads(out_file.read_text())
    assert {"image_auroc", "pixel_auroc", "aupro", "per_defect"} <= set(metrics)
    for key in ("image_auroc", "pixel_auroc", "aupro"):  # the numbers written are the evaluation's own
        assert metrics[key] == computed[0].metrics[key], key
    assert metrics["per_defect"] == computed[0].per_defect
    assert "AUPRO@0.3" in out
    assert "note: this checkpoint was trained on" not in out  # the category it was trained on


def test_evaluate_never_writes_its_metrics_over_the_model_or_a_file_that_is_not_json(
        checkpoint, sample_root, tmp_path, capsys):
    model = checkpoint.read_bytes()
    code, _, err = run(["evaluate", str(checkpoint), "--out", str(checkpoint)], capsys)
    assert_one_line_error(code, err, f"--out {checkpoint} is the checkpoint being evaluated")
    code, _, err = run(["evaluate", str(checkpoint.parent), "--out", str(checkpoint)], capsys)  # the run folder
    assert_one_line_error(code, err, "is the checkpoint being evaluated")
    assert checkpoint.read_bytes() == model
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "history.json").write_text('{"history": []}')  # a run's own record, JSON but no metrics
    for other in ("notes.txt", "history.json"):
        code, _, err = run(["evaluate", str(checkpoint), "--out", str(tmp_path / other)], capsys)
        assert_one_line_error(code, err, "exists and holds no metrics that evaluate wrote")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "history.json").read_text() == '{"history": []}'
    argv = ["evaluate", str(checkpoint), "--data", str(sample_root), "--out", str(tmp_path / "old.json")]
    assert run(argv, capsys)[0] == 0
    first = (tmp_path / "old.json").read_text()
    code, _, err = run([*argv, "--set", "score_top_k=5"], capsys)  # an earlier result: replaced, as before
    assert code == 0, err
    assert (tmp_path / "old.json").read_text() != first and "image_auroc" in json.loads(first)


def test_evaluate_writes_its_metrics_before_printing_and_names_an_unfinished_run(
        sample_root, texture_source, tmp_path, monkeypatch, capsys):
    config = get_config("quick", image_size=64, memory_size=2, steps=3, score_top_k=10, device="cpu")
    train = MVTecDataset(sample_root, "surface", "train", image_size=64)
    trainer = Trainer(config, train, texture_source, run_dir=tmp_path / "cut", progress=False,
                      run_info={"data_root": str(sample_root), "category": "surface"})
    trainer.fit(steps=1)
    code, out, err = run(["evaluate", str(trainer.save()), "--out", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    assert "note: this checkpoint stopped at step 1 of 3 (training was cut); train --resume finishes it." in out
    from memseg_tutorial.evaluation import EvaluationResult

    def closed_stdout(self):  # a reader that went away (| head) before the table
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(EvaluationResult, "table", closed_stdout)
    code, _, err = run(["evaluate", str(tmp_path / "cut"), "--out", str(tmp_path / "piped.json")], capsys)
    assert code != 0 and json.loads((tmp_path / "piped.json").read_text())["step"] == 1


def test_evaluate_set_scores_like_a_run_trained_with_those_settings(
        checkpoint, sample_root, texture_source, tmp_path, capsys, calibrated_on):
    """evaluate --set: the fixture's run (no memory map), scored with m3 at weight 0.5, the
    maximum pixel and a blur, gives the metrics of the same run made with those settings; the
    memory map is calibrated on the run's normal training images first, as after training."""
    scoring = {"memory_map_level": 3, "memory_map_weight": 0.5, "score_mode": "max", "map_smoothing_sigma": 1.0}
    config = get_config("quick", image_size=64, memory_size=2, steps=1, score_top_k=10, device="cpu", **scoring)
    train = MVTecDataset(sample_root, "surface", "train", image_size=64)
    reference = Trainer(config, train, texture_source, run_dir=tmp_path / "reference", progress=False,
                        run_info={"data_root": str(sample_root), "category": "surface"})
    reference.build_memory_bank()
    reference.save()  # calibrates the memory map first
    sets = [arg for key, value in scoring.items() for arg in ("--set", f"{key}={value!r}")]
    code, out, err = run(["evaluate", str(checkpoint), *sets, "--out", str(tmp_path / "scored.json")], capsys)
    assert code == 0, err
    assert "memory map (m3) calibrated on" in out and "does not record" not in out
    code, _, err = run(["evaluate", str(tmp_path / "reference"), "--out", str(tmp_path / "reference.json")], capsys)
    assert code == 0, err
    scored, expected = (json.loads((tmp_path / name).read_text()) for name in ("scored.json", "reference.json"))
    assert scored["scoring_set"] == scoring and expected["scoring_set"] == {}
    assert scored["config"] == expected["config"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "per_defect"):
        assert scored[key] == expected[key], key
    assert load_checkpoint(checkpoint)["config"]["memory_map_weight"] == 0  # the file is not changed
    code, _, err = run(["evaluate", str(checkpoint), "--set", "lr=0.1"], capsys)
    assert_one_line_error(code, err, "lr would change training")
    code, out, err = run(["evaluate", str(checkpoint), "--set", "score_mode='max'"], capsys)
    assert code == 0, err  # by default beside the checkpoint, with the settings in the name
    written = checkpoint.parent / "evaluation_surface_score_mode-max.json"
    assert f"metrics written to {written}" in out and json.loads(written.read_text())["config"]["score_mode"] == "max"
    for sigma in ("2", "2.0"):  # one file for one setting, however it is typed
        code, out, err = run(["evaluate", str(checkpoint), "--set", f"map_smoothing_sigma={sigma}"], capsys)
        assert code == 0, err
        assert f"metrics written to {checkpoint.parent / 'evaluation_surface_map_smoothing_sigma-2.json'}" in out
    # Evaluated on another dataset (another category there), it is calibrated on its own training normals.
    other_data = generate_sample_dataset(tmp_path / "other_sample", seed=1)
    code, out, err = run(["evaluate", str(checkpoint), "--data", str(other_data), "--category", "object",
                          "--set", "memory_map_weight=0.5", "--out", str(tmp_path / "object.json")], capsys)
    assert code == 0, err
    assert "normal training images of 'surface' outside the bank" in out
    assert torch.equal(calibrated_on[-1], memory_map_images(train, config))  # (the same memory_size, seed)
    # A run that does not record its data, or whose folder holds other normals, is not calibrated.
    saved = load_checkpoint(checkpoint)
    assert saved["run"]["train_images"] == len(train)
    for change, needle in (({"data_root": None}, "does not record them"),
                           ({"train_images": len(train) + 1}, f"trained on {len(train) + 1} normal images")):
        changed = tmp_path / "changed.pt"
        torch.save({**saved, "run": {**saved["run"], **change}}, changed)
        code, _, err = run(["evaluate", str(changed), "--set", "memory_map_weight=0.5",
                            "--out", str(tmp_path / "x.json")], capsys)
        assert_one_line_error(code, err, needle)
    del saved["run"]["train_images"]  # saved before it was recorded: calibrated as before, with a note
    torch.save(saved, tmp_path / "earlier.pt")
    code, out, err = run(["evaluate", str(tmp_path / "earlier.pt"), "--set", "memory_map_weight=0.5",
                          "--out", str(tmp_path / "earlier.json")], capsys)
    assert code == 0, err
    assert "does not record how many normals it trained on" in out

    # predict --set: the same scores and thresholds as the run made with those settings; new thresholds
    # are required, since the saved ones were chosen on the other scores.
    normals, defects = sample_root / "surface" / "train" / "good", sample_root / "surface" / "test" / "crack"
    code, _, err = run(["predict", str(checkpoint), str(defects), *sets, "--out", str(tmp_path / "none")], capsys)
    assert_one_line_error(code, err, "--set changes the scores", "--normals")
    code, _, err = run(["predict", str(checkpoint), str(defects), "--set", "lr=0.1"], capsys)
    assert_one_line_error(code, err, "lr would change training")
    assert not (tmp_path / "none").exists()
    outputs = []
    for source, extra in ((checkpoint, sets), (tmp_path / "reference", [])):
        outputs.append(tmp_path / f"predicted_{len(outputs)}")
        code, out, err = run(["predict", str(source), str(defects), "--normals", str(normals),
                              "--out", str(outputs[-1]), *extra], capsys)
        assert code == 0, err
        assert ("memory map (m3) calibrated on" in out) == (source == checkpoint)
    assert (outputs[0] / "scores.csv").read_text() == (outputs[1] / "scores.csv").read_text()


def test_evaluate_given_a_run_folder_writes_metrics_inside_it(checkpoint, sample_root, capsys):
    run_folder = checkpoint.parent
    (run_folder / "metrics.json").write_text('{"test_detection_rate": 1.0}')  # as a demo run has
    code, out, err = run(["evaluate", str(run_folder), "--data", str(sample_root)], capsys)
    assert code == 0, err
    written = run_folder / "evaluation_surface.json"
    assert f"metrics written to {written}" in out
    record = json.loads(written.read_text())
    assert record["category"] == "surface" and record["data_root"] == str(sample_root)
    assert json.loads((run_folder / "metrics.json").read_text()) == {"test_detection_rate": 1.0}


def test_output_paths_that_cannot_be_written_fail_before_the_work(checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_folder").mkdir()
    code, _, err = run(["evaluate", str(checkpoint), "--out", str(tmp_path / "a_folder")], capsys)
    assert_one_line_error(code, err, "is a folder")
    (tmp_path / "a_file").write_text("x")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((40, 60, 3), 128, np.uint8))
    code, _, err = run(["predict", str(checkpoint), str(image), "--out", str(tmp_path / "a_file")], capsys)
    assert_one_line_error(code, err, "is a file")
    monkeypatch.setattr(cli, "_evaluate_run", lambda *args: pytest.fail("evaluated before checking --out"))
    for out in (tmp_path / "a_file" / "m.json", tmp_path / "a_file" / "deeper" / "m.json"):
        code, _, err = run(["evaluate", str(checkpoint), "--out", str(out)], capsys)
        assert_one_line_error(code, err, f"Cannot write {out}", "a_file is a file, not a folder")
    code, _, err = run(["download", "sample", "--root", str(tmp_path / "a_file" / "sample")], capsys)
    assert_one_line_error(code, err, "a_file is a file, not a folder")
    code, _, err = run(["download", "sample", "--root", str(tmp_path / "a_file")], capsys)
    assert_one_line_error(code, err, "a_file exists and is not a folder; choose another --root")
    # A folder we may not write to (as root, chmod would not stop us: os.access answers for it here).
    locked = tmp_path / "locked"  # a copy of the run: other tests evaluate the shared one
    locked.mkdir()
    shutil.copy(checkpoint, locked / "checkpoint.pt")
    deny_write(monkeypatch, locked)
    code, _, err = run(["evaluate", str(locked)], capsys)  # the default file goes beside the checkpoint
    assert_one_line_error(code, err, f"Cannot write the default output file {locked / 'evaluation_surface.json'}: "
                                     f"no permission to write in {locked}; give --out")
    (locked / "evaluation_surface.json").mkdir()  # a folder where the default file would go
    code, _, err = run(["evaluate", str(locked)], capsys)
    assert_one_line_error(code, err, "the default output file", "evaluation_surface.json: it is a folder; give --out")
    assert not err.startswith("error: --out")
    (locked / "evaluation_surface.json").rmdir()
    code, _, err = run(["download", "sample", "--root", str(locked / "sample")], capsys)
    assert_one_line_error(code, err, f"no permission to write in {locked}")  # to be made in a read-only folder
    code, out, err = run(["download", "sample", "--root", str(tmp_path / "sample")], capsys)
    assert code == 0, err
    deny_write(monkeypatch, tmp_path / "sample", tmp_path)  # a read-only copy, already complete:
    code, out, err = run(["download", "sample", "--root", str(tmp_path / "sample")], capsys)
    assert code == 0 and "ready" in out, err  # nothing to write, so no permission is asked for
    deny_write(monkeypatch, locked)
    monkeypatch.setattr(cli, "_calibrate", lambda *args: pytest.fail("calibrated before checking --out"))
    code, _, err = run(["predict", str(checkpoint), str(image), "--normals", str(tmp_path),
                        "--out", str(locked / "predictions")], capsys)
    assert_one_line_error(code, err, f"no permission to write in {locked}")
    # --out may not be a folder of images that is read: its overlays would be read as images next time.
    code, _, err = run(["predict", str(checkpoint), str(tmp_path), "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "is one of the folders of images to read")
    code, _, err = run(["predict", str(checkpoint), str(image), "--normals", str(tmp_path),
                        "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "is one of the folders of images to read")


def test_train_checks_where_it_writes_and_every_image_before_the_first_step(
        sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "__init__", lambda *args, **kwargs: pytest.fail("trained before the checks"))
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "a_file" / "runs"))
    code, _, err = run(_train_argv(sample_root, "--name", "r"), capsys)
    assert_one_line_error(code, err, "Cannot write", "a_file is a file, not a folder")
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    deny_write(monkeypatch, tmp_path)
    code, _, err = run(_train_argv(sample_root, "--name", "r"), capsys)
    assert_one_line_error(code, err, f"no permission to write in {tmp_path}")
    # --overwrite removes the old run's folder and makes it again: the folder above must be writable
    # too, or the old run would be deleted and the new one never written.
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "checkpoint.pt").write_text("an old run")
    deny_write(monkeypatch, tmp_path / "runs")
    code, _, err = run(_train_argv(sample_root, "--name", "old", "--overwrite"), capsys)
    assert_one_line_error(code, err, f"no permission to write in {tmp_path / 'runs'}")
    old = tmp_path / "runs" / "old"  # and the run's own folder, whose files are removed first
    deny_write(monkeypatch, old)
    code, _, err = run(_train_argv(sample_root, "--name", "old", "--overwrite"), capsys)
    assert_one_line_error(code, err, f"no permission to write in {old}")
    assert (tmp_path / "runs" / "old" / "checkpoint.pt").read_text() == "an old run"
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "fit", lambda *args, **kwargs: pytest.fail("trained before the checks"))
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    good = data / "surface" / "train" / "good"
    (good / "zero.jpg").write_bytes(b"")
    for name in ("noise.png", "more.png", "again.png", "last.png"):
        (good / name).write_bytes(bytes(range(200)))
    code, _, err = run(_train_argv(data, "--name", "r"), capsys)
    assert_one_line_error(code, err, "again.png: it is not a PNG, JPEG",  # the first, by name
                          "4 more training images cannot be read either: last.png, more.png, noise.png and 1 other.",
                          "Move them away")
    for name in ("zero.jpg", "noise.png", "more.png", "again.png", "last.png"):
        (good / name).unlink()
    textures = tmp_path / "textures"
    textures.mkdir()
    cv2.imwrite(str(textures / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    (textures / "b.jpg").write_bytes(b"")
    code, _, err = run(_train_argv(data, "--name", "r", "--textures", str(textures)), capsys)
    assert_one_line_error(code, err, "b.jpg: the file is empty", "Move it away")


def _ctrl_c_at(monkeypatch, step: int):
    """Training stops as if Ctrl-C were pressed before step ``step``; returns the real train_step."""
    real_step = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        if self.step == step:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    return real_step


def _train_argv(sample_root, *extra):
    return ["train", "--preset", "quick", "--data", str(sample_root), "--steps", "1", "--image-size", "64",
            "--set", "memory_size=2", "--no-progress", *extra]


def test_train_never_mixes_two_runs_in_one_folder(sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    code, _, err = run(_train_argv(sample_root, "--name", "r"), capsys)
    assert code == 0, err
    (tmp_path / "r" / "my_notes.txt").write_text("keep me")
    code, _, err = run(_train_argv(sample_root, "--name", "r"), capsys)
    assert_one_line_error(code, err, "is already in use", "--resume", "--overwrite")
    assert (tmp_path / "r" / "my_notes.txt").exists()
    code, _, err = run(_train_argv(sample_root, "--name", "r", "--overwrite", "--textures",
                                   str(tmp_path / "no_textures")), capsys)
    assert_one_line_error(code, err, "no_textures")
    assert (tmp_path / "r" / "my_notes.txt").exists()  # a typo never costs the old run
    code, _, err = run(_train_argv(sample_root, "--name", "r", "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["checkpoint.pt", "history.json",
                                                                   "loss_curve.png"]
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "x.txt").write_text("no checkpoint here")
    code, _, err = run(_train_argv(sample_root, "--name", "u"), capsys)
    assert_one_line_error(code, err, "is already in use", "--overwrite")
    assert "--resume" not in err  # nothing to resume in that folder
    (tmp_path / "f").write_text("a file")
    code, _, err = run(_train_argv(sample_root, "--name", "f"), capsys)
    assert_one_line_error(code, err, "not a folder")
    code, _, err = run(_train_argv(sample_root, "--name", ""), capsys)
    assert_one_line_error(code, err, "run name")


def test_set_category_reaches_the_run_and_the_sample_is_recognised_through_data(
    sample_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    code, out, err = run(_train_argv(sample_root, "--set", "category='object'", "--name", "o"), capsys)
    assert code == 0, err
    checkpoint = load_checkpoint(tmp_path / "o")
    assert checkpoint["config"]["category"] == "object" and checkpoint["run"]["category"] == "object"
    assert "of 'object' (object)" in out
    code, out, err = run(_train_argv(sample_root, "--name", "s"), capsys)
    assert code == 0, err
    assert "of 'surface' (texture)" in out  # the sample's surface is a texture, also via --data
    code, _, err = run(_train_argv(sample_root, "--set", "preset='full'"), capsys)
    assert_one_line_error(code, err, "--preset")


def test_a_copy_of_the_sample_with_a_category_of_its_own_trains(sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    template = tmp_path / "template"
    shutil.copytree(sample_root, template)  # with the sample's marker
    shutil.copytree(sample_root / "object", template / "widget")
    code, out, err = run(_train_argv(template, "--category", "widget", "--name", "w"), capsys)
    assert code == 0, err
    assert "of 'widget' (object)" in out


def test_ctrl_c_before_the_first_step_says_nothing_was_saved(sample_root, tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(Trainer, "build_memory_bank", interrupted)
    code, _, err = run(_train_argv(sample_root, "--name", "early"), capsys)
    assert code == 130
    assert_one_line_error(code, err, "before training started; nothing was saved")


def test_ctrl_c_during_training_is_reported_once_with_the_resume_command(sample_root, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    real_step = _ctrl_c_at(monkeypatch, 2)
    code, out, err = run(_train_argv(sample_root, "--name", "cut", "--steps", "4"), capsys)
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    assert_one_line_error(code, err, "interrupted at step 2", f"--resume {checkpoint}")
    assert code == 130 and "nterrupted" not in out  # said once, on stderr
    stopped = load_checkpoint(checkpoint)
    assert stopped["step"] == 2
    monkeypatch.setattr(Trainer, "train_step", real_step)  # the command the message gives finishes the run
    code, out, err = run(["train", "--resume", str(checkpoint), "--no-progress"], capsys)
    assert code == 0, err
    assert "resuming" in out and "at step 2 of 4" in out
    resumed = load_checkpoint(checkpoint)
    assert resumed["step"] == 4 and len(resumed["history"]) == 4
    assert resumed["config"] == stopped["config"]  # the run's own settings (64 px), not a preset's
    # Resuming the finished run says so and leaves its files alone (no retraining, no rewritten curve).
    files = [checkpoint, tmp_path / "cut" / "history.json", tmp_path / "cut" / "loss_curve.png"]
    before = [(path.stat().st_mtime_ns, path.read_bytes()) for path in files]
    code, out, err = run(["train", "--resume", str(checkpoint), "--no-progress"], capsys)
    assert code == 0 and err == ""
    assert "has finished (4 of 4 steps): nothing to train" in out and f"evaluate {checkpoint}" in out
    assert "training:" not in out
    assert [(path.stat().st_mtime_ns, path.read_bytes()) for path in files] == before


def test_a_second_ctrl_c_is_reported_as_a_stop_without_saving(sample_root, tmp_path, monkeypatch, capfd):
    import signal

    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    real_step = Trainer.train_step

    def pressed_twice_inside_step_3(self, batch):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", pressed_twice_inside_step_3)
    code, _, err = run(_train_argv(sample_root, "--name", "twice", "--steps", "4", "--set", "checkpoint_every=1"),
                       capfd)  # the first press is written to the file descriptor, from the handler
    checkpoint = tmp_path / "twice" / "checkpoint.pt"
    assert err.startswith("\nCtrl-C: saving after this step"), err  # the first press, as it happens
    assert_one_line_error(code, err.split("\n", 2)[-1], "stopped at once (a second Ctrl-C), without saving: "
                          f"{checkpoint} (step 2) is kept; continue with --resume {checkpoint}")
    assert code == 130 and load_checkpoint(checkpoint)["step"] == 2


def test_a_run_with_relative_weights_and_textures_resumes_from_another_folder_without_the_pth(
        sample_root, tmp_path, monkeypatch, capsys):
    from torchvision.models import resnet18

    work = tmp_path / "work"
    (work / "tex").mkdir(parents=True)
    cv2.imwrite(str(work / "tex" / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    torch.save(resnet18(weights=None).state_dict(), work / "enc.pth")
    monkeypatch.chdir(work)
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    real_step = _ctrl_c_at(monkeypatch, 2)
    code, _, err = run(_train_argv(sample_root, "--name", "rel", "--steps", "4", "--weights", "enc.pth",
                                   "--textures", "tex"), capsys)
    assert code == 130, err
    checkpoint = tmp_path / "runs" / "rel" / "checkpoint.pt"
    saved = load_checkpoint(checkpoint)
    assert saved["config"]["backbone_weights"] == str(work / "enc.pth")  # valid from any folder
    assert saved["run"]["textures"] == str(work / "tex")
    args = cli.build_parser().parse_args(_train_argv(sample_root))
    for weights, stored in (("NONE", "none"), ("enc.pth", str(work / "enc.pth"))):  # from --weights or --set
        assert cli._config(args, "full", backbone_weights=weights).backbone_weights == stored
    (work / "enc.pth").unlink()  # the checkpoint holds every weight: the file is no longer needed
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    code, out, err = run(["train", "--resume", str(checkpoint), "--no-progress"], capsys)
    assert code == 0, err
    assert "at step 2 of 4" in out and load_checkpoint(checkpoint)["step"] == 4


def test_predict_refuses_a_non_image_before_the_model_and_never_mixes_two_results(
    checkpoint, tmp_path, capsys
):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(images / f"{name}.png"), np.full((40, 60, 3), 128, np.uint8))
    (images / "c.png").write_text("not an image")
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "c.png", "not a PNG, JPEG", "--skip-unreadable")
    assert not (tmp_path / "out").exists()
    (images / "c.png").unlink()
    code, out, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "thresholds: image 0.5000, pixel 0.5000 (default" in out  # the values in use, not only their source
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    (tmp_path / "out" / "my_overlay.png").write_text("mine too: not listed in scores.csv")
    (images / "b.png").unlink()
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "earlier predict", "--overwrite")
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out"),
                        "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_overlay.png", "mine.txt", "my_overlay.png", "scores.csv"]  # b's stale overlay is gone
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].endswith(",a_overlay.png")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "scores.csv").write_text("id,grade\n1,A\n")
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "other"),
                        "--overwrite"], capsys)
    assert_one_line_error(code, err, "scores.csv that predict did not write")
    assert (tmp_path / "other" / "scores.csv").read_text() == "id,grade\n1,A\n"
    (tmp_path / "other" / "scores.csv").write_bytes("café;note\n".encode("latin-1"))  # not even UTF-8
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "other")], capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'other'} holds a scores.csv that predict did not write")


def test_predict_never_writes_over_a_file_of_the_users_with_an_overlays_name(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.png").write_text("the user's own file")
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "a_overlay.png").read_text() == "the user's own file"
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[1].endswith(",a_0000_overlay.png") and cv2.imread(str(out / "a_0000_overlay.png")) is not None
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err  # its own earlier overlay is replaced, the user's file still kept
    assert sorted(p.name for p in out.iterdir()) == ["a_0000_overlay.png", "a_overlay.png", "scores.csv"]
    assert (out / "a_overlay.png").read_text() == "the user's own file"


def test_warnings_are_one_line_that_names_the_file(checkpoint, tmp_path, monkeypatch, capsys):
    from memseg_tutorial.data import images

    monkeypatch.setattr(images, "_announced", set())
    for name in ("dark.png", "darker.png"):  # 12-bit data stored in 16 bits
        cv2.imwrite(str(tmp_path / name), np.full((40, 60), 4095, np.uint16))
    code, _, err = run(["predict", str(checkpoint), str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"warning: {tmp_path / 'dark.png'}: a uint16 image uses at most 1/16 of its range (max 4095), so it "
        f"reads dark: if your camera stores 12-bit data in 16 bits, scale it up first (x << 4). Said once; "
        f"other images may read dark too."]


def test_evaluate_and_predict_show_progress_on_a_terminal_only(checkpoint, tmp_path, monkeypatch, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((40, 60, 3), 128, np.uint8))
    commands = (["evaluate", str(checkpoint), "--out", str(tmp_path / "m.json")],
                ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "p")])
    for terminal in (False, True):
        monkeypatch.setattr(cli, "_on_a_terminal", lambda terminal=terminal: terminal)
        for argv in commands:
            code, _, err = run([*argv, "--overwrite"] if argv[0] == "predict" and terminal else argv, capsys)
            assert code == 0, err
            assert (f"{argv[0]}: " in err) == terminal, err  # tqdm's bar, on stderr


def test_resume_refuses_flags_it_would_ignore(checkpoint, capsys):
    for flags in (["--steps", "9"], ["--steps", "0"], ["--image-size", "0"], ["--image-size", "128"],
                  ["--name", "other"], ["--category", "object"]):  # 0 is given too, though falsy
        code, _, err = run(["train", "--resume", str(checkpoint), *flags], capsys)
        assert_one_line_error(code, err, flags[0], "cannot change a run being resumed")


def test_an_unforeseen_error_is_still_one_line(monkeypatch, capsys):
    def broken(args):
        raise KeyError("config")

    monkeypatch.setattr(cli, "cmd_download", broken)
    code, _, err = run(["download", "sample"], capsys)
    assert_one_line_error(code, err, "KeyError", "MEMSEG_DEBUG")


def test_a_multi_line_error_is_one_line_and_ctrl_c_anywhere_exits_130(monkeypatch, capsys):
    """A library's message may span lines (OpenCV, torch); the user still sees one line, and
    Ctrl-C outside training still exits 130 (1 would read as a failed step)."""
    def multi_line(args):
        raise ValueError("Cannot read x.png:\n  the file is damaged")

    monkeypatch.setattr(cli, "cmd_download", multi_line)
    code, _, err = run(["download", "sample"], capsys)
    assert code == 1
    assert_one_line_error(code, err, "Cannot read x.png: the file is damaged")

    def ctrl_c(args):  # outside training (evaluate, predict, a download): no checkpoint to name
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_download", ctrl_c)
    code, _, err = run(["download", "sample"], capsys)
    assert code == 130  # the shell's code for Ctrl-C, as the module docstring promises
    assert_one_line_error(code, err, "interrupted")


@pytest.mark.parametrize("name", ["..", ".hidden"])
def test_a_run_name_is_never_a_parent_or_a_hidden_folder(sample_root, tmp_path, monkeypatch, capsys, name):
    """--name .. would make runs/.. the run folder (and --overwrite would empty it); a hidden name
    would be taken for a staging folder."""
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    for command in (_train_argv(sample_root, "--name", name), ["demo", "--steps", "1", "--name", name]):
        code, _, err = run(command, capsys)
        assert_one_line_error(code, err, "run name", "plain folder name")
    assert list(tmp_path.iterdir()) == []


def test_the_preset_comes_from_the_flag_then_the_environment_then_the_command(monkeypatch):
    """--preset, else $MEMSEG_PRESET, else full for train and quick for demo (the --help text)."""
    parse = cli.build_parser().parse_args
    monkeypatch.setenv("MEMSEG_PRESET", "full")
    assert cli.demo_config(parse(["demo"])).preset == "full"
    assert cli.demo_config(parse(["demo", "--preset", "quick"])).preset == "quick"
    monkeypatch.setenv("MEMSEG_PRESET", "quick")
    assert cli._config(parse(["train"]), "full").preset == "quick"
    monkeypatch.delenv("MEMSEG_PRESET")
    assert cli.demo_config(parse(["demo"])).preset == "quick"


def test_device_flags_are_obeyed(checkpoint, sample_root, tmp_path, monkeypatch, capsys):
    """--device cuda on a machine without a GPU is a clear error for every command, not a silent
    CPU run (so --device is read at all), and nothing is written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((40, 60, 3), 128, np.uint8))
    for argv in (_train_argv(sample_root, "--name", "g", "--device", "cuda"),
                 ["evaluate", str(checkpoint), "--out", str(tmp_path / "m.json"), "--device", "cuda"],
                 ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "p"), "--device", "cuda"]):
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, "no CUDA GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_evaluate_category_flag_picks_the_test_split(checkpoint, sample_root, tmp_path, capsys):
    """--category evaluates the model on another category's test split (lesson 09's cross-check)
    and says so in the record and its file name."""
    code, out, err = run(["evaluate", str(checkpoint), "--data", str(sample_root), "--category", "object"],
                         capsys)
    assert code == 0, err
    assert "note: this checkpoint was trained on 'surface'; evaluating it on 'object'." in out
    record = json.loads((checkpoint.parent / "evaluation_object.json").read_text())
    assert record["category"] == "object"
    assert record["test_images"] == len(MVTecDataset(sample_root, "object", "test", image_size=64))


def test_predict_percentile_flags_set_the_thresholds(checkpoint, sample_root, tmp_path, capsys):
    """--pixel-percentile moves only the pixel threshold (lesson 09: percentiles of the held-out
    normals' scores and pixels)."""
    import re
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((sample_root / "surface" / "train" / "good").iterdir())[:3]:
        shutil.copy(path, images)
    thresholds = {}
    for pixel in ("50", "99.9"):
        code, out, err = run(["predict", str(checkpoint), str(images), "--normals", str(images),
                              "--out", str(tmp_path / pixel), "--pixel-percentile", pixel], capsys)
        assert code == 0, err
        image, pixel_threshold = re.search(r"thresholds: image ([\d.]+), pixel ([\d.]+)", out).groups()
        thresholds[pixel] = float(image), float(pixel_threshold)
    assert thresholds["50"][0] == thresholds["99.9"][0] and thresholds["50"][1] < thresholds["99.9"][1]
    # Without --normals there is nothing to read a percentile off: said, not silently ignored.
    code, _, err = run(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "none"),
                        "--image-percentile", "95"], capsys)
    assert_one_line_error(code, err, "--image-percentile and --pixel-percentile", "add --normals FOLDER")
    assert not (tmp_path / "none").exists()


def test_demo_writes_a_complete_run_folder(tmp_path, monkeypatch, capsys, calibrated_on):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    umask = os.umask(0o022)  # a usual umask, under which mkdtemp's private 0700 would show
    try:
        code, out, err = run(["demo", "--preset", "quick", "--steps", "2", "--no-progress",
                              "--name", "d"], capsys)
    finally:
        os.umask(umask)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "checkpoint.pt", "history.json", "loss_curve.png", "metrics.json", "overlays.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # the staging folder is gone
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755  # a plain folder's mode, not mkdtemp's 0700
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0.0 <= metrics["image_auroc"] <= 1.0
    assert metrics["expected_false_alarm_rate"] == pytest.approx(1 / 7)  # 6 held-out normals
    assert "note: too few normal images (6)" in out and "expected from 6 normals" in out
    assert cv2.imread(str(tmp_path / "d" / "overlays.png")) is not None
    # the thresholds chosen on the held-out normals travel with the checkpoint
    saved = Predictor.from_checkpoint(tmp_path / "d" / "checkpoint.pt", "cpu").thresholds
    assert (saved.image, saved.pixel) == (metrics["thresholds"]["image"], metrics["thresholds"]["pixel"])
    assert (saved.image, saved.pixel) != (Thresholds().image, Thresholds().pixel)
    rescored = Predictor.from_checkpoint(tmp_path / "d" / "checkpoint.pt", "cpu", scoring={"score_mode": "max"})
    assert rescored.thresholds == Thresholds()  # chosen on the other scores: not kept
    # Scored with a memory map it was trained without, the demo's model is calibrated as its Trainer
    # would have been: on training normals outside the bank, the held-out ones left out as in training.
    code, _, err = run(["evaluate", str(tmp_path / "d"), "--set", "memory_map_weight=0.5"], capsys)
    assert code == 0, err
    config = Config.from_dict(load_checkpoint(tmp_path / "d" / "checkpoint.pt")["config"])
    normals = MVTecDataset(ensure_sample_dataset(), "surface", "train", image_size=config.image_size)
    trained_on, _ = split_holdout(normals, cli.DEMO_HOLDOUT, config.seed)
    assert torch.equal(calibrated_on[-1], memory_map_images(trained_on, config))
    assert not torch.equal(calibrated_on[-1], memory_map_images(normals, config))  # the holdout matters


def test_demo_replaces_an_earlier_demo_run_and_nothing_else(checkpoint, tmp_path, monkeypatch, capsys):
    checkpoint_path = checkpoint
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    earlier = tmp_path / "d"
    (earlier / "predictions").mkdir(parents=True)
    (earlier / "metrics.json").write_text('{"test_detection_rate": 0.5}')
    (earlier / "evaluation_surface.json").write_text("{}")  # evaluate of the demo's checkpoint
    (earlier / ".DS_Store").write_text("")
    (earlier / ".git").mkdir()
    code, _, err = run(["demo", "--steps", "1", "--no-progress", "--name", "d"], capsys)
    assert_one_line_error(code, err, "holds .git/, predictions/, which the demo did not write")
    (earlier / ".git").rmdir()
    assert (earlier / "predictions").is_dir()
    (earlier / "predictions").rmdir()
    (earlier / "metrics.json").write_text('{"image_auroc": 0.5}')  # an older evaluate overwrote it
    code, _, err = run(["demo", "--steps", "1", "--no-progress", "--name", "d"], capsys)
    assert_one_line_error(code, err, "not a demo run")
    demo_checkpoint = load_checkpoint(checkpoint_path)
    demo_checkpoint["run"]["thresholds"] = {"image": 0.5, "pixel": 0.5, "source": "test"}
    torch.save(demo_checkpoint, earlier / "checkpoint.pt")  # ... but the checkpoint is a demo's
    code, _, err = run(["demo", "--preset", "quick", "--steps", "1", "--no-progress", "--name", "d"], capsys)
    assert code == 0, err
    assert json.loads((earlier / "metrics.json").read_text())["steps"] == 1
    assert sorted(p.name for p in earlier.iterdir()) == sorted(cli.DEMO_FILES)


def test_demo_trains_demo_steps_in_the_quick_preset_only(monkeypatch):
    monkeypatch.delenv("MEMSEG_PRESET", raising=False)
    parse = cli.build_parser().parse_args
    assert cli.demo_config(parse(["demo"])).steps == cli.DEMO_STEPS
    assert cli.demo_config(parse(["demo", "--steps", "7"])).steps == 7
    assert cli.demo_config(parse(["demo", "--preset", "full"])).steps == get_config("full").steps
    assert cli.demo_config(parse(["demo", "--preset", "full", "--weights", "none"])).backbone_weights == "none"


def test_undefined_metrics_are_written_as_json_null(tmp_path):
    from memseg_tutorial.checkpoint import atomic_write_json

    atomic_write_json({"aupro": float("nan"), "per_defect": {"ghost": [np.float64("nan"), 0.5]},
                     "rate": np.float32(0.25)}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "aupro": None, "per_defect": {"ghost": [None, 0.5]}, "rate": 0.25}


def test_resume_never_writes_over_another_checkpoint_and_a_gone_data_folder_is_named(
    sample_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    _ctrl_c_at(monkeypatch, 1)  # an unfinished run: a finished one has nothing to resume
    data = tmp_path / "mydata"
    shutil.copytree(sample_root / "surface", data / "surface")
    code, _, err = run(_train_argv(data, "--name", "r", "--steps", "2"), capsys)
    assert code == 130 and "interrupted at step 1" in err
    run_dir = tmp_path / "runs" / "r"
    shutil.copy(run_dir / "checkpoint.pt", run_dir / "backup.pt")
    code, _, err = run(["train", "--resume", str(run_dir / "backup.pt")], capsys)
    assert_one_line_error(code, err, "checkpoint.pt", "exists", "new run folder")
    shutil.rmtree(data)
    for argv in (["train", "--resume", str(run_dir)], ["evaluate", str(run_dir)]):
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, "data folder", "is gone", "--data")


@pytest.mark.parametrize("name, keep, reason", [
    ("cut.png", 60, "the PNG file is truncated (it has no complete end chunk)"),  # the header only: OpenCV's warning
    ("half.png", 0.5, "the PNG file is truncated (it has no complete end chunk)"),  # pixel data cut: libpng's line
    ("crc.png", -4, "the PNG file is truncated (it has no complete end chunk)"),  # only the last checksum cut
    ("half.jpg", 0.5, "the JPEG file is truncated (it has no end marker)"),
])
def test_a_truncated_image_gives_one_line_on_stderr_not_a_decoder_message_too(checkpoint, tmp_path, name,
                                                                             keep, reason):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = cv2.imencode(os.path.splitext(name)[1], noise)[1].tobytes()
    (tmp_path / name).write_bytes(whole[: keep if isinstance(keep, int) else int(len(whole) * keep)])
    assert (tmp_path / name).stat().st_size < len(whole)
    env = {k: v for k, v in os.environ.items()  # main() must quieten OpenCV; one-line errors
           if k not in ("OPENCV_LOG_LEVEL", "MEMSEG_DEBUG")}
    result = subprocess.run([sys.executable, "-m", "memseg_tutorial", "predict", str(checkpoint),
                             str(tmp_path / name), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Cannot read image {tmp_path / name}: {reason}. Add --skip-unreadable to leave such files out."]
    assert not (tmp_path / "out").exists()


def test_skip_unreadable_leaves_out_only_the_files_that_cannot_be_read(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "c"):
        cv2.imwrite(str(images / f"{name}.png"), np.full((40, 60, 3), 128, np.uint8))
    (images / "b.png").write_bytes(png_damaged_inside())  # found when decoded
    argv = ["predict", str(checkpoint), str(images), "--out", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "b.png", "damaged", "--skip-unreadable")
    assert not (tmp_path / "out").exists()  # nothing half-written
    (images / "d.png").write_bytes(b"")  # no image at all: left out when the inputs are listed
    code, out, err = run([*argv, "--skip-unreadable"], capsys)
    assert code == 0
    assert err.strip().splitlines() == [
        f"skipped: Cannot read image {images / 'd.png'}: the file is empty.",
        f"skipped: Cannot read image {images / 'b.png'}: the file is damaged or not a valid image."]
    assert "2 images in" in out and "2 unreadable files left out" in out
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [str(images / "a.png"), str(images / "c.png")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_overlay.png", "c_overlay.png",
                                                                   "scores.csv"]
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code, _, err = run([*argv[:-1], str(tmp_path / "none"), "--skip-unreadable"], capsys)
    assert code == 1 and err.strip().splitlines()[-1] == "error: no image could be read (4 tried, each named above)."
    assert len(err.strip().splitlines()) == 5 and not (tmp_path / "none").exists()
    code, _, err = run(["predict", str(checkpoint), str(images / "d.png"), "--out", str(tmp_path / "none"),
                        "--skip-unreadable"], capsys)
    assert code == 1 and err.strip().splitlines() == [  # refused before the model is loaded
        f"skipped: Cannot read image {images / 'd.png'}: the file is empty.",
        "error: no image could be read (1 tried, each named above)."]


@pytest.mark.parametrize("api", ["top-level", "utils.logging", "none", "other-signature"])
def test_quieting_opencv_works_with_every_build_of_it(api, monkeypatch):
    """OpenCV builds name the log-level call differently (a GPU image's OpenCV 5.0 had only
    ``cv2.utils.logging.setLogLevel``); the command line must run with any of them."""
    import types

    calls = []
    fake = types.ModuleType("cv2")
    if api == "top-level":
        fake.setLogLevel = calls.append
    elif api == "utils.logging":
        fake.utils = types.SimpleNamespace(logging=types.SimpleNamespace(setLogLevel=calls.append))
    elif api == "other-signature":
        fake.setLogLevel = lambda: calls.append("called")
    monkeypatch.setitem(sys.modules, "cv2", fake)
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    cli._quiet_opencv()
    assert calls == {"none": [], "other-signature": []}.get(api, [2])
    assert "OPENCV_LOG_LEVEL" not in os.environ  # set only for cv2's first import
    monkeypatch.setenv("OPENCV_LOG_LEVEL", "DEBUG")
    cli._quiet_opencv()  # the user's level wins
    assert len(calls) == (0 if api in ("none", "other-signature") else 1)


def test_resume_takes_moved_data_and_textures_and_refuses_other_ones(sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path / "runs"))
    real_step = _ctrl_c_at(monkeypatch, 1)
    data, textures = tmp_path / "data", tmp_path / "tex"
    shutil.copytree(sample_root / "surface", data / "surface")
    textures.mkdir()
    cv2.imwrite(str(textures / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    code, _, err = run(_train_argv(data, "--name", "r", "--steps", "3", "--textures", str(textures)), capsys)
    assert code == 130, err
    checkpoint = tmp_path / "runs" / "r" / "checkpoint.pt"
    resume = ["train", "--resume", str(checkpoint), "--no-progress"]

    fewer = tmp_path / "fewer"  # other data: one normal image less
    shutil.copytree(data, fewer)
    next((fewer / "surface" / "train" / "good").iterdir()).unlink()
    code, _, err = run([*resume, "--data", str(fewer)], capsys)
    assert_one_line_error(code, err, f"--data cannot change a run being resumed: its data are still in {data}")
    other = tmp_path / "other_tex"
    shutil.copytree(textures, other)
    code, _, err = run([*resume, "--textures", str(other)], capsys)
    assert_one_line_error(code, err, f"its textures are still in {textures}")

    moved_data, moved_textures = tmp_path / "moved_data", tmp_path / "moved_tex"
    data.rename(moved_data)
    textures.rename(moved_textures)
    code, _, err = run([*resume, "--data", str(fewer), "--textures", str(other)], capsys)  # moved, but other data
    count = len(list((moved_data / "surface" / "train" / "good").iterdir()))
    assert_one_line_error(code, err, f"was trained on {count} normal images, and the training set given holds "
                                     f"{count - 1}")
    cv2.imwrite(str(other / "b.png"), np.full((40, 60, 3), 90, np.uint8))
    code, _, err = run([*resume, "--data", str(moved_data), "--textures", str(other)], capsys)
    assert_one_line_error(code, err, "drew its anomalies from 1 texture images, and the texture source given holds 2")
    code, _, err = run(resume, capsys)
    assert_one_line_error(code, err, f"The run's data folder {data} is gone")
    code, _, err = run([*resume, "--data", str(moved_data)], capsys)
    assert_one_line_error(code, err, f"The run's texture folder {textures} is gone; pass --textures")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    _ctrl_c_at(monkeypatch, 2)  # cut again: the next resume must find the moved folders by itself
    code, out, err = run([*resume, "--data", str(moved_data), "--textures", str(moved_textures)], capsys)
    assert code == 130 and "at step 1 of 3" in out and "interrupted at step 2" in err, err
    run_info = load_checkpoint(checkpoint)["run"]
    assert (run_info["data_root"], run_info["textures"]) == (str(moved_data), str(moved_textures))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    code, out, err = run(resume, capsys)
    assert code == 0 and "at step 2 of 3" in out, err


def test_resume_keeps_the_built_in_textures(checkpoint, tmp_path, capsys):
    unfinished = tmp_path / "run" / "checkpoint.pt"
    unfinished.parent.mkdir()
    state = load_checkpoint(checkpoint)
    state["config"]["steps"] = 5  # one step of five: something to resume
    torch.save(state, unfinished)
    (tmp_path / "tex").mkdir()
    code, _, err = run(["train", "--resume", str(unfinished), "--textures", str(tmp_path / "tex")], capsys)
    assert_one_line_error(code, err, "--textures cannot change a run being resumed: it trained with the built-in")


def test_invert_foreground_reaches_the_run_and_its_resume(sample_root, tmp_path, monkeypatch, capsys):
    """A dark object on a bright background: the foreground mask takes the dark side (lesson 02)."""
    monkeypatch.setenv("MEMSEG_RUNS_DIR", str(tmp_path))
    code, _, err = run(_train_argv(sample_root, "--category", "surface", "--invert-foreground"), capsys)
    assert_one_line_error(code, err, "--invert-foreground", "'surface' trains as a texture")
    code, out, err = run(_train_argv(sample_root, "--category", "object", "--name", "dark",
                                     "--invert-foreground"), capsys)
    assert code == 0, err
    assert "'object' (object, inverted foreground)" in out
    assert load_checkpoint(tmp_path / "dark")["run"]["invert_foreground"] is True
    code, _, err = run(["train", "--resume", str(tmp_path / "dark"), "--invert-foreground"], capsys)
    assert_one_line_error(code, err, "--invert-foreground cannot change a run being resumed")


@pytest.mark.parametrize(("category", "data", "kind", "expected"), [
    ("surface", None, None, "texture"), ("object", None, None, "object"),  # the sample data
    ("carpet", "mvtec", None, "texture"), ("bottle", "mvtec", None, "object"),  # MVTec AD's own
    ("my_parts", "mine", None, "object"), ("bottle", "mvtec", "texture", "texture"),  # --kind wins
])
def test_the_kind_of_a_run_follows_its_category(category, data, kind, expected):
    import argparse

    args = argparse.Namespace(category=category, data=data, kind=kind)
    assert cli._kind(args, is_sample=data is None) == expected
