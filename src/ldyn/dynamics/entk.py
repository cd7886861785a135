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
from ldyn.logprobs.padded import aligned_labels, response_logits


def logit_jacobian(model, theta: dict, batch: Batch, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """∂z/∂θ at every scored position of the batch: (positions, V or len(vocab), parameters), in batch order."""
    mask = aligned_labels(batch) != IGNORE

    def scored_logits(params):
        logits, _ = response_logits(model, batch, params)
        z = logits[mask]
        return z if vocab is None else z[:, vocab]

    with sdpa_kernel(SDPBackend.MATH):
        jac = torch.func.jacrev(scored_logits)(theta)
    return flatten_jacobian(jac, 2)


def classifier_jacobian(model, theta: dict, inputs: torch.Tensor) -> torch.Tensor:
    """∂z/∂θ for each input of a classifier, one example at a time under vmap: (N, V, parameters)."""

    def logits(params, x):
        return torch.func.functional_call(model, params, (x[None],))[0]

    return flatten_jacobian(torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))(theta, inputs), 2)


def flatten_jacobian(jac: dict[str, torch.Tensor], lead: int) -> torch.Tensor:
    """Concatenate per-parameter Jacobians, keeping the first `lead` dimensions: (..., parameters)."""
    return torch.cat([j.reshape(*j.shape[:lead], -1) for j in jac.values()], dim=-1)


def kernel_from_jacobians(j_o: torch.Tensor, j_u: torch.Tensor) -> torch.Tensor:
    """K[m, l] = J_o[m] J_u[l]ᵀ from Jacobians (M, V, P) and (L, V, P): (M, L, V, V)."""
    return torch.einsum("mvp,lwp->mlvw", j_o, j_u)


def entk(model, theta: dict, observed: Batch, update: Batch, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """K[m, l] = J_o[m] J_u[l]ᵀ, the V×V block for observed position m and update position l: (M, L, V, V)."""
    return kernel_from_jacobians(
        logit_jacobian(model, theta, observed, vocab), logit_jacobian(model, theta, update, vocab)
    )


def predicted_logit_change(
    kernel: torch.Tensor, grad: torch.Tensor, eta: float, per_update: bool = False
) -> torch.Tensor:
    """Δz_o[m] = −η Σ_l K[m, l] G[l] (first order, SGD): kernel (M, L, V, V), grad (L, V) -> (M, V).

    per_update=True keeps each update position's contribution apart: (M, L, V).
    """
    return -eta * torch.einsum("mlvw,lw->mlv" if per_update else "mlvw,lw->mv", kernel, grad)


def kernel_norm(kernel: torch.Tensor) -> torch.Tensor:
    """‖K[m, l]‖_F for every pair of positions: (M, L, V, V) -> (M, L)."""
    return torch.linalg.matrix_norm(kernel, ord="fro")
