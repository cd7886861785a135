"""LoRA adapters (PEFT) in ldyn's own trainer: `model.peft: {r, alpha, target_modules}`.

Each stage trains a fresh adapter on the model the earlier stages left, their adapters merged into its weights
(merge, then adapt: how SFT→DPO with LoRA is usually done). So a stage's starting model is always "the model with
the adapter switched off", and a DPO-family stage's reference is exactly that (`AdapterOff`): one model in memory.
The trainable parameters are the adapter's, so the optimizer, the checkpoints and the A·K·G decomposition (K is
then the adapter's tangent kernel) all work on them without knowing it.

A LoRA run's checkpoints hold adapters (`adapter_config.json`, `adapter_model.safetensors`) and a small
`ldyn_adapter_chain.json`: the base model and the earlier stages' adapters to merge first. `load_adapter_checkpoint`
follows it, so `ldyn resume`, the win rate and `model.name=<run>/checkpoints/<stage>` of a later run all load the
stage's model; the first stage's adapter also loads with PEFT alone on its base model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ldyn.config import ModelConfig, PeftConfig
from ldyn.errors import LdynError
from ldyn.models.pretrained import load_pretrained

CHAIN = "ldyn_adapter_chain.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def has_adapter(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def new_adapter(model, cfg: PeftConfig, seed: int = 0):
    """`model` (its adapter, if it has one, merged into its weights first) with a fresh trainable LoRA adapter,
    initialised from `seed` (without touching the global random state)."""
    import torch
    from peft import LoraConfig, get_peft_model

    if has_adapter(model):
        model = model.merge_and_unload()
    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            adapted = get_peft_model(model, lora)
    except ValueError as e:  # PEFT's message for target modules the model does not have
        raise LdynError(
            f"cannot attach a LoRA adapter: {str(e).splitlines()[0]}", field="model.peft.target_modules"
        ) from None
    return adapted.eval()  # dropout off, as every ldyn model


class AdapterOff:
    """The model with its adapter switched off: a LoRA stage's starting model, used as its DPO reference without a
    second copy in memory. Calls and `generate` run under `disable_adapter()`; everything else is the model's."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def chain_for(base: ModelConfig, seed: int, earlier: list[str]) -> dict:
    """What a stage's adapter checkpoint applies to: the base model and the earlier stages' checkpoints (folder
    names beside it), merged in order."""
    return {"base": base.name, "seed": seed, "merged": [f"../{name}" for name in earlier]}


def write_chain(folder: Path, chain: dict) -> None:
    (folder / CHAIN).write_text(json.dumps(chain, indent=2) + "\n")


def load_adapter_checkpoint(path: Path, cfg: ModelConfig, seed: int, trainable: bool = False):
    """(model, tokenizer) of an adapter checkpoint: its base with the chain's adapters merged, then this adapter --
    kept as a trainable adapter (`trainable`, to resume its stage) or merged too."""
    from peft import PeftModel

    chain_file = path / CHAIN
    if chain_file.is_file():
        chain = json.loads(chain_file.read_text())
    else:  # an adapter saved by PEFT itself
        chain = {
            "base": json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path"),
            "seed": seed,
            "merged": [],
        }
        if not chain["base"]:
            raise LdynError("an adapter without base_model_name_or_path in adapter_config.json", file=str(path))
    model, tokenizer = load_pretrained(replace(cfg, name=chain["base"], peft=PeftConfig()), chain["seed"])
    for earlier in chain["merged"]:
        model = PeftModel.from_pretrained(model, str((path / earlier).resolve())).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    return (model.eval() if trainable else model.merge_and_unload().eval()), tokenizer
