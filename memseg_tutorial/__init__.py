"""memseg_tutorial: MemSeg built step by step, the code behind the notebooks."""

from .config import Config, get_config
from .device import get_device

__version__ = "0.1.0"
__all__ = ["Config", "get_config", "get_device", "__version__"]
