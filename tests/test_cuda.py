"""The CUDA paths: GPU synthesis, mixed precision, CPU/GPU agreement, checkpoints across devices.

CI and most laptops have no GPU, so these skip there; run them on a CUDA machine (Colab) with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, make_trainer, straight_and_resumed, tiny_config

from memseg_tutorial.checkpoint import load_model
from memseg_tutorial.data import MVTecDataset
from memseg_tutorial.evaluation import evaluate
from memseg_tutorial.inference import Predictor
from memseg_tutorial.training import cuda_autocast_dtype, dataset_images, memory_map_indices

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_config(**overrides):
    return tiny_config(**{"device": "cuda", **overrides})


def skip_without_native(amp_dtype: str) -> None:
    """Skip a bfloat16 case on a GPU that would only emulate it (a T4)."""
    if amp_dtype == "bfloat16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16")


@pytest.fixture
def exact_fp32():
    """Plain fp32 convolutions and matrix products (no TF32), so CPU and GPU can be compared."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def assert_maps_agree(a: np.ndarray, b: np.ndarray) -> None:
    """CPU and GPU anomaly maps (one, or a stack) equal within 5e-3, but for at most one pixel in
    a thousand of each map.

    A model trained for 3 steps from random weights has logits of up to 1e7 (the spatial
    attention multiplies three channel means of squared differences), so its map is almost a
    step: where a logit crosses zero, float32's order of summation alone moves that pixel's
    probability by hundredths (H100: 1 of 139,264 pixels, by 0.006 to 0.024 with the CPU's
    thread count). A real disagreement (another memory item, a missed calibration) moves regions."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all()
    far = np.abs(a - b) > 5e-3
    per_map = far.reshape(-1, far.shape[-2] * far.shape[-1]).mean(axis=1)
    assert per_map.max() <= 1e-3, f"{far.sum()} of {far.size} pixels differ by more than 5e-3"


def test_gpu_synthesis_batches_live_on_the_gpu(train_set, texture_source):
    trainer = make_trainer(cuda_config(), train_set, texture_source)
    assert trainer.uses_gpu_synthesis
    assert (trainer.scaler is not None) == (cuda_autocast_dtype(trainer.config) == torch.float16)
    batch = trainer.batch(2)
    assert batch["image"].is_cuda and batch["mask"].is_cuda
    assert batch["image"].shape == (4, 3, 64, 64) and batch["label"].tolist() == [0, 0, 1, 1]
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["mask"][:2].sum() == 0 and (batch["mask"][2:].flatten(1).sum(1) > 0).all()
    assert torch.equal(trainer.batch(2)["image"], batch["image"])


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_mixed_precision_training_learns_without_overflow(train_set, texture_source, amp_dtype):
    skip_without_native(amp_dtype)
    config = cuda_config(steps=60, lr=3e-3, schedule="constant", amp_dtype=amp_dtype)
    trainer = make_trainer(config, train_set, texture_source)
    history = trainer.fit()
    losses = [r["loss"] for r in history]
    assert len(losses) == 60 and np.isfinite(losses).all(), losses  # float16 overflow gives NaN
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), losses
    assert all(p.is_cuda for p in trainer.model.parameters())
    buffers = [b for b in trainer.model.buffers() if b.is_floating_point()]
    assert all(torch.isfinite(b).all() for b in buffers)  # BatchNorm statistics too


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_resume_on_the_gpu_continues_exactly(train_set, texture_source, tmp_path, amp_dtype,
                                             restore_determinism):
    # Without config.deterministic a repeat of the same seeded float16 run already differed in
    # a fifth of the weights after 4 steps on an H100 (atomic adds in the backward pass), so
    # only the deterministic mode lets a lost optimizer, scheduler or scaler state show.
    skip_without_native(amp_dtype)
    config = cuda_config(steps=4, amp_dtype=amp_dtype, deterministic=True)
    straight, first, resumed = straight_and_resumed(config, train_set, texture_source, tmp_path)
    assert resumed.step == 2 and (resumed.scaler is not None) == (amp_dtype == "float16")
    if resumed.scaler is not None:
        assert resumed.scaler.state_dict() == first.scaler.state_dict()
    assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
    assert torch.equal(resumed.batch(2)["image"], straight.batch(2)["image"])
    resumed.fit()
    assert_same_weights(straight, resumed)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


@pytest.mark.parametrize("options", [{}, {"memory_map_weight": 0.5},
                                     {"memory_map_weight": 0.5, "half_scale_map": True}],
                         ids=["paper", "memory_map", "half_scale_map"])
def test_gpu_and_cpu_give_the_same_maps(train_set, texture_source, tmp_path, exact_fp32, options):
    config = cuda_config(steps=3, **options)
    trainer = make_trainer(config, train_set, texture_source, run_dir=tmp_path)
    trainer.fit()  # with a weight, this also calibrates the memory map on the GPU
    path = trainer.save()
    on_gpu, _, _ = load_model(path, "cuda")
    on_cpu, _, _ = load_model(path, "cpu")  # a checkpoint trained on a GPU opens without one
    assert torch.equal(on_cpu.memory_map_stats, trainer.model.memory_map_stats.cpu())
    images = dataset_images(train_set, range(4))
    with torch.no_grad():
        gpu_maps = on_gpu.anomaly_map(images.cuda()).float().cpu()
        cpu_maps = on_cpu.anomaly_map(images).float()
    assert gpu_maps.shape == cpu_maps.shape == (4, 64, 64)
    # cuDNN and the CPU sum in different orders; on the H200 the maps differed by up to 4e-4, and on
    # an H100 (half_scale_map) one pixel of 16,384 by 4.3e-3 in one of two runs: a 3-step model's map
    # is almost a step (see assert_maps_agree).
    assert_maps_agree(gpu_maps.numpy(), cpu_maps.numpy())
    if config.memory_map_weight > 0:  # the CPU, calibrating afresh on the same images, agrees
        assert on_gpu.memory_map_calibrated
        for scale in on_cpu.scales:
            scale.memory_map_stats.zero_()
        indices = memory_map_indices(len(train_set), trainer.config)
        on_cpu.calibrate_memory_map(dataset_images(train_set, indices))
        for cpu_scale, gpu_scale in zip(on_cpu.scales, on_gpu.scales, strict=True):
            torch.testing.assert_close(cpu_scale.memory_map_stats, gpu_scale.memory_map_stats.cpu(),
                                       rtol=1e-3, atol=1e-4)


def test_evaluation_and_inference_on_the_gpu(sample_root, train_set, texture_source, tmp_path,
                                             exact_fp32):
    trainer = make_trainer(cuda_config(steps=3), train_set, texture_source, run_dir=tmp_path)
    trainer.fit()
    path = trainer.save()
    test_set = MVTecDataset(sample_root, "surface", "test", image_size=64)
    model, config, _ = load_model(path, "cuda")
    gpu = evaluate(model, test_set, config)  # runs where the model is (lesson 09 relies on it)
    model, config, _ = load_model(path, "cpu")
    cpu = evaluate(model, test_set, config, device="cpu")
    assert_maps_agree(gpu.maps, cpu.maps)
    for name, value in cpu.metrics.items():
        assert gpu.metrics[name] == pytest.approx(value, abs=5e-3), name

    predictor = Predictor.from_checkpoint(path, "cuda")
    predictions = predictor.predict(test_set.image_paths[:2])
    assert [p.anomaly_map.shape for p in predictions] == [p.image.shape[:2] for p in predictions]
    assert predictor.speed(repeats=2) > 0
    assert config.device == "cuda"  # trained there, but this model was loaded on the CPU:
    on_cpu = Predictor(model, config)  # with no device given, it predicts where the model is
    assert on_cpu.device.type == "cpu" and not next(on_cpu.model.parameters()).is_cuda
    for gpu_prediction, cpu_prediction in zip(predictions, on_cpu.predict(test_set.image_paths[:2]), strict=True):
        assert_maps_agree(cpu_prediction.anomaly_map, gpu_prediction.anomaly_map)
