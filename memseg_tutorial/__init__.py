"""memseg_tutorial: MemSeg built step by step, the code behind the notebooks."""

from .config import Config, get_config

__version__ = "0.1.0"
__all__ = ["Config", "get_config", "get_device", "__version__"]


def __getattr__(name: str):
    # get_device needs torch, and importing torch here would fix its thread settings before the
    # command line can choose them (cli.main sets OMP_WAIT_POLICY); `--help` is also seconds faster.
    if name == "get_device":
        from .device import get_device

        return get_device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "get_device"})
