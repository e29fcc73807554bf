"""Where data and runs live, resolved in the package (not from the notebook's working directory)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MEMSEG_DATA_DIR"
RUNS_ENV = "MEMSEG_RUNS_DIR"
SHARED_DATA_ENV = "MEMSEG_SHARED_DATA"


def project_root() -> Path | None:
    """The repository checkout that holds this package, or None when installed elsewhere (Colab)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return None


def _base() -> Path:
    return project_root() or Path.cwd()


def data_dir() -> Path:
    """``$MEMSEG_DATA_DIR``, else ``<repo>/data``, else ``./data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else _base() / "data"


def runs_dir() -> Path:
    """``$MEMSEG_RUNS_DIR``, else ``<repo>/runs``, else ``./runs``."""
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser() if env else _base() / "runs"


def shared_data_dir() -> Path | None:
    """The benchmark data beside the checkout (``../shared/data``), if present."""
    env = os.environ.get(SHARED_DATA_ENV)
    candidates = [Path(env).expanduser()] if env else []
    root = project_root()
    if root is not None:
        candidates.append(root.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None
