"""`load_model`: the one entry for a model and its tokenizer -- a LoRA run's checkpoint (its base with the
adapters merged, `adapters.load_adapter_checkpoint`) or a plain model (`pretrained.load_pretrained`). And
`load_checkpoint`: a run's own checkpoint folder, for `ldyn resume`, its faults one line naming the file."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError

from ldyn.config import ModelConfig
from ldyn.errors import LdynError
from ldyn.models.adapters import check_adapter_checkpoint, is_adapter_dir, load_adapter_checkpoint
from ldyn.models.pretrained import LOAD_ERRORS, from_pretrained, load_pretrained, reason

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_model(cfg: ModelConfig, seed: int = 0):
    """(model, tokenizer) for `cfg`, prepared for learning-dynamics work (`pretrained`'s docstring): a folder with an
    `adapter_config.json` is a LoRA run's checkpoint (its base, the adapters merged), anything else a plain model."""
    if cfg.name not in ("tiny", "smollm2") and is_adapter_dir(cfg.name):
        return load_adapter_checkpoint(Path(cfg.name), cfg, seed)
    return load_pretrained(cfg, seed)


def check_checkpoint(folder: Path, adapter: bool, seed: int = 0) -> None:
    """Refuse a checkpoint folder of a run that misses a file (a LoRA run's: its adapter, its chain and the
    earlier stages' adapters; else the model's config and weights), before anything loads."""
    if adapter:
        check_adapter_checkpoint(folder, seed)
        return
    if not (folder / "config.json").is_file():
        raise LdynError(_INCOMPLETE, file=str(folder / "config.json"))
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise LdynError(_INCOMPLETE, file=str(folder / WEIGHTS[0]))


_INCOMPLETE = "missing from the checkpoint, which cannot be loaded without it; start the run again with --overwrite"


def load_checkpoint(folder: Path, cfg: ModelConfig, seed: int, *, adapter: bool, trainable: bool = False):
    """(model, tokenizer) of a run's checkpoint folder: a LoRA run's adapter (kept trainable with `trainable`, else
    merged) or a full model, loaded with `cfg`'s dtype and attention."""
    check_checkpoint(folder, adapter, seed)
    if adapter:
        return load_adapter_checkpoint(folder, cfg, seed, trainable)
    try:
        return from_pretrained(folder, cfg)
    except LOAD_ERRORS as e:
        weights = next((folder / n for n in WEIGHTS if (folder / n).is_file()), folder)
        weights = weights if isinstance(e, SafetensorError) else folder
        raise LdynError(
            f"cannot load the checkpoint ({reason(e)}): it is damaged; start the run again with --overwrite",
            file=str(weights),
        ) from None
