"""The one place that decides where tensors live."""

from __future__ import annotations

import torch

from .config import Config


def get_device(config: Config | str | None = None) -> torch.device:
    """CUDA when present and allowed, else CPU.

    ``config`` may be a :class:`Config` (its ``device`` field), a string (``"auto"``, ``"cpu"``,
    ``"cuda"``) or None (``"auto"``). Asking for CUDA on a machine without it is an error rather
    than a silent fall-back, so a Colab user notices a CPU runtime.
    """
    wanted = config.device if isinstance(config, Config) else (config or "auto")
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device='cuda' was asked for but no CUDA GPU is visible. On Colab choose "
                "Runtime > Change runtime type > GPU, or use device='auto'/'cpu'."
            )
        return torch.device("cuda")
    if wanted != "auto":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {wanted!r}.")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checked_device(device: torch.device | str | None) -> torch.device:
    """None/"auto", "cpu", "cuda" or "cuda:1" (or a torch.device) -> a device, through
    :func:`get_device` so that CUDA without a GPU gives its clear message rather than torch's
    driver error at the first copy, and a misspelt name says what is accepted."""
    if device is None or device == "auto":
        return get_device("auto")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from None
    if parsed.type == "cuda":
        get_device("cuda")  # raises when no GPU is visible
    return parsed


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are, so its inputs can follow it (CPU for a weightless module)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
