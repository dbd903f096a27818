"""Pieces both families share outside the SAM trunk: the linear projector."""

import torch.nn as nn


class LinearProjector(nn.Module):
    """Upstream ``MlpProjector(projector_type='linear')``: key ``projector.layers``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.layers(x)
