"""Classifier learning dynamics on handwritten digits (paper §4.1 and App. C.1): the V = 10 case of A·K·G.

A classifier is a language model whose response is a single token from a ten-word vocabulary, so the instrument
is the same one the LLM decomposition uses: G = ∇_z L from the registered SFT loss by autograd, K = J_o J_uᵀ
formed explicitly from per-example Jacobians (`entk.py`), and A applied analytically (`akg.log_prob_change`).

Training is plain minibatch SGD, so one step is exactly Δθ = −η Σ_u ∇_θ L_u. Every `record_every` updates a
callback records, before the step:
  - for every example u of the batch and every observed image o, Δ log π(·|x_o) = −η A_o K_ou G_u, the first-order
    effect of learning u alone at the step's learning rate; accumulated per (class of u, class of o) it is the
    paper's accumulated influence;
  - their sum over the batch against the observed change after the real step (they agree to first order);
  - ‖K(x_a, x_b)‖_F for every pair of observed images, averaged per pair of classes: which classes are coupled.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ldyn.dynamics.akg import log_prob_change
from ldyn.dynamics.entk import classifier_jacobian, kernel_from_jacobians, kernel_norm, predicted_logit_change
from ldyn.errors import LdynError, did_you_mean
from ldyn.toys import classification_loss
from ldyn.toys.digits_data import CLASSES, DigitsConfig, Split, load_images, split

# --- models ------------------------------------------------------------------------------------------------------


def make_model(name: str, side: int) -> nn.Module:
    """`mlp`: two 128-wide ReLU layers; `cnn`: the notebook's LeNet (5×5 kernels on 28×28, 3×3 on 8×8), tanh."""
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(side * side, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, CLASSES),
        )
    if name == "cnn":
        k = 5 if side >= 20 else 3
        features = nn.Sequential(
            nn.Conv2d(1, 6, k, padding=k // 2),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, k, padding=0 if k == 5 else 1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = features(torch.zeros(1, 1, side, side)).shape[-1]
        return nn.Sequential(
            features, nn.Linear(width, 60), nn.Tanh(), nn.Linear(60, 42), nn.Tanh(), nn.Linear(42, CLASSES)
        )
    raise LdynError(f"unknown model '{name}'{did_you_mean(name, ['mlp', 'cnn'])}")


# --- the decomposition, as a training callback --------------------------------------------------------------------


@dataclass
class StepDecomposition:
    logits: torch.Tensor  # (M, V) observed logits before the step
    per_example: torch.Tensor  # (M, B, V) Δ log π(·|x_o) from each update example's share of the step


def decompose_update(
    model: nn.Module, theta: dict, j_o: torch.Tensor, x_u: torch.Tensor, y_u: torch.Tensor, x_o: torch.Tensor, lr: float
) -> StepDecomposition:
    """−η A_o K_ou G_u for every observed image o and update example u of one SGD step on the batch's mean loss;
    j_o = ∂z/∂θ at the observed images."""
    z_u = torch.func.functional_call(model, theta, (x_u,)).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(classification_loss(z_u, y_u), z_u)  # G, (B, V), includes the 1/B
    kernel = kernel_from_jacobians(j_o, classifier_jacobian(model, theta, x_u))  # K_ou, (M, B, V, V)
    with torch.no_grad():
        logits = model(x_o)
    dz = predicted_logit_change(kernel, grad, lr, per_update=True)
    return StepDecomposition(logits, log_prob_change(logits[:, None, :], dz))


class DynamicsRecorder:
    """Before every k-th update: decompose it; after it: measure the observed change of the observed images."""

    def __init__(self, x_o: torch.Tensor, y_o: torch.Tensor, lr: float, every: int, kernel_every: int):
        self.x_o, self.y_o, self.lr, self.every, self.kernel_every = x_o, y_o, lr, every, kernel_every
        # [learnt class, observed class, label]: accumulated first-order Δ log π, and Δπ = π·Δ log π
        self.influence = torch.zeros(CLASSES, CLASSES, CLASSES, dtype=torch.float64)
        self.influence_prob = torch.zeros_like(self.influence)
        self.steps, self.kernel_steps, self.class_norms, self.agreement = [], [], [], []
        self.pending: StepDecomposition | None = None
        self.predicted, self.observed = [], []
        others = ~torch.eye(len(y_o), dtype=torch.bool)  # an image is not paired with itself
        self.pair_weights = torch.zeros(CLASSES, CLASSES, len(y_o), len(y_o), dtype=torch.float64)
        for a in range(CLASSES):
            for b in range(CLASSES):
                mask = (y_o[:, None] == a) & (y_o[None, :] == b) & others
                self.pair_weights[a, b] = mask / mask.sum()

    def before_update(self, step: int, model: nn.Module, x_u: torch.Tensor, y_u: torch.Tensor) -> None:
        decompose, kernel = step % self.every == 0, step % self.kernel_every == 0
        if not (decompose or kernel):
            return
        theta = {n: p.detach() for n, p in model.named_parameters()}
        j_o = classifier_jacobian(model, theta, self.x_o)
        if kernel:
            norms = kernel_norm(kernel_from_jacobians(j_o, j_o)).double()  # ‖K(x_o, x_o')‖_F, (M, M)
            self.class_norms.append(torch.einsum("abmn,mn->ab", self.pair_weights, norms))
            self.kernel_steps.append(step)
        if decompose:
            d = decompose_update(model, theta, j_o, x_u, y_u, self.x_o, self.lr)
            share = d.per_example.double()  # each example's share of the real step
            share_prob = share * d.logits.double().softmax(-1)[:, None, :]
            for c_u in range(CLASSES):
                chosen = y_u == c_u
                if chosen.any():
                    for c_o in range(CLASSES):
                        rows = self.y_o == c_o
                        self.influence[c_u, c_o] += share[rows][:, chosen].sum(1).mean(0)
                        self.influence_prob[c_u, c_o] += share_prob[rows][:, chosen].sum(1).mean(0)
            self.steps.append(step)
            self.pending = d

    def after_update(self, step: int, model: nn.Module) -> None:
        if self.pending is None:
            return
        with torch.no_grad():
            after = model(self.x_o)
        observed = (after.log_softmax(-1) - self.pending.logits.log_softmax(-1)).double()
        predicted = self.pending.per_example.sum(1).double()
        self.agreement.append(
            (
                step,
                float((predicted - observed).norm() / observed.norm()),
                float(torch.corrcoef(torch.stack([predicted.ravel(), observed.ravel()]))[0, 1]),
            )
        )
        if len(self.predicted) < 3:  # keep the first few steps for the scatter
            self.predicted.append(predicted)
            self.observed.append(observed)
        self.pending = None


def train(model: nn.Module, data: Split, cfg: DigitsConfig, callback: DynamicsRecorder) -> None:
    """Plain minibatch SGD on the registered SFT loss; the callback sees the model before and after each update."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = math.ceil(cfg.n_train / cfg.batch_size)
    step = 0
    with tqdm(total=cfg.epochs * per_epoch, desc=f"digits {cfg.model}", unit="update") as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(cfg.n_train, generator=generator)
            for lo in range(0, cfg.n_train, cfg.batch_size):
                index = order[lo : lo + cfg.batch_size]
                x, y = data.train_x[index], data.train_y[index]
                callback.before_update(step, model, x, y)
                optimizer.zero_grad()
                loss = classification_loss(model(x), y)
                loss.backward()
                optimizer.step()
                callback.after_update(step, model)
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")


# --- the result ----------------------------------------------------------------------------------------------------


@dataclass
class DigitsResult:
    model: str
    data: str
    n_train: int
    accuracy: float
    average_prediction: np.ndarray  # (10, 10) mean softmax on held-out images, rows = true class
    influence: np.ndarray  # (10, 10, 10) accumulated Δ log π: [learnt class, observed class, label]
    influence_prob: np.ndarray  # (10, 10, 10) the same for Δπ (first order: π·Δ log π)
    steps: np.ndarray  # (R,) decomposed updates
    kernel_steps: np.ndarray  # (S,) updates where ‖K‖ was measured
    class_norms: np.ndarray  # (S, 10, 10) mean ‖K‖_F between observed images of two classes
    agreement: np.ndarray  # (R, 3) step, relative error and correlation of predicted vs observed
    seconds: float
    predicted: np.ndarray = field(repr=False, default=None)  # first recorded steps, for the scatter
    observed: np.ndarray = field(repr=False, default=None)

    @property
    def median_relative_error(self) -> float:
        return float(np.median(self.agreement[:, 1]))

    @property
    def coupling(self) -> np.ndarray:
        """‖K_ab‖ / √(‖K_aa‖ ‖K_bb‖): the class-pair kernel norm with each class's own scale divided out."""
        diag = np.sqrt(np.einsum("raa->ra", self.class_norms))
        return self.class_norms / (diag[:, :, None] * diag[:, None, :])

    @property
    def influence_pull(self) -> np.ndarray:
        """[learnt, observed]: accumulated Δπ(y = learnt class | x_o) over the decomposed updates — how much
        probability learning examples of class a moved to label a on held-out images of class b. (In log space,
        `influence`, every unlikely label moves by many nats, which hides the pairing.)"""
        return np.einsum("aba->ab", self.influence_prob).copy()

    def top_pairs(self, what: str, k: int = 5) -> list[tuple[tuple[int, int], float]]:
        """The k most coupled unordered class pairs by one measure, symmetrised."""
        matrix = {
            "coupling": self.coupling.mean(0),
            "confusion": self.average_prediction,
            "influence": self.influence_pull,
        }[what]
        sym = (matrix + matrix.T) / 2
        pairs = [((a, b), float(sym[a, b])) for a in range(CLASSES) for b in range(a + 1, CLASSES)]
        return sorted(pairs, key=lambda p: -p[1])[:k]

    def summary_lines(self, cfg: DigitsConfig) -> list[str]:
        """What `ldyn toy digits` prints."""
        lines = [
            f"{cfg.model} on {cfg.data}: held-out accuracy {self.accuracy:.1%}, {self.seconds:.0f} s; "
            f"predicted vs observed per update: median relative error {self.median_relative_error:.1%}"
        ]
        for what in ("coupling", "confusion", "influence"):
            pairs = ", ".join(f"{a}↔{b} ({v:.2f})" for (a, b), v in self.top_pairs(what))
            lines.append(f"most coupled pairs by {what}: {pairs}")
        return lines


def run(cfg: DigitsConfig, out: str | Path | None = None) -> DigitsResult:
    """Train, record the dynamics, and (with `out`) write digits.png, agreement.png, dynamics.npz, summary.json."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.record_every < 1 or cfg.batch_size < 1 or cfg.epochs < 1:
        raise LdynError("record_every, batch_size and epochs must be at least 1")
    images, labels = load_images(cfg)
    make_model(cfg.model, images.shape[-1])  # fail on a bad name before splitting
    dtype = torch.float64 if cfg.float64 else torch.float32
    data = split(images.to(dtype), labels, cfg)
    model = make_model(cfg.model, images.shape[-1]).to(dtype)
    kernel_every = cfg.kernel_every or math.ceil(cfg.n_train / cfg.batch_size)
    recorder = DynamicsRecorder(
        data.held_x[data.observed], data.held_y[data.observed], cfg.lr, cfg.record_every, kernel_every
    )
    train(model, data, cfg, recorder)
    with torch.no_grad():
        probs = torch.cat([model(x).softmax(-1) for x in data.held_x.split(1024)]).double()
    average = torch.stack([probs[data.held_y == c].mean(0) for c in range(CLASSES)])
    result = DigitsResult(
        cfg.model,
        cfg.data,
        cfg.n_train,
        float((probs.argmax(-1) == data.held_y).double().mean()),
        average.numpy(),
        recorder.influence.numpy(),
        recorder.influence_prob.numpy(),
        np.array(recorder.steps),
        np.array(recorder.kernel_steps),
        torch.stack(recorder.class_norms).numpy(),
        np.array(recorder.agreement),
        time.perf_counter() - start,
        torch.stack(recorder.predicted).numpy(),
        torch.stack(recorder.observed).numpy(),
    )
    if out is not None:
        write(result, cfg, Path(out))
    return result


def write(result: DigitsResult, cfg: DigitsConfig, out: Path) -> None:
    import matplotlib.pyplot as plt

    from ldyn.toys.figures import agreement_figure, digits_figure

    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "dynamics.npz",
        average_prediction=result.average_prediction,
        influence=result.influence,
        influence_prob=result.influence_prob,
        steps=result.steps,
        kernel_steps=result.kernel_steps,
        class_norms=result.class_norms,
        coupling=result.coupling,
        agreement=result.agreement,
        predicted=result.predicted,
        observed=result.observed,
    )
    for name, figure in (
        ("digits.png", digits_figure(result)),
        (
            "agreement.png",
            agreement_figure(
                result.predicted,
                result.observed,
                f"first {len(result.predicted)} recorded updates: predicted vs observed",
            ),
        ),
    ):
        figure.savefig(out / name, dpi=130)
        plt.close(figure)
    summary = {
        "config": asdict(cfg),
        "accuracy": result.accuracy,
        "seconds": result.seconds,
        "recorded_updates": len(result.steps),
        "relative_error": {"median": result.median_relative_error, "max": float(result.agreement[:, 1].max())},
        "correlation_min": float(result.agreement[:, 2].min()),
        "top_pairs": {
            k: [[list(p), v] for p, v in result.top_pairs(k)] for k in ("coupling", "confusion", "influence")
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
