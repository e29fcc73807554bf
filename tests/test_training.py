"""The trainer on the offline sample data at 64 px: it learns, resumes exactly, and never
leaves a broken checkpoint behind."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_same_weights, make_trainer, straight_and_resumed, tiny_config

from memseg_tutorial.checkpoint import load_checkpoint, load_model
from memseg_tutorial.config import SCORING_FIELDS
from memseg_tutorial.data import MVTecDataset, TextureSource, UnreadableImageError
from memseg_tutorial.model import MemSeg
from memseg_tutorial.training import (
    DatasetSubset,
    GpuSampleStream,
    TexturePool,
    Trainer,
    cuda_autocast_dtype,
    dataset_images,
    lr_factor,
    memory_indices,
    memory_map_images,
    memory_map_indices,
    split_holdout,
)


@torch.no_grad()
def fixed_batch_loss(trainer, batch) -> float:
    trainer.model.eval()
    logits = trainer.model(batch["image"])
    return float(trainer.criterion(logits, batch["mask"])[0])


def test_a_few_steps_lower_the_loss(train_set, texture_source):
    # 20 steps: the eval-mode check needs BatchNorm running statistics (momentum 0.1) that have
    # forgotten their initial values (0.9**20 = 0.12); after 8 steps they have not.
    config = tiny_config(steps=20, lr=3e-3, schedule="constant")
    trainer = make_trainer(config, train_set, texture_source)
    trainer.build_memory_bank()
    batches = [trainer.batch(k) for k in range(2)]  # two fixed batches, seen during training too
    before = np.mean([fixed_batch_loss(trainer, b) for b in batches])
    history = trainer.fit()
    after = np.mean([fixed_batch_loss(trainer, b) for b in batches])
    assert len(history) == 20 and history[-1]["step"] == 20
    assert after < 0.7 * before, (before, after)
    assert np.mean([r["loss"] for r in history[-3:]]) < np.mean([r["loss"] for r in history[:3]])
    assert {"loss", "l1", "focal", "lr", "step"} <= set(history[0])


def test_bad_training_and_texture_files_are_refused_before_the_model_is_built(sample_root, tmp_path,
                                                                          monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(sample_root / "surface", data / "surface")
    good = data / "surface" / "train" / "good"
    textures = tmp_path / "textures"
    textures.mkdir()
    cv2.imwrite(str(textures / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    texture_source = TextureSource(textures, image_size=64)
    monkeypatch.setattr(MemSeg, "from_config", lambda *args, **kwargs: pytest.fail("built the model before the checks"))
    (good / "zero.png").write_bytes(b"")
    train = MVTecDataset(data, "surface", "train", image_size=64)
    with pytest.raises(UnreadableImageError, match=r"zero\.png: the file is empty\. Move it away"):
        Trainer(tiny_config(), train, texture_source)
    for name in ("cut.png", "more.png", "last.png", "noise.png"):
        (good / name).write_bytes(bytes(range(200)))
    train = MVTecDataset(data, "surface", "train", image_size=64)
    with pytest.raises(UnreadableImageError, match=r"cut\.png: .* 4 more training images cannot be read "
                                                   r"either: last\.png, more\.png, noise\.png and 1 other\. "
                                                   r"Move them away"):
        Trainer(tiny_config(), train, texture_source)
    for name in ("zero.png", "cut.png", "more.png", "last.png", "noise.png"):
        (good / name).unlink()
    train = MVTecDataset(data, "surface", "train", image_size=64)
    (textures / "b.jpg").write_bytes((textures / "a.png").read_bytes()[:100])  # a PNG cut short, named .jpg
    texture_source = TextureSource(textures, image_size=64)
    with pytest.raises(UnreadableImageError, match=r"b\.jpg: .*Move it away \(or replace it\) and train again"):
        Trainer(tiny_config(), train, texture_source)
    (textures / "b.jpg").unlink()  # and a dataset that lists no files is not checked: on to the model
    with pytest.raises(pytest.fail.Exception, match="built the model"):
        Trainer(tiny_config(), torch.utils.data.Subset(train, [0, 1]), TextureSource(textures, image_size=64))


def test_a_training_set_at_another_size_or_with_defects_or_a_misspelt_device_is_refused(sample_root, train_set,
                                                                                      texture_source):
    with pytest.raises(ValueError, match="gives 64 px images but config.image_size is 128"):
        Trainer(tiny_config(image_size=128), train_set, texture_source)
    test_set = MVTecDataset(sample_root, "surface", "test", image_size=64)
    with pytest.raises(ValueError, match=f"holds {sum(test_set.labels)} defective images of {len(test_set)}"):
        Trainer(tiny_config(), test_set, texture_source)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        Trainer(tiny_config(), train_set, texture_source, device="gpu")


def test_batches_hold_normal_then_synthetic(train_set, texture_source):
    trainer = make_trainer(tiny_config(), train_set, texture_source)
    batch = trainer.batch(3)
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["label"].tolist() == [0, 0, 1, 1]
    assert batch["mask"][:2].sum() == 0 and (batch["mask"][2:].flatten(1).sum(1) > 0).all()
    again = trainer.batch(3)
    assert torch.equal(batch["image"], again["image"])  # a batch is a function of its index


def test_resume_continues_exactly(train_set, texture_source, tmp_path):
    straight, _, resumed = straight_and_resumed(tiny_config(steps=4), train_set, texture_source,
                                                tmp_path)
    assert resumed.step == 2
    assert torch.equal(resumed.batch(resumed.step)["image"], straight.batch(2)["image"])
    resumed.fit()
    assert resumed.step == 4
    assert_same_weights(straight, resumed)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_resume_of_a_run_with_weights_from_a_file_continues_exactly_without_the_file(
        train_set, texture_source, tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(123)  # weights other than the ones the trainer's seed would draw
    encoder_file = tmp_path / "encoder.pth"
    torch.save(resnet18(weights=None).state_dict(), encoder_file)
    config = tiny_config(steps=4, backbone_weights=str(encoder_file))
    straight = make_trainer(config, train_set, texture_source)
    straight.fit()
    first = make_trainer(config, train_set, texture_source, run_dir=tmp_path / "run")
    first.fit(steps=2)
    path = first.save()
    encoder_file.unlink()  # the checkpoint holds every weight
    resumed = Trainer.resume(path, train_set, texture_source, progress=False)
    assert resumed.config.backbone_weights == str(encoder_file)  # the run's own config, saved again as it was
    resumed.fit()
    assert_same_weights(straight, resumed)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_resume_can_take_the_checkpoint_its_caller_has_read(train_set, texture_source, tmp_path):
    first = make_trainer(tiny_config(steps=3), train_set, texture_source, run_dir=tmp_path)
    first.fit(steps=2)
    path = first.save()
    checkpoint = load_checkpoint(path)
    path.unlink()  # so the file cannot be read a second time
    resumed = Trainer.resume(path, train_set, texture_source, progress=False, checkpoint=checkpoint)
    assert resumed.step == 2 and resumed.run_dir == tmp_path
    assert_same_weights(first, resumed)


def test_resume_refuses_a_training_set_of_another_size(train_set, texture_source, tmp_path):
    """Another count of images is other data (or a part of it): the batches would no longer be the run's."""
    first = make_trainer(tiny_config(steps=3), train_set, texture_source, run_dir=tmp_path)
    first.fit(steps=1)
    fewer = DatasetSubset(train_set, list(range(len(train_set) - 1)))
    with pytest.raises(ValueError, match=rf"was trained on {len(train_set)} normal images, and the training set "
                                         rf"given holds {len(train_set) - 1}: a resumed run continues on the same"):
        Trainer.resume(first.save(), fewer, texture_source, progress=False)


