"""rethink: randomization tests of generalization (Zhang et al., ICLR 2017)."""

__version__ = "0.1.0"

from .api import RunResult, run  # noqa: E402
from .spec import RunSpec  # noqa: E402

__all__ = ["RunResult", "RunSpec", "run", "__version__"]
