"""Classification head.

OURS (reconstruction): the centre-pixel token of each stream (spectral, optical, active: the pixel
being classified) concatenated with the mean over all tokens (context), then LayerNorm, dropout
and one Linear layer. Trained with cross-entropy (CONFIRMED loss) by the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Dropout


class ClassifierHead(nn.Module):
    centres: Tensor  # buffer: sequence index of each stream's centre-pixel token

    def __init__(
        self, dim: int, num_classes: int, centre_indices: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        self.register_buffer(
            "centres", torch.tensor(centre_indices, dtype=torch.long), persistent=False
        )
        features = dim * (len(centre_indices) + 1)
        self.norm = nn.LayerNorm(features)
        self.drop = Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, L, D] -> logits [B, num_classes]."""
        centres = tokens.index_select(1, self.centres).flatten(1)
        pooled = torch.cat([centres, tokens.mean(dim=1)], dim=1)
        out: Tensor = self.fc(self.drop(self.norm(pooled)))
        return out