def test_resume_keeps_an_object_runs_kind_and_foreground_setting(sample_root, texture_source, tmp_path):
    """An object run simulates anomalies only on the (possibly inverted) foreground; a resume
    that rebuilt it as a texture run would put them on the background."""
    objects = MVTecDataset(sample_root, "object", "train", image_size=64)
    first = Trainer(tiny_config(), objects, texture_source, kind="object", run_dir=tmp_path,
                    invert_foreground=True, progress=False)
    first.fit(steps=1)
    resumed = Trainer.resume(first.save(), objects, texture_source, progress=False)
    assert resumed.kind == "object" and resumed.synthesizer.kind == "object"
    assert resumed.synthesizer.invert_foreground
    assert torch.equal(resumed.batch(1)["mask"], first.batch(1)["mask"])


def test_deterministic_mode_is_switched_on_and_trains(train_set, texture_source,
                                                      restore_determinism):
    torch.use_deterministic_algorithms(False)
    trainer = make_trainer(tiny_config(steps=3, deterministic=True), train_set, texture_source)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    history = trainer.fit()  # no op of the CPU path refuses to run in this mode
    assert len(history) == 3 and np.isfinite([r["loss"] for r in history]).all()


def test_resume_with_bank_refresh_and_fixed_stem_continues_exactly(train_set, texture_source, tmp_path):
    config = tiny_config(steps=4, memory_refresh_every=1, train_stem=False)
    straight, _, resumed = straight_and_resumed(config, train_set, texture_source, tmp_path)
    resumed.fit()  # the bank is rebuilt, but BatchNorm is not calibrated again
    assert_same_weights(straight, resumed)


def test_bank_refresh_stores_the_trained_stems_features_without_recalibrating(train_set, texture_source):
    """With a training stem the encoder moves; every refresh must hold the features it computes
    now, while layer1-3 keep the BatchNorm statistics calibrated once before training."""
    trainer = make_trainer(tiny_config(steps=3, memory_refresh_every=2, train_stem=True,
                                       schedule="constant"), train_set, texture_source)
    trainer.build_memory_bank()
    first = [level.clone() for level in trainer.model.memory_bank.levels]
    frozen_bn = {k: v.clone() for k, v in trainer.model.encoder.layer2.state_dict().items() if "running" in k}
    trainer.fit(steps=2)  # the refresh runs after step 2
    encoder = trainer.model.encoder
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        expected = encoder.memory_features(trainer._memory_images)
    encoder.train(was_training)
    for level, old, new in zip(expected, first, trainer.model.memory_bank.levels, strict=True):
        assert not torch.equal(new, old)  # the stem trained, so the stored features moved
        torch.testing.assert_close(new, level, rtol=0, atol=1e-6)
    for key, value in trainer.model.encoder.layer2.state_dict().items():
        if "running" in key:
            assert torch.equal(value, frozen_bn[key]), key
    unrefreshed = make_trainer(tiny_config(steps=3, train_stem=True, schedule="constant"), train_set,
                               texture_source)
    unrefreshed.build_memory_bank()
    unrefreshed.fit(steps=2)
    assert all(torch.equal(a, b) for a, b in zip(unrefreshed.model.memory_bank.levels, first, strict=True))


