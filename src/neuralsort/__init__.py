"""neuralsort: differentiable sorting for PyTorch.

NeuralSort (Grover, Wang, Zweig & Ermon, ICLR 2019) relaxes the permutation matrix that sorts a
vector of scores into a unimodal row-stochastic matrix; its Plackett-Luce form makes it stochastic.

Convention: ``P = neural_sort(x)`` has rows indexed by sorted position and columns by input element,
so ``P @ x`` sorts ``x``; ``descending=False`` by default, like :func:`torch.sort`.
"""

from . import backends, knn, losses, nn
from .knn import dknn_loss, dknn_topk
from .losses import ndcg_loss, spearman_loss, topk_cross_entropy
from .nn import DKNN, NeuralSort, SoftTopK
from .ops import (
    neural_sort,
    permutation_matrix,
    sample_gumbel,
    soft_quantile,
    soft_rank,
    soft_sort,
    soft_topk,
    soft_topk_mask,
    stochastic_neural_sort,
)
from .plackett_luce import PlackettLuce
from .sinkhorn import gumbel_sinkhorn, sinkhorn
from .softsort import softsort

__version__ = "0.1.0"

__all__ = [
    "neural_sort",
    "soft_sort",
    "soft_rank",
    "soft_topk",
    "soft_topk_mask",
    "soft_quantile",
    "stochastic_neural_sort",
    "permutation_matrix",
    "sample_gumbel",
    "PlackettLuce",
    "sinkhorn",
    "gumbel_sinkhorn",
    "softsort",
    "NeuralSort",
    "SoftTopK",
    "DKNN",
    "dknn_topk",
    "dknn_loss",
    "spearman_loss",
    "ndcg_loss",
    "topk_cross_entropy",
    "losses",
    "backends",
    "knn",
    "nn",
    "__version__",
]
