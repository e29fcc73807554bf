"""One seed for every random draw: make_rng's keys name independent streams, and deterministic
mode is usable on a GPU."""

from __future__ import annotations

import os

from memseg_tutorial.seeding import make_rng, use_deterministic_algorithms


def _draws(*key: int) -> tuple[int, ...]:
    return tuple(make_rng(*key).integers(0, 2**62, 4).tolist())


def test_make_rng_keys_name_distinct_reproducible_streams():
    """Synthetic sample i of seed s is drawn from make_rng(s, i) (lessons 01-03) and the sample
    data from make_rng(seed, category, stream, i): sample 1 of seed 0 must not be sample 0 of
    seed 1, nor (category 1, stream 2) be (category 2, stream 1)."""
    assert _draws(42, 3) == _draws(42, 3)  # the same key, in any process: the same stream
    keys = [(0, 1), (1, 0), (42, 1, 2), (42, 2, 1), (42, 3), (43, 2), (42,)]
    assert len({_draws(*key) for key in keys}) == len(keys)


def test_deterministic_mode_sets_the_cublas_workspace_and_keeps_a_users_choice(monkeypatch,
                                                                                restore_determinism):
    """torch refuses cuBLAS matrix products in deterministic mode unless CUBLAS_WORKSPACE_CONFIG
    is set: a deterministic GPU run would stop at its first step."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset")  # so that teardown restores the real state,
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # set or not, after the call below sets it
    use_deterministic_algorithms()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # the larger of torch's two documented values
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice, not the default
    use_deterministic_algorithms()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_trailing_zero_keys_are_the_same_stream_as_the_docstring_warns():
    """numpy's SeedSequence drops trailing zeros; if a numpy release changed that, every stored
    seed-dependent result of the lessons would move, and this is where it would show first."""
    assert _draws(42, 3) == _draws(42, 3, 0) and _draws(7) == _draws(7, 0)