def test_random_encoder_is_calibrated_once_and_a_fixed_stem_stays_fixed(train_set, texture_source):
    trainer = make_trainer(tiny_config(train_stem=False), train_set, texture_source)
    stem = {k: v.clone() for k, v in trainer.model.encoder.stem.state_dict().items()}
    trainer.build_memory_bank()
    bn = trainer.model.encoder.layer2[0].bn1
    assert bn.running_mean.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    calibrated = {k: v.clone() for k, v in trainer.model.encoder.stem.state_dict().items()}
    trainer.fit()
    for name, value in trainer.model.encoder.stem.state_dict().items():
        if "running" in name or "num_batches" in name:
            assert torch.equal(value, calibrated[name]), name  # set once, before training
        else:
            assert torch.equal(value, stem[name]), name  # random weights never move
    assert not any(p.requires_grad for p in trainer.model.encoder.stem.parameters())
    trainer.model.train()
    assert not trainer.model.encoder.stem.training  # BN statistics of a fixed stem stay fixed
    uncalibrated = make_trainer(tiny_config(calibrate_batchnorm=False), train_set, texture_source)
    uncalibrated.build_memory_bank()
    assert uncalibrated.model.encoder.layer2[0].bn1.running_mean.abs().sum() == 0


@pytest.mark.parametrize("options", [{}, {"per_image_standardization": True, "map_smoothing_sigma": 1.5},
                                     {"memory_map_weight": 0.5, "memory_map_level": 3},
                                     {"memory_map_weight": 0.5, "half_scale_map": True, "memory_refresh_every": 1}],
                         ids=["paper", "standardized_smoothed", "memory_map", "half_scale_map"])
def test_checkpoint_holds_model_memory_and_state(train_set, texture_source, tmp_path, options):
    trainer = make_trainer(tiny_config(steps=2, **options), train_set, texture_source, run_dir=tmp_path)
    trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["step"] == 2 and checkpoint["seed"] == trainer.config.seed
    assert len(checkpoint["history"]) == 2
    assert checkpoint["optimizer"] is None and checkpoint["scheduler"] is not None  # finished: no state
    model, config, _ = load_model(tmp_path)
    assert config == trainer.config
    assert model.encoder.standardize == config.per_image_standardization
    assert model.map_smoothing_sigma == config.map_smoothing_sigma
    assert (model.memory_map_weight, model.memory_map_level) == (config.memory_map_weight, config.memory_map_level)
    assert model.memory_map_calibrated == (config.memory_map_weight > 0)  # the trainer calibrated it
    assert len(model.memory_bank) == 4
    assert model.half_scale_map == config.half_scale_map
    if config.half_scale_map:  # built (and rebuilt) with the full-size bank
        assert len(model.half_memory_bank) == 4 and model.half_memory_bank.level1.shape[-1] == 8
    x = trainer.batch(0)["image"]
    trainer.model.eval()
    assert torch.allclose(model.anomaly_map(x), trainer.model.anomaly_map(x))


# With memory_map_level (the case before it), every field of SCORING_FIELDS: see the test after the next.
OTHER_SCORING = {"memory_map_weight": 0.0, "map_smoothing_sigma": 1.5, "score_top_k": 3, "score_mode": "max",
                 "aupro_fpr_limit": 0.2}


@pytest.mark.parametrize("options", [{"half_scale_map": True}, {"memory_map_weight": 1.0, "memory_map_level": 3},
                                     OTHER_SCORING],
                         ids=["half_scale_map", "memory_map_level", "scoring_fields"])
def test_the_map_options_change_no_training_step(train_set, texture_source, tmp_path, options):
    """Training reads neither the half-size map (its bank is rebuilt beside the other) nor the memory
    map, which only calibration (before every checkpoint) and scoring read, nor any other of
    SCORING_FIELDS; so benchmarks/mtd.py scores both maps of one run, a change of memory map is
    compared on the same weights, and ``evaluate --set`` scores a trained model otherwise."""
    base = dict(steps=3, memory_refresh_every=1, memory_map_weight=0.5, checkpoint_every=1)
    plain, other = (make_trainer(tiny_config(**{**base, **change}), train_set, texture_source,
                                 run_dir=tmp_path / name) for name, change in (("plain", {}), ("other", options)))
    plain.fit()
    other.fit()
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in other.history]
    other_state = other.model.state_dict()
    for name, value in plain.model.state_dict().items():
        if name != "memory_map_stats" or "memory_map_weight" not in options:
            assert torch.equal(value, other_state[name]), name
    if "memory_map_weight" in options:  # calibrated on m3 (other statistics), or not at all (weight 0)
        assert not torch.allclose(plain.model.memory_map_stats, other.model.memory_map_stats)
    else:
        assert set(other_state) - set(plain.model.state_dict()) == {
            "half_memory_bank.level1", "half_memory_bank.level2", "half_memory_bank.level3", "half_memory_map_stats"}


def test_the_training_test_covers_every_scoring_field():
    assert {"memory_map_level", *OTHER_SCORING} == set(SCORING_FIELDS)


def test_a_saved_model_scored_with_other_scoring_settings_matches_one_trained_with_them(
        train_set, texture_source, tmp_path):
    """load_model(scoring=...): the map of a model trained with the memory map m1 at 0.5, loaded
    with m3 at 1.0 and another blur, then calibrated as the Trainer does, is the map of the same
    run trained with those settings (training reads none of them)."""
    base = dict(steps=2, memory_refresh_every=1, memory_map_weight=0.5)
    scoring = {"memory_map_level": 3, "memory_map_weight": 1.0, "map_smoothing_sigma": 1.5, "score_top_k": 7}
    trained = make_trainer(tiny_config(**base), train_set, texture_source, run_dir=tmp_path)
    trained.fit()
    reference = make_trainer(tiny_config(**{**base, **scoring}), train_set, texture_source)
    reference.fit()
    model, config, _ = load_model(tmp_path, scoring=scoring)
    assert config == reference.config and config.score_top_k == 7
    assert not model.memory_map_calibrated  # measured on m1: dropped, and scoring says so
    x = reference.batch(0)["image"]
    with pytest.raises(RuntimeError, match="not calibrated"):
        model.anomaly_map(x)
    model.calibrate_memory_map(memory_map_images(train_set, config))
    reference.model.eval()
    assert torch.equal(model.anomaly_map(x), reference.model.anomaly_map(x))
    same_level, _, _ = load_model(tmp_path, scoring={"memory_map_weight": 1.0})  # the level's statistics hold
    assert same_level.memory_map_calibrated
    with pytest.raises(ValueError, match="lr would change training"):
        load_model(tmp_path, scoring={"lr": 0.1})


