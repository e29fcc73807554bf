"""The one call at the top of every lesson (preset, device, seeds and figure settings), and what
the lessons' exercise checks share."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import matplotlib
import numpy as np
import torch

from .config import Config, get_config
from .device import get_device
from .seeding import seed_everything

REPO_URL = "https://github.com/memseg-tutorial/memseg-tutorial"


def setup_notebook(preset: str | None = None, **overrides) -> Config:
    """Pick the config (``MEMSEG_PRESET`` or ``quick`` by default in notebooks), seed, and report.

    Lessons default to ``quick`` so that they run on a laptop CPU; pass ``preset="full"`` (or set
    ``MEMSEG_PRESET=full``) on a GPU runtime for the paper's numbers.
    """
    import os

    check_numpy_is_current()
    config = get_config(preset or os.environ.get("MEMSEG_PRESET") or "quick", **overrides)
    seed_everything(config.seed)
    matplotlib.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "image.interpolation": "nearest"})
    device = get_device(config)
    print(f"memseg_tutorial preset: {config.preset}  ({config.summary()})")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"device: {device}" + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else "")
    )
    return config


def check_numpy_is_current() -> None:
    """Stop with a clear message when the numpy in memory is not the one on disk.

    On Colab the setup cell's install downgrades numpy (imgaug 0.4.0 needs numpy < 2) while the runtime
    may already hold numpy 2 in memory; imgaug would then fail later with an obscure error.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("numpy")
    except PackageNotFoundError:  # numpy not installed as a distribution (e.g. a source tree): nothing to compare
        return
    if installed != np.__version__:
        raise RuntimeError(
            f"numpy {np.__version__} is loaded but the install put numpy {installed} on disk: restart the runtime "
            "(Colab: Runtime > Restart session) and run this cell again"
        )


@contextmanager
def refusing(function: Callable, namespace: dict, why: str) -> Iterator[None]:
    """While the block runs, ``function`` raises ``AssertionError(why)`` under every name it has in
    the package's modules and in ``namespace`` (the notebook's ``globals()``).

    An exercise's check runs the student's function inside it, so that the answer cannot be the
    package's own function called under another name; afterwards every name is put back.
    """
    def refuse(*args, **kwargs):
        raise AssertionError(why)

    places = [vars(module) for name, module in list(sys.modules.items())
              if name == "memseg_tutorial" or name.startswith("memseg_tutorial.")]
    names = [(place, key) for place in [*places, namespace] for key, value in list(place.items())
             if value is function]
    for place, key in names:
        place[key] = refuse
    try:
        yield
    finally:
        for place, key in names:
            place[key] = function

