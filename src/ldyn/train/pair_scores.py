"""Per-pair scores before training (`ldyn score-pairs`): how much each training pair's own update is predicted to
lower its own chosen response -- the readout kernel (`dynamics/readout.py`) applied to the pair alone.

For a pair (x, y⁺, y⁻) and the stage's loss at its learning rate η, one SGD step on that pair alone changes
log π(y⁺ | x), to first order, by

    self_chosen = −η Σ_{m ∈ y⁺} Σ_{t ∈ y⁺ ∪ y⁻} [ch1(m, t) + ch2(m, t)]          (readout: head exact, backbone est.)

split into the part through y⁺'s own tokens (`from_chosen`, the positive gradient: it raises y⁺) and through y⁻'s
(`from_rejected`, the negative gradient: for DPO it is where y⁺ is lowered). A pair with a negative `self_chosen`
is one whose update displaces its own chosen: the likelihood-displacement literature ranks pairs the same way
(CHES, Razin et al. 2024, arXiv 2410.08847: ⟨Σ_t h⁺_t, Σ_t h⁻_t⟩ − ‖Σ_t h⁺_t‖² of the last hidden states, also
reported, as `ches`). At the stage's start the reference model is the policy itself, so the DPO family's G there
is that of the first update.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ldyn.config import RunConfig
from ldyn.dynamics import readout
from ldyn.dynamics.readout_projected import projected_statistics
from ldyn.errors import LdynError, did_you_mean
from ldyn.losses import get_loss
from ldyn.models.load import load_model
from ldyn.models.modes import measurement_mode
from ldyn.runtime.files import write_atomically
from ldyn.train.experiment import load_inputs
from ldyn.train.trainer import stage_examples

COLUMNS = ("rank", "example_id", "self_chosen", "from_chosen", "from_rejected", "ches", "logp_chosen", "n_chosen")


def score_pairs(cfg: RunConfig, stage: str | None = None, progress: bool = True) -> list[dict]:
    """Every training pair of `cfg` (its `data.train`, `data.n_train`) scored under the loss and learning rate of
    `stage` (default: the first preference stage, else the first), most displaced first."""
    picked = _stage(cfg, stage)
    spec = get_loss(picked.loss.name)
    model, tokenizer = load_model(cfg.model, cfg.seed)
    cfg = replace(cfg, probe=replace(cfg.probe, every=0), decompose=replace(cfg.decompose, every=0))
    inputs = load_inputs(cfg, tokenizer)
    examples = stage_examples(inputs.train, spec, picked)
    examples = [e for e in examples if e.chosen and (e.rejected or not spec.needs_rejected)]
    if not examples:
        raise LdynError("no training pairs to score", field="data.train")
    head = readout.output_head(model)
    trained, head = head.requires_grad, head.detach()
    rows = []
    with measurement_mode(model):
        for e in tqdm(examples, desc="score pairs", unit="pair", disable=not progress):
            scores = pair_score(model, spec, picked.loss, e, head, picked.optim.lr, tokenizer.pad_token_id, trained)
            rows.append({"example_id": e.id, **scores})
    rows.sort(key=lambda r: r["self_chosen"])
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]


def pair_score(
    model, spec, loss_cfg, example, head: torch.Tensor, lr: float, pad_id: int = 0, head_trained: bool = True
) -> dict:
    """One pair's scores (`score_pairs`'s columns but rank and id); `head_trained=False` (LoRA): the backbone's
    estimate alone."""
    update = readout.readout_update(model, spec, loss_cfg, [example], pad_id, None)
    chosen = update.sides[0]  # y⁺'s forward: the observed response is the update's own chosen
    stats = projected_statistics(chosen, update, head, lr, head_trained=head_trained)
    part = lambda side: float(stats.get(f"sgd_{side}", torch.zeros(1))[0])  # noqa: E731
    out = {"self_chosen": part("positive") + part("negative"), "from_chosen": part("positive")}
    out["from_rejected"] = part("negative") if spec.needs_rejected else 0.0
    out["ches"] = ches(update) if spec.needs_rejected else 0.0
    out["logp_chosen"] = float(readout.token_logps(chosen.logits, chosen.scored).sum())
    out["n_chosen"] = len(chosen.scored.targets)
    return out


def ches(update: readout.ReadoutUpdate) -> float:
    """CHES (Razin et al.): ⟨Σ h⁺, Σ h⁻⟩ − ‖Σ h⁺‖², the last hidden states summed over each response's tokens."""
    plus = update.hidden[~update.negative].sum(0).double()
    minus = update.hidden[update.negative].sum(0).double()
    return float(plus @ minus - plus @ plus)


def _stage(cfg: RunConfig, name: str | None):
    names = [s.name for s in cfg.stages]
    if name is not None:
        if name not in names:
            raise LdynError(f"unknown stage '{name}'{did_you_mean(name, names)}", field="--stage")
        return next(s for s in cfg.stages if s.name == name)
    preference = [s for s in cfg.stages if get_loss(s.loss.name).needs_rejected]
    return preference[0] if preference else cfg.stages[0]


def write_pair_scores(rows: list[dict], out: str | Path) -> Path:
    """The scores as CSV (`.csv`) or JSON lines (anything else), written atomically."""
    out = Path(out)
    if out.suffix == ".csv":
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    write_atomically(out, text, "--out")
    return out