def test_only_an_unfinished_run_keeps_the_optimiser_state(train_set, texture_source, tmp_path):
    trainer = make_trainer(tiny_config(steps=2), train_set, texture_source, run_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    trainer.fit(steps=1)
    unfinished, unfinished_size = load_checkpoint(path), path.stat().st_size
    assert unfinished["optimizer"]["state"]  # what a resume needs to continue exactly
    trainer.fit()
    finished = load_checkpoint(path)
    assert finished["step"] == 2 and finished["optimizer"] is None
    assert path.stat().st_size < 0.5 * unfinished_size
    resumed = Trainer.resume(path, train_set, texture_source, progress=False)  # still loads
    assert resumed.step == 2 and resumed.fit() == finished["history"]


def test_interrupted_write_keeps_the_previous_checkpoint(
    train_set, texture_source, tmp_path, monkeypatch
):
    trainer = make_trainer(tiny_config(steps=2), train_set, texture_source, run_dir=tmp_path)
    trainer.fit(steps=1)  # writes checkpoint.pt at step 1
    path = tmp_path / "checkpoint.pt"
    good_bytes = path.read_bytes()
    trainer.train_step(trainer.batch(1))  # step 2, not saved yet
    real_save = torch.save

    def broken_save(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"half a checkpoint")  # some bytes reach the disk, then...
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good_bytes
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp files


def test_ctrl_c_saves_a_checkpoint(train_set, texture_source, tmp_path, capsys):
    trainer = make_trainer(tiny_config(steps=4), train_set, texture_source, run_dir=tmp_path)

    def press_ctrl_c(trainer, record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(callback=press_ctrl_c)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert f"Interrupted at step 2; checkpoint saved to {tmp_path / 'checkpoint.pt'}." in capsys.readouterr().out
    config = tiny_config(steps=4)  # the command line reports it itself: fit() stays quiet then
    trainer = make_trainer(config, train_set, texture_source, run_dir=tmp_path / "quiet")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(callback=press_ctrl_c, report_interrupt=False)
    assert load_checkpoint(tmp_path / "quiet" / "checkpoint.pt")["step"] == 2
    assert "Interrupted" not in capsys.readouterr().out


def _ctrl_c_inside(trainer, at_step: int, presses: int = 1, where: str = "criterion") -> None:
    """Send SIGINT to this process ``presses`` times from inside a step (after its forward pass, when
    BatchNorm statistics have moved) or from the final memory-map calibration."""
    if where == "criterion":
        real = trainer.criterion

        def criterion(logits, masks):
            if trainer.step == at_step:
                for _ in range(presses):
                    os.kill(os.getpid(), signal.SIGINT)
            return real(logits, masks)

        trainer.criterion = criterion
    else:
        real_calibrate, pressed = trainer.calibrate_memory_map, []

        def calibrate():
            if trainer.step == at_step and not pressed:  # once: save() asks for it again
                pressed.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            real_calibrate()

        trainer.calibrate_memory_map = calibrate


def test_ctrl_c_inside_a_step_lets_it_finish_so_the_resume_is_exact(train_set, texture_source, tmp_path, capfd):
    """A checkpoint saved from the middle of a step (BatchNorm statistics moved, weights maybe too,
    the step not yet counted) would resume to another run; the bank refresh is part of the step."""
    config = tiny_config(steps=4, memory_refresh_every=2)
    straight = make_trainer(config, train_set, texture_source)
    straight.fit()
    cut = make_trainer(config, train_set, texture_source, run_dir=tmp_path)
    _ctrl_c_inside(cut, at_step=1)  # inside step 2, whose end refreshes the bank
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    assert cut.step == 2 and load_checkpoint(tmp_path)["step"] == 2
    captured = capfd.readouterr()  # the first press is written to the file descriptor, from the handler
    assert "Ctrl-C: saving after this step (press it again to stop at once, without saving)." in captured.err
    assert f"Interrupted at step 2; checkpoint saved to {tmp_path / 'checkpoint.pt'}." in captured.out
    resumed = Trainer.resume(tmp_path, train_set, texture_source, progress=False)
    resumed.fit()
    assert_same_weights(straight, resumed)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(train_set, texture_source, tmp_path, capfd):
    trainer = make_trainer(tiny_config(steps=4, checkpoint_every=1), train_set, texture_source, run_dir=tmp_path)
    _ctrl_c_inside(trainer, at_step=2, presses=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path)["step"] == 2  # step 3 was cut short: not saved
    assert f"Stopped at once (a second Ctrl-C): nothing was saved over {tmp_path / 'checkpoint.pt'}." in (
        capfd.readouterr().out)
    quiet = make_trainer(tiny_config(steps=2), train_set, texture_source)  # no run folder: nothing to save
    _ctrl_c_inside(quiet, at_step=0)
    with pytest.raises(KeyboardInterrupt):
        quiet.fit()
    assert quiet.step == 1 and "Ctrl-C: stopping after this step (press it again to stop at once)." in (
        capfd.readouterr().err)


def test_dataloader_workers_leave_ctrl_c_to_the_main_process(train_set, texture_source, monkeypatch):
    """A terminal's Ctrl-C reaches the workers too: a forked one would run fit()'s handler, a
    spawned one would die and fail the step that the main process is finishing."""
    from memseg_tutorial import training

    seen = []
    real_loader = training.DataLoader

    def recording(*args, **kwargs):
        seen.append(kwargs.get("worker_init_fn"))
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(training, "DataLoader", recording)
    make_trainer(tiny_config(steps=1, num_workers=1), train_set, texture_source).fit()
    assert seen == [training._ignore_ctrl_c]
    previous = signal.getsignal(signal.SIGINT)
    try:
        training._ignore_ctrl_c(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_final_calibration_still_saves_the_finished_run(train_set, texture_source, tmp_path):
    trainer = make_trainer(tiny_config(steps=2, memory_map_weight=0.5), train_set, texture_source, run_dir=tmp_path)
    _ctrl_c_inside(trainer, at_step=2, where="calibration")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    saved = load_checkpoint(tmp_path)
    assert saved["step"] == 2 and saved["optimizer"] is None  # the finished run, as fit() writes it


def test_fit_rebuilds_a_half_size_bank_that_a_stop_left_empty(train_set, texture_source):
    trainer = make_trainer(tiny_config(steps=1, half_scale_map=True), train_set, texture_source)
    trainer.build_memory_bank()
    bank = trainer.model.half_memory_bank
    bank.store([torch.zeros(0, c, 0, 0) for c in bank.channels])  # as a stop between the two scales leaves it
    assert bank.is_empty
    trainer.fit()
    assert not trainer.model.half_memory_bank.is_empty


def test_a_model_with_nan_is_never_saved_over_a_checkpoint(train_set, texture_source, tmp_path):
    """A diverged step can leave NaN in BatchNorm statistics even when the weights were spared."""
    from memseg_tutorial.training import TrainingDiverged

    trainer = make_trainer(tiny_config(steps=3), train_set, texture_source, run_dir=tmp_path)
    trainer.fit(steps=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    trainer.model.encoder.stem[1].running_mean[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"holds NaN or inf after step 1 \(first in encoder\.stem\.1\."
                                               r"running_mean\).*nothing was saved over .*checkpoint\.pt"):
        trainer.save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_a_run_folder_that_cannot_be_written_is_refused_before_training(train_set, texture_source, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=rf"Cannot write checkpoints in {tmp_path / 'afile' / 'run'}: "
                                         rf"{tmp_path / 'afile'} is a file, not a folder"):
        make_trainer(tiny_config(), train_set, texture_source, run_dir=tmp_path / "afile" / "run")


def test_a_resume_that_simulates_anomalies_elsewhere_says_so(train_set, texture_source, tmp_path):
    first = make_trainer(tiny_config(steps=3), train_set, texture_source, run_dir=tmp_path)
    first.fit(steps=1)
    assert first.run_info["gpu_synthesis"] is False
    checkpoint = load_checkpoint(first.save())
    checkpoint["run"]["gpu_synthesis"] = True  # as a run started on a GPU
    with pytest.warns(UserWarning, match="simulated its anomalies on the GPU there and on the CPU here: the "
                                         "weights continue exactly, but the batches"):
        resumed = Trainer.resume(tmp_path, train_set, texture_source, progress=False, checkpoint=checkpoint)
    assert resumed.run_info["gpu_synthesis"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same place: nothing to say
        Trainer.resume(first.save(), train_set, texture_source, progress=False)


def test_learning_rate_schedule():
    config = tiny_config(steps=100, warmup_fraction=0.1, schedule="cosine")
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.5)
    assert lr_factor(100, config) == pytest.approx(0.0, abs=1e-12)
    factors = [lr_factor(s, config) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert lr_factor(42, tiny_config(schedule="constant")) == 1.0


@pytest.mark.parametrize("options", [{"schedule": "cosine", "warmup_fraction": 0.25},
                                     {"schedule": "constant", "optimizer": "sgd", "lr": 0.04}],
                         ids=["cosine", "constant_sgd"])
def test_the_trainer_follows_the_configured_schedule(train_set, texture_source, options):
    """The lr logged at each step is the schedule's (so the scheduler really steps), with the
    configured optimiser."""
    from memseg_tutorial.training import learning_rates

    config = tiny_config(steps=8, **options)
    trainer = make_trainer(config, train_set, texture_source)
    history = trainer.fit()
    np.testing.assert_allclose([r["lr"] for r in history], learning_rates(config), rtol=1e-9)
    assert type(trainer.optimizer).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[config.optimizer]


def test_the_full_preset_builds_the_papers_optimizer():
    from memseg_tutorial import get_config
    from memseg_tutorial.model import MemSeg
    from memseg_tutorial.training import build_optimizer

    config = get_config("full", backbone_weights="none", image_size=64)
    with pytest.warns(UserWarning, match="RANDOM"):
        optimizer = build_optimizer(MemSeg.from_config(config), config)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.04, 0.9, 5e-4)


def test_memory_images_are_distinct_and_seeded():
    config = tiny_config(memory_size=8)
    chosen = memory_indices(40, config)
    assert len(set(chosen)) == 8 and all(0 <= i < 40 for i in chosen)
    assert chosen == memory_indices(40, config)
    assert chosen != memory_indices(40, tiny_config(memory_size=8, seed=1))
    with pytest.warns(UserWarning, match="only 3"):
        assert memory_indices(3, config) == [0, 1, 2]


def test_memory_map_is_calibrated_on_seeded_normals_outside_the_bank(train_set, texture_source):
    config = tiny_config(memory_size=8)
    chosen = memory_map_indices(40, config, count=10)
    assert len(set(chosen)) == 10 and not set(chosen) & set(memory_indices(40, config))
    assert chosen == memory_map_indices(40, config, count=10)
    assert sorted(memory_map_indices(12, config)) == sorted(set(range(12)) - set(memory_indices(12, config)))
    with pytest.raises(ValueError, match="outside the memory bank"), pytest.warns(UserWarning):
        memory_map_indices(5, config)
    # After fit() the model's statistics are those of exactly these images.
    trainer = make_trainer(tiny_config(steps=2, memory_map_weight=0.5), train_set, texture_source)
    trainer.fit()
    stats = trainer.model.memory_map_stats.clone()
    images = dataset_images(train_set, memory_map_indices(len(train_set), trainer.config))
    trainer.model.calibrate_memory_map(images)
    assert torch.equal(trainer.model.memory_map_stats, stats)
    assert trainer.model.training  # calibration leaves the mode as it found it


def test_memory_map_fails_early_saves_before_training_and_calibrates_after_a_stop(
        train_set, texture_source, tmp_path):
    config = tiny_config(steps=3, memory_map_weight=0.5)
    with pytest.raises(ValueError, match="outside the memory bank"), pytest.warns(UserWarning):
        make_trainer(tiny_config(memory_map_weight=0.5, memory_size=len(train_set) + 1), train_set, texture_source)
    trainer = make_trainer(config, train_set, texture_source, run_dir=tmp_path)
    trainer.save()  # no bank yet: nothing to calibrate, and the checkpoint is still written
    assert not trainer.model.memory_map_calibrated

    class Stop(Exception):
        pass

    def stop_after_one(trainer, record):
        raise Stop

    with pytest.raises(Stop):
        trainer.fit(callback=stop_after_one)
    assert trainer.step == 1 and not trainer.model.memory_map_calibrated
    trainer.calibrate_memory_map()  # what a caller that stops fit() early does (benchmarks/mtd.py)
    assert trainer.model.memory_map_calibrated


def test_gpu_sample_stream_runs_on_any_device(sample_root, texture_source):
    """The GPU path (synthesize_batch_torch) checked on the CPU: layout and reproducibility."""
    objects = MVTecDataset(sample_root, "object", "train", image_size=64)
    trainer = Trainer(tiny_config(), objects, texture_source, kind="object", progress=False)
    stream = GpuSampleStream(trainer, max_textures=3)
    batch = stream.batch(1)
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["label"].tolist() == [0, 0, 1, 1]
    assert batch["mask"][:2].sum() == 0 and (batch["mask"][2:].flatten(1).sum(1) > 0).all()
    assert torch.equal(stream.batch(1)["image"], batch["image"])
    assert not torch.equal(stream.batch(2)["image"], batch["image"])


class CountingTextures:
    """A texture source of ``n`` flat textures whose value is their index; counts what it reads."""

    def __init__(self, n: int, size: int = 8, broken_in: str | None = None) -> None:
        self.n, self.size, self.broken_in = n, size, broken_in
        self.reads, self.threads = [], []

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> np.ndarray:
        thread = threading.current_thread().name
        if thread == self.broken_in:
            raise OSError(f"texture {index} is damaged")
        self.reads.append(int(index))
        self.threads.append(thread)
        return np.full((self.size, self.size, 3), index, dtype=np.uint8)


def join_texture_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("texture-pool-"):
            thread.join()


def pool_indices(textures: torch.Tensor) -> list[int]:
    return (textures[:, 0, 0, 0] * 255).round().long().tolist()


def test_texture_pool_is_redrawn_from_the_whole_source():
    # The GPU synthesis must not settle for one handful of DTD's 5,640 textures: the pool is
    # redrawn every refresh_every steps, distinct within a pool, and over a run it reaches them all.
    source = CountingTextures(40)
    pool = TexturePool(source, seed=3, device=torch.device("cpu"), size=6, refresh_every=2)
    seen, previous = set(), None
    for step in range(60):
        chosen = pool_indices(pool.at(step))
        assert len(set(chosen)) == 6 and chosen == pool.indices(step // 2).tolist()
        if step % 2 == 1:
            assert chosen == previous  # one pool for refresh_every steps
        elif previous is not None:
            assert chosen != previous
        previous = chosen
        seen.update(chosen)
    assert seen == set(range(40))
    join_texture_threads()
    # Pool 0 is read on demand; every later one ahead of time, in the background.
    assert set(source.threads[:6]) == {threading.current_thread().name}
    assert all(name.startswith("texture-pool-") for name in source.threads[6:])


def test_texture_pool_of_a_step_does_not_depend_on_the_way_there():
    # A resumed run starts at step k with no history: it must get the same textures as a run
    # that walked there, whether the pool was read ahead in the background or on demand.
    walked = TexturePool(CountingTextures(30), seed=0, device=torch.device("cpu"), size=5, refresh_every=3)
    for step in range(10):
        walked.at(step)
    fresh = TexturePool(CountingTextures(30), seed=0, device=torch.device("cpu"), size=5, refresh_every=3)
    assert torch.equal(fresh.at(9), walked.at(9))
    assert torch.equal(fresh.at(4), walked.at(4))  # backwards too (the read-ahead is of pool 4)
    other_seed = TexturePool(CountingTextures(30), seed=1, device=torch.device("cpu"), size=5, refresh_every=3)
    assert not torch.equal(other_seed.at(9), walked.at(9))


def test_texture_pool_reads_no_pool_past_the_last_step_and_survives_a_failed_read_ahead():
    source = CountingTextures(30)
    pool = TexturePool(source, seed=0, device=torch.device("cpu"), size=5, refresh_every=2, total_steps=6)
    for step in range(6):
        pool.at(step)
    join_texture_threads()
    assert len(source.reads) == 3 * 5  # pools 0-2; pool 3 would start at step 6, after the run
    # A read-ahead that fails (a damaged file) fails the pool it read, not the one a jump asks for.
    source = CountingTextures(30, broken_in="texture-pool-1")
    pool = TexturePool(source, seed=0, device=torch.device("cpu"), size=5, refresh_every=2)
    pool.at(0)
    assert pool_indices(pool.at(4)) == pool.indices(2).tolist()
    walked = TexturePool(source, seed=0, device=torch.device("cpu"), size=5, refresh_every=2)
    walked.at(0)
    with pytest.raises(OSError, match="damaged"):
        walked.at(2)  # the pool whose read failed says why
    join_texture_threads()


def test_texture_pool_reads_a_small_source_once():
    source = CountingTextures(4)
    pool = TexturePool(source, seed=0, device=torch.device("cpu"), size=64, refresh_every=1)
    assert sorted(pool_indices(pool.at(0))) == [0, 1, 2, 3]
    assert pool.at(500) is pool.at(0) and sorted(source.reads) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="refresh_every"):
        TexturePool(source, seed=0, device=torch.device("cpu"), refresh_every=0)


def test_gpu_sample_stream_batches_repeat_across_texture_pools(sample_root, texture_source):
    """Batch k of a stream that started at k equals batch k of one that walked through earlier pools."""
    objects = MVTecDataset(sample_root, "object", "train", image_size=64)
    config = tiny_config(texture_probability=1.0)
    trainer = Trainer(config, objects, texture_source, kind="object", progress=False)
    walked = GpuSampleStream(trainer, max_textures=2, texture_refresh_every=2)
    batches = [walked.batch(step)["image"] for step in range(6)]
    fresh = GpuSampleStream(trainer, max_textures=2, texture_refresh_every=2)
    assert torch.equal(fresh.batch(5)["image"], batches[5])
    assert walked.texture_pool.generation == 2 and len(texture_source) > 2


def test_holdout_split_is_disjoint(train_set):
    kept, held = split_holdout(train_set, 6, seed=0)
    assert len(kept) + len(held) == len(train_set) and len(held) == 6
    assert not set(map(str, kept.image_paths)) & set(map(str, held.image_paths))
    assert torch.equal(held[0]["image"], train_set[held.indices[0]]["image"])
    with pytest.raises(ValueError, match="hold out"):
        split_holdout(train_set, len(train_set), seed=0)


def test_cuda_autocast_dtype_follows_the_config():
    assert cuda_autocast_dtype(tiny_config()) == torch.float16
    assert cuda_autocast_dtype(tiny_config(amp=False)) is None
    assert cuda_autocast_dtype(tiny_config(amp_dtype="bfloat16")) == torch.bfloat16


class _RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it would create ``marker`` (a stand-in for any command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_a_crafted_checkpoint_runs_no_code(tmp_path):
    from memseg_tutorial.checkpoint import CHECKPOINT_FORMAT

    marker = tmp_path / "code_ran"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"Cannot read checkpoint .*evil\.pt: it holds Python objects \(\w[\w.]*\), which are not read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("config"), "'config' entry is missing"),
    (lambda c: c.pop("model"), "'model' entry is missing"),
    (lambda c: c.update(step="3"), "'step' entry is missing or not of type int"),
    (lambda c: c.update(version=99), "format version 99"),
    (lambda c: c.update(run=None), "'run' entry is not of type dict"),
    (lambda c: c.update(version=1), r"earlier memseg_tutorial \(checkpoint version 1\): its model had BatchNorm "
                                    r"and ReLU after MSFF's convs.*train again"),
])
def test_a_damaged_checkpoint_is_named(tmp_path, change, message):
    from memseg_tutorial.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 3,
                  "config": tiny_config().to_dict(), "model": {"w": torch.zeros(1)}}
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path)


def test_a_checkpoint_with_changed_bytes_is_refused_not_loaded_as_other_weights(tmp_path):
    """torch.load does not compare the checksums that torch.save writes: a flipped bit (a disk or
    copy error) would load as a changed weight. load_checkpoint compares them."""
    from memseg_tutorial.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_model

    weights = torch.arange(4096, dtype=torch.float32)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 3,
                "config": tiny_config().to_dict(), "model": {"w": weights}}, tmp_path / "checkpoint.pt")
    data = bytearray((tmp_path / "checkpoint.pt").read_bytes())
    start = bytes(data).index(weights[1000:1004].numpy().tobytes())  # inside the stored tensor
    data[start] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"Cannot read checkpoint .*flipped\.pt: it is damaged \(its part "
                                         r"\S+ fails its checksum"):
        load_checkpoint(tmp_path / "flipped.pt")
    assert torch.equal(load_checkpoint(tmp_path)["model"]["w"], weights)
    if hasattr(torch.serialization, "set_crc32_options"):  # torch >= 2.5: files saved without checksums load
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(load_checkpoint(tmp_path), tmp_path / "unchecked.pt")
        finally:
            torch.serialization.set_crc32_options(True)
        assert torch.equal(load_checkpoint(tmp_path / "unchecked.pt")["model"]["w"], weights)
    with pytest.raises(ValueError, match=r"weights in .*checkpoint\.pt do not fit the model: .*Missing key"):
        load_model(tmp_path)  # weights of something else: the file is named


