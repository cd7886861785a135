"""`load_model`: the one entry for a model and its tokenizer -- a LoRA run's checkpoint (its base with the
adapters merged, `adapters.load_adapter_checkpoint`) or a plain model (`pretrained.load_pretrained`)."""

from __future__ import annotations

from pathlib import Path

from ldyn.config import ModelConfig
from ldyn.models.adapters import is_adapter_dir, load_adapter_checkpoint
from ldyn.models.pretrained import load_pretrained


def load_model(cfg: ModelConfig, seed: int = 0):
    """(model, tokenizer) for `cfg`, prepared for learning-dynamics work (`pretrained`'s docstring): a folder with an
    `adapter_config.json` is a LoRA run's checkpoint (its base, the adapters merged), anything else a plain model."""
    if cfg.name not in ("tiny", "smollm2") and is_adapter_dir(cfg.name):
        return load_adapter_checkpoint(Path(cfg.name), cfg, seed)
    return load_pretrained(cfg, seed)
