"""Section 5 of the paper: exact kernel interpolation, feature maps and the minimum norm.

* :mod:`.functions`: Gaussian, Laplacian, polynomial and linear kernels; the default bandwidth.
* :mod:`.solve`: the blocked kernel matrix, the in-place float32 Cholesky, float64 accuracy by
  preconditioned conjugate gradients with kernel products recomputed from the data.
* :mod:`.budget`: memory and time estimates, the guard that names the largest n that fits.
* :mod:`.features`: random convolutional and Gabor feature maps.
* :mod:`.experiment`: ``rethink kernel`` (data -> features -> exact fit -> errors, norm).
* :mod:`.noise`: the RKHS norm of the interpolant as label noise grows.
* :mod:`.linear_sgd`: ``rethink linear-sgd``, SGD from zero converges to the pseudo-inverse.
"""

from .experiment import KernelConfig, KernelResult, run_kernel
from .functions import KERNELS, Kernel, default_bandwidth
from .linear_sgd import LinearSGDConfig, linear_sgd
from .noise import norm_vs_noise
from .solve import KernelData, cho_solve, cholesky_, interpolate, kernel_matmul

__all__ = [
    "KERNELS",
    "Kernel",
    "KernelConfig",
    "KernelData",
    "KernelResult",
    "LinearSGDConfig",
    "cho_solve",
    "cholesky_",
    "default_bandwidth",
    "interpolate",
    "kernel_matmul",
    "linear_sgd",
    "norm_vs_noise",
    "run_kernel",
]