def test_a_non_finite_loss_stops_training_before_it_reaches_the_weights(train_set, texture_source, tmp_path):
    from memseg_tutorial.training import TrainingDiverged

    trainer = make_trainer(tiny_config(steps=3), train_set, texture_source, run_dir=tmp_path)
    real_criterion = trainer.criterion

    def nan_from_step_2(logits, masks):
        total, parts = real_criterion(logits, masks)
        return (total * float("nan") if trainer.step == 1 else total), parts

    trainer.criterion = nan_from_step_2
    trainer.fit(steps=1)
    after_one_step = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 2 .*lower learning rate"):
        trainer.fit()
    assert trainer.step == 1 and len(trainer.history) == 1
    for name, value in trainer.model.named_parameters():  # no optimiser step with a NaN gradient
        assert torch.equal(value, after_one_step[name]), name
    assert load_checkpoint(tmp_path)["step"] == 1  # the last good checkpoint stays


def test_checkpoints_of_older_versions_with_paths_and_0_1_flags_still_load(tmp_path):
    import pathlib

    from memseg_tutorial.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    from memseg_tutorial.config import Config

    config = tiny_config().to_dict()
    config.update(backbone_weights=pathlib.PosixPath("/weights/resnet18.pth"), per_image_standardization=1)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 3, "config": config,
                "model": {}}, tmp_path / "checkpoint.pt")
    loaded = Config.from_dict(load_checkpoint(tmp_path)["config"])
    assert loaded.backbone_weights == "/weights/resnet18.pth" and loaded.per_image_standardization is True
    config.update(backbone_weights="none", lr="fast")
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 3, "config": config,
                "model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"settings stored in .*checkpoint.pt are not valid here: lr must be"):
        load_checkpoint(tmp_path)


