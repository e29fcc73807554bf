"""Memory bank: vectorised selection == plain loop reference, errors, buffers."""

from __future__ import annotations

import pytest
import torch

from memseg_tutorial.model import MemoryBank, level_distances

SHAPES = [(64, 8, 8), (128, 4, 4), (256, 2, 2)]  # layer1..3 of a 32 px input (tiny and fast)


def loop_reference(features, memory):
    """One image, one memory sample at a time: the definition, written as plainly as possible."""
    indices, distances, differences = [], [], [[] for _ in features]
    for b in range(features[0].shape[0]):
        row = []
        for n in range(memory[0].shape[0]):
            total = 0.0
            for f, m in zip(features, memory, strict=True):
                total = total + ((m[n] - f[b]) ** 2).mean()
            row.append(total)
        row = torch.stack(row)
        best = int(torch.argmin(row))
        indices.append(best)
        distances.append(row)
        for level, (f, m) in enumerate(zip(features, memory, strict=True)):
            differences[level].append((m[best] - f[b]) ** 2)
    return (
        torch.tensor(indices),
        torch.stack(distances),
        [torch.stack(d) for d in differences],
    )


def random_levels(generator, count, scale=1.0, offset=0.0):
    return [
        torch.randn(count, *shape, generator=generator) * scale + offset for shape in SHAPES
    ]


def make_bank(memory):
    bank = MemoryBank()
    bank.store(memory)
    return bank


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_loop_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    memory = random_levels(generator, 10, offset=3.0)  # a large common offset: cancellation test
    # Inputs close to (but not equal to) memory samples, plus unrelated ones.
    near = [m[[7, 2, 2, 9]] + 0.3 * torch.randn(4, *m.shape[1:], generator=generator) for m in memory]
    far = random_levels(generator, 4, scale=1.5, offset=3.0)
    features = [torch.cat([a, b]) for a, b in zip(near, far, strict=True)]

    bank = make_bank(memory)
    ci, di, indices = bank(features)
    ref_indices, ref_distances, ref_di = loop_reference(features, memory)

    assert torch.equal(indices, ref_indices)
    assert indices[:4].tolist() == [7, 2, 2, 9]
    torch.testing.assert_close(bank.distances(features), ref_distances, rtol=1e-5, atol=1e-5)
    for level, (d, r, f) in enumerate(zip(di, ref_di, features, strict=True)):
        torch.testing.assert_close(d, r, rtol=0, atol=1e-5, msg=f"DI level {level + 1}")
        assert torch.equal(ci[level][:, : f.shape[1]], f)
        assert torch.equal(ci[level][:, f.shape[1] :], d)
        assert ci[level].shape[1] == 2 * f.shape[1]


def test_differences_carry_the_gradient_of_the_plain_formula():
    """The stem trains through DI, so the in-place DI must give the gradient of (m - f)^2."""
    generator = torch.Generator().manual_seed(3)
    memory = random_levels(generator, 5)
    features = [f.requires_grad_() for f in random_levels(generator, 2, offset=0.5)]
    bank = make_bank(memory)
    _, di, indices = bank(features)
    weights = [torch.randn(d.shape, generator=generator) for d in di]
    got = torch.autograd.grad(sum((d * w).sum() for d, w in zip(di, weights, strict=True)), features)
    for m, f, w, g in zip(memory, features, weights, got, strict=True):
        torch.testing.assert_close(g, -2.0 * (m[indices] - f.detach()) * w)


def test_level_distances_is_mean_squared_difference():
    generator = torch.Generator().manual_seed(1)
    x, m = torch.randn(3, 5, 4, 4, generator=generator), torch.randn(6, 5, 4, 4, generator=generator)
    expected = ((x[:, None] - m[None]) ** 2).mean(dim=(2, 3, 4))
    torch.testing.assert_close(level_distances(x, m), expected, rtol=1e-5, atol=1e-6)


def test_identical_input_selects_itself_with_zero_difference():
    generator = torch.Generator().manual_seed(2)
    memory = random_levels(generator, 5)
    bank = make_bank(memory)
    features = [m[[4, 0]] for m in memory]
    _, di, indices = bank(features)
    assert indices.tolist() == [4, 0]
    assert all(float(d.abs().max()) == 0.0 for d in di)


def test_empty_bank_raises_clear_error():
    bank = MemoryBank()
    assert bank.is_empty
    generator = torch.Generator().manual_seed(3)
    with pytest.raises(RuntimeError, match="build_memory_bank"):
        bank(random_levels(generator, 1))


def test_size_mismatch_raises_clear_error():
    generator = torch.Generator().manual_seed(4)
    bank = make_bank(random_levels(generator, 2))
    other = [torch.randn(1, c, 2 * h, 2 * w) for c, h, w in SHAPES]
    with pytest.raises(ValueError, match="another image size"):
        bank(other)


def test_bank_lives_in_buffers_and_loads_into_empty_bank():
    generator = torch.Generator().manual_seed(5)
    bank = make_bank(random_levels(generator, 3))
    state = bank.state_dict()
    assert set(state) == {"level1", "level2", "level3"}
    fresh = MemoryBank()
    fresh.load_state_dict(state)
    assert len(fresh) == 3
    for a, b in zip(fresh.levels, bank.levels, strict=True):
        assert torch.equal(a, b)
    assert fresh.double().level2.dtype == torch.float64  # buffers follow .to()/.double()


def test_cache_follows_a_new_bank():
    generator = torch.Generator().manual_seed(7)
    first, second = random_levels(generator, 4), random_levels(generator, 4)
    bank = make_bank(first)
    features = [s[[3, 1]] for s in second]
    bank(features)  # fills the cache with the first bank
    bank.store(second)
    assert bank.nearest(features).tolist() == [3, 1]
    state = make_bank(first).state_dict()
    bank.load_state_dict(state)
    torch.testing.assert_close(bank.distances(features), loop_reference(features, first)[1])
    with torch.no_grad():
        bank.level1.add_(1.0)  # in-place change of a buffer also invalidates the cache
    shifted = [first[0] + 1.0, first[1], first[2]]
    torch.testing.assert_close(bank.distances(features), loop_reference(features, shifted)[1])


@pytest.mark.filterwarnings("ignore:ResNet18 encoder with RANDOM weights")
def test_vectorised_matches_loop_on_encoder_features_batch8_memory30():
    from memseg_tutorial.model import ResNet18Encoder

    torch.manual_seed(6)
    encoder = ResNet18Encoder("none").eval()
    with torch.no_grad():
        base = torch.rand(1, 3, 64, 64)
        memory = encoder.memory_features(base + 0.2 * torch.randn(30, 3, 64, 64))
        features = encoder.memory_features(base + 0.2 * torch.randn(8, 3, 64, 64))
    bank = make_bank(memory)
    _, di, indices = bank(features)
    ref_indices, _, ref_di = loop_reference(features, memory)
    assert torch.equal(indices, ref_indices)
    for d, r in zip(di, ref_di, strict=True):
        torch.testing.assert_close(d, r, rtol=0, atol=1e-5)
