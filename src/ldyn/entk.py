"""The empirical NTK of the logits, formed explicitly: K(χ_o, χ_u) = ∇_θ z(χ_o) ∇_θ z(χ_u)ᵀ (paper §3.1).

For small models only (a tiny LM, a classifier): the Jacobians are (positions × V × parameters). This is the slow,
obviously correct twin of the matrix-free path in `akg.py`, and the instrument behind ‖K‖ between classes.
For LLMs the paper's proxies LBK and SignDelta (App. C, Eq. 26) are computed from observed changes instead
(`akg.change_statistics`).
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ldyn.data.tokenize import IGNORE, Batch
from ldyn.logprobs import aligned_labels, response_logits


def logit_jacobian(model, theta: dict, batch: Batch, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """∂z/∂θ at every scored position of the batch: (positions, V or len(vocab), parameters), in batch order."""
    mask = aligned_labels(batch) != IGNORE

    def scored_logits(params):
        logits, _ = response_logits(model, batch, params)
        z = logits[mask]
        return z if vocab is None else z[:, vocab]

    with sdpa_kernel(SDPBackend.MATH):
        jac = torch.func.jacrev(scored_logits)(theta)
    return torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=-1)


def entk(model, theta: dict, observed: Batch, update: Batch, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """K[m, l] = J_o[m] J_u[l]ᵀ, the V×V block for observed position m and update position l: (M, L, V, V)."""
    j_o = logit_jacobian(model, theta, observed, vocab)
    j_u = logit_jacobian(model, theta, update, vocab)
    return torch.einsum("mvp,lwp->mlvw", j_o, j_u)


def predicted_logit_change(kernel: torch.Tensor, grad: torch.Tensor, eta: float) -> torch.Tensor:
    """Δz_o[m] = −η Σ_l K[m, l] G[l] (first order, SGD): kernel (M, L, V, V), grad (L, V) -> (M, V)."""
    return -eta * torch.einsum("mlvw,lw->mv", kernel, grad)


def kernel_norm(kernel: torch.Tensor) -> torch.Tensor:
    """‖K[m, l]‖_F for every pair of positions: (M, L, V, V) -> (M, L)."""
    return torch.linalg.matrix_norm(kernel, ord="fro")