def test_torch_load_problems_are_said_in_a_few_words():
    import pickle

    from memseg_tutorial.checkpoint import torch_load_problem

    truncated = "it is empty, truncated, or not a file written by torch.save"
    assert torch_load_problem(EOFError()) == truncated
    assert torch_load_problem(pickle.UnpicklingError("invalid load key, 'h'.")) == truncated
    assert torch_load_problem(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding "
                                           "central directory")) == truncated
    assert torch_load_problem(RuntimeError("[enforce fail at inline_container.cc:180] . file in archive is not in a "
                                           "subdirectory: x.npy")) == truncated  # a zip, not torch's
    assert torch_load_problem(PermissionError(13, "Permission denied")) == "Permission denied"
    assert torch_load_problem(pickle.UnpicklingError(
        "Weights only load failed.\n\x1b[1mWeightsUnpickler error: Unsupported global: GLOBAL "
        "torchvision.models.resnet.ResNet was not an allowed global by default.\x1b[0m")).startswith(
        "it holds Python objects (torchvision.models.resnet.ResNet)")


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimizer_gets_the_configured_weight_decay_and_only_trainable_parameters(optimizer):
    """config.weight_decay (5e-4 in both presets) must reach the optimiser: torch's own defaults
    (AdamW 0.01, SGD 0) would otherwise apply silently. Frozen parameters stay out."""
    from memseg_tutorial.training import build_optimizer

    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    optimizer = build_optimizer(model, tiny_config(optimizer=optimizer, lr=2e-3, weight_decay=1e-3))
    (group,) = optimizer.param_groups
    assert (group["lr"], group["weight_decay"]) == (2e-3, 1e-3)
    assert len(group["params"]) == 1 and group["params"][0] is model.weight


