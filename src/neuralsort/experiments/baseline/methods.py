"""The baselines' own pieces: principal components (``knn-pca``), the autoencoder (``knn-ae``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import UserError

__all__ = ["pca_project", "AutoEncoder", "Reconstruction"]


def pca_project(train: Tensor, others: list[Tensor], dim: int) -> tuple[Tensor, list[Tensor]]:
    """Project onto the top ``dim`` principal components of ``train`` (rows are samples)."""
    if not 1 <= dim <= train.shape[1]:
        raise UserError(f"--code_dim must be in 1..{train.shape[1]}, got {dim}")
    x = train.double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    comps = vecs[:, -dim:].flip(1)
    proj = (xc @ comps).float()
    return proj, [((o.double() - mean) @ comps).float() for o in others]


class AutoEncoder(nn.Module):
    """Fully-connected autoencoder ``D -> 500 -> 250 -> code -> 250 -> 500 -> D``."""

    def __init__(self, in_dim: int, code_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, 250),
            nn.ReLU(inplace=True),
            nn.Linear(250, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, 250),
            nn.ReLU(inplace=True),
            nn.Linear(250, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, in_dim),
        )
        self.embedding_dim = code_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1))


class Reconstruction(nn.Module):
    """The autoencoder's training forward (code, then reconstruction) for DDP to wrap."""

    def __init__(self, ae: AutoEncoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: Tensor) -> Tensor:
        return self.ae.decoder(self.ae.encoder(x.flatten(1)))
