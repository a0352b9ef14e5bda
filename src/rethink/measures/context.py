"""What a measure sees: the trained model, its initialization, the training set and the run's
evaluations, with the shared pieces (one forward pass, the folded layers, their norms, the margins)
computed once and cached."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rethink.errors import UserError
from rethink.measures.layers import Layer, extract, recording_input_shapes, spectral_norm


@dataclass
class Context:
    """``model`` (trained, eval mode), ``init`` (same architecture at initialization, or None), ``x``
    (training inputs, preprocessed as trained), ``y`` (the run's training labels: the randomized
    ones), ``evals`` (the run's evaluation rows: dicts with step, train_loss, ...), ``percentile``
    (of the margins that gives gamma, MEASURES.md sec. 1; default 10)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    init: nn.Module | None = None
    evals: list[dict] = field(default_factory=list)
    percentile: float = 10.0
    batch_size: int = 1024

    @functools.cached_property
    def _forward(self) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
        """The logits on the training set (float64, CPU) and each conv's input shape, in one pass."""
        param = next(iter(self.model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        self.model.eval()
        outs = []
        with recording_input_shapes(self.model) as shapes, torch.inference_mode():
            for start in range(0, len(self.x), self.batch_size):
                outs.append(self.model(self.x[start : start + self.batch_size].to(device)).double().cpu())
        return torch.cat(outs), dict(shapes)

    @property
    def logits(self) -> torch.Tensor:
        return self._forward[0]

    @functools.cached_property
    def margins(self) -> np.ndarray:
        """margin_i = f(x_i)[y_i] - max_{j != y_i} f(x_i)[j] over the training set (MEASURES.md notation)."""
        logits = self.logits
        y = torch.as_tensor(self.y).long().cpu()
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], -math.inf)
        return (true - others.max(dim=1).values).numpy()

    @functools.cached_property
    def margin(self) -> float:
        """gamma: the ``percentile``-th percentile of the training margins (MEASURES.md sec. 1)."""
        return float(np.percentile(self.margins, self.percentile))

    @functools.cached_property
    def layers(self) -> list[Layer]:
        """The model's layers W_1..W_d with batch norm folded (raises UnsupportedLayer)."""
        extract(self.model)  # fails fast on an unsupported layer, before the forward pass
        return extract(self.model, self._forward[1])

    @functools.cached_property
    def init_layers(self) -> list[Layer] | None:
        """The initialization's layers W_i^0, folded the same way; None without ``init``."""
        if self.init is None:
            return None
        init = extract(self.init, self._forward[1])
        if [(a.path, a.weight.shape) for a in init] != [(a.path, a.weight.shape) for a in self.layers]:
            raise UserError("init does not have the model's architecture; pass the same network at initialization")
        return init

    @functools.cached_property
    def spectral_norms(self) -> list[float]:
        """||W_i||_2 of every layer (operator norms for convolutions)."""
        return [spectral_norm(layer) for layer in self.layers]

    @functools.cached_property
    def init_spectral_distances(self) -> list[float] | None:
        """||W_i - W_i^0||_2 of every layer; None without ``init``."""
        if self.init_layers is None:
            return None
        return [spectral_norm(a.with_weight(a.weight - b.weight)) for a, b in zip(self.layers, self.init_layers)]