def test_each_optimizer_step_uses_that_steps_learning_rate(train_set, texture_source):
    """The schedule steps AFTER the optimiser: step k must update the weights with lr_factor(k).
    Stepping it first trains step k at step k+1's rate (the warm-up loses its first value)
    while the history still logs the right numbers."""
    from memseg_tutorial.training import learning_rates

    config = tiny_config(steps=4, warmup_fraction=0.5, schedule="cosine")  # factors 0.5, 1, 1, 0.5
    trainer = make_trainer(config, train_set, texture_source)
    used = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.build_memory_bank()
    for step in range(2):
        trainer.train_step(trainer.batch(step))
    np.testing.assert_allclose(used, learning_rates(config)[:2], rtol=1e-12)
    assert used[0] == pytest.approx(0.5 * config.lr)


def test_checkpoints_are_written_every_checkpoint_every_steps(train_set, texture_source, tmp_path, monkeypatch):
    """checkpoint_every = k saves after every k-th step and at the end, so a crash loses fewer
    than k steps (a run that saved only at the first interval would lose all the rest)."""
    trainer = make_trainer(tiny_config(steps=5, checkpoint_every=2), train_set, texture_source, run_dir=tmp_path)
    saved = []
    monkeypatch.setattr(trainer, "save", lambda path=None: saved.append(trainer.step))  # no 200 MB files
    trainer.fit()
    assert saved == [2, 4, 5]  # every 2nd step, then the end (5 is no multiple of 2)


def test_the_trainer_keeps_layer1_to_layer3_frozen_unless_asked(train_set, texture_source):
    """Lesson 04: layer1..3 are frozen (the bank compares their features), stem and layer4 train;
    config.train_encoder=True (random weights only) trains them too. The optimiser must see
    exactly the trainable parameters."""
    from memseg_tutorial.model import FROZEN_LAYERS

    for train_encoder in (False, True):
        trainer = make_trainer(tiny_config(train_encoder=train_encoder), train_set, texture_source)
        encoder = trainer.model.encoder
        for name in FROZEN_LAYERS:
            assert all(p.requires_grad == train_encoder for p in getattr(encoder, name).parameters()), name
        assert all(p.requires_grad for p in encoder.layer4.parameters())
        in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert in_optimizer == {id(p) for p in trainer.model.parameters() if p.requires_grad}
