"""What the readout decomposition reads from a forward pass: per scored token, its logits, the hidden state entering
the LM head and the normalised inputs of every block's attention and MLP (the outputs of the block's norm layers),
captured by forward hooks (`recorded`) -- for a padded batch (`readout_forward`), for shared-prompt rows packed as
the instruments pack them (`packed_readout_forward`: each prompt once, the CPU's layout), or from the training
step's own packed forward (`assemble`, which `readout.update_from_step` uses). `dynamics/readout.py` uses them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ldyn.data.tokenize import IGNORE, Batch
from ldyn.logprobs.packed import packed_logits, packed_passes
from ldyn.logprobs.padded import response_logits
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.logprobs.tokens import Scored


@dataclass
class ReadoutForward:
    """A batch's scored tokens at θ: their logits and layout, the hidden state entering the head and the blocks'
    normalised inputs (every stream s side by side: (N, S·d))."""

    logits: torch.Tensor  # (N, V)
    scored: Scored
    hidden: torch.Tensor  # (N, d)
    streams: torch.Tensor  # (N, S·d)

    def subset(self, keep: torch.Tensor, n_rows: int, first_row: int = 0) -> ReadoutForward:
        """The tokens `keep` selects (a bool mask), as rows first_row .. first_row + n_rows - 1 renumbered from 0."""
        scored = self.scored
        rows = Scored(scored.targets[keep], scored.rows[keep] - first_row, scored.columns[keep], n_rows)
        return ReadoutForward(self.logits[keep], rows, self.hidden[keep], self.streams[keep])


def decoder_layers(model) -> nn.ModuleList:
    """The model's transformer blocks: the module list as long as its config's number of layers."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"found no list of {n} decoder layers in {type(model).__name__}")


def stream_norms(model) -> list[nn.Module]:
    """Every block's norm layers (the inputs of its attention and MLP projections), in order."""
    return [m for layer in decoder_layers(model) for m in layer.children() if "norm" in type(m).__name__.lower()]


@contextmanager
def recorded(model):
    """Record the LM head's input and every stream norm's output of each forward run inside: yields a list, one
    {"hidden": tensor, "streams": [tensor per norm]} per forward of the model, in order (detached: a training
    forward's activations are kept for its backward anyway, so this holds no memory of its own)."""
    forwards: list[dict] = []

    def on_start(_module, _args, _kwargs):
        forwards.append({"hidden": None, "streams": []})

    def on_head(_module, inputs, _output):
        forwards[-1]["hidden"] = inputs[0].detach()

    def on_norm(_module, _inputs, output):
        forwards[-1]["streams"].append(output.detach())

    handles = [model.register_forward_pre_hook(on_start, with_kwargs=True)]
    handles += [model.get_output_embeddings().register_forward_hook(on_head)]
    handles += [m.register_forward_hook(on_norm) for m in stream_norms(model)]
    try:
        yield forwards
    finally:
        for h in handles:
            h.remove()


def readout_forward(model, batch: Batch) -> ReadoutForward:
    """One forward of a padded batch (`response_logits`) with its scored tokens' hidden states and streams."""
    with torch.no_grad(), recorded(model) as forwards:
        logits, labels = response_logits(model, batch)
    seen = forwards[-1]
    mask = labels != IGNORE
    width = labels.shape[1]  # the head saw the last width + 1 positions; logits[:, i] predicts labels[:, i]
    hidden = seen["hidden"][:, -(width + 1) : -1][mask]
    total = batch.input_ids.shape[1]
    streams = [s[:, total - width - 1 : total - 1][mask] for s in seen["streams"]]
    scored_logits, scored = Scored.of_padded(logits, labels)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return ReadoutForward(scored_logits, scored, hidden.to(dtype), torch.cat(streams, -1).to(dtype))


def packed_readout_forward(model, rows: SharedRows) -> ReadoutForward:
    """The forwards of shared-prompt rows packed as `logprobs.packed.packed_scored_logits` runs them (the same
    passes, so the same token order), one pass at a time, each with its hidden states and streams."""
    passes, logits, forwards = packed_passes(model, rows.prompts, rows.responses), [], []
    for p in passes:
        with torch.no_grad(), recorded(model) as seen:
            logits += packed_logits(model, [p])
        forwards += seen
    if not passes:
        raise ValueError("no observed row has a response token")
    return assemble(passes, forwards, torch.cat(logits), len(rows.responses))


def assemble(passes: list, forwards: list[dict], logits: torch.Tensor, n_rows: int) -> ReadoutForward:
    """The `ReadoutForward` of packed passes (`logprobs.packed.PackedPass`) from their recorded forwards (one each,
    in order: `recorded`) and their scored tokens' logits (pass after pass): each pass's kept positions."""
    device = logits.device
    hidden, streams = [], []
    for p, seen in zip(passes, forwards, strict=True):
        keep = p.keep.to(device)
        h = seen["hidden"][0]
        hidden.append(h if h.shape[0] == len(keep) else h[keep])  # the head ran at the kept positions only
        streams.append(torch.cat([s[0, keep] for s in seen["streams"]], -1))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    targets, seq, columns = (
        torch.cat([getattr(p, k) for p in passes]).to(device) for k in ("targets", "rows", "columns")
    )
    return ReadoutForward(
        logits, Scored(targets, seq, columns, n_rows), torch.cat(hidden).to(dtype), torch.cat(streams).to(dtype)
    )
