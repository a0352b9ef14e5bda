"""Finite-sample expressivity (Section 4 of the paper) and Rademacher estimates.

* :func:`construct`: Theorem 1's two-layer ReLU network with 2n + d weights for any targets on any
  n distinct points (K outputs: d + n + nK weights; depth k: the same function, width O(n/k)).
* :func:`verify`: evaluate the network itself in float64, in blocks, against its targets.
* :func:`rademacher`: mean of 1 - 2 * training error over draws of random +-1 labels.
"""

from .base import TwoLayerReLU
from .deep import DeepReLU, deepen
from .expressivity import Construction, Verification, construct, evaluate, one_hot, predict, verify

__all__ = [
    "construct",
    "verify",
    "evaluate",
    "predict",
    "one_hot",
    "deepen",
    "Construction",
    "Verification",
    "TwoLayerReLU",
    "DeepReLU",
]
