"""rethink: randomization tests of generalization (Zhang et al., ICLR 2017)."""

from .analysis import load
from .api import RunResult, run
from .spec import RunSpec
from .train.engine import speed_settings
from .version import __version__

__all__ = ["RunResult", "RunSpec", "load", "run", "speed_settings", "__version__"]
