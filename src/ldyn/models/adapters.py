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
from ldyn.models.pretrained import load_pretrained, reason

CHAIN = "ldyn_adapter_chain.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


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
    kept as a trainable adapter (`trainable`, to resume its stage) or merged too (then every weight trainable, as a
    plain model's: a later run may finetune it fully). Every file is checked before anything loads
    (`check_adapter_checkpoint`); a fault is one line naming the file."""
    return _load(Path(path), cfg, seed, trainable, seen=())


def check_adapter_checkpoint(path: Path, seed: int = 0) -> dict:
    """The chain of an adapter checkpoint, after checking that it and every adapter folder it names are whole:
    their `adapter_config.json` a JSON object, their weights present. Raises one-line errors naming the file."""
    chain_file = path / CHAIN
    if chain_file.is_file():
        chain = _chain(chain_file, seed)
    else:  # an adapter saved by PEFT itself
        base = _json_object(path / ADAPTER_CONFIG).get("base_model_name_or_path")
        if not base or not isinstance(base, str):
            raise LdynError(
                "an adapter needs its base model: set base_model_name_or_path in adapter_config.json",
                file=str(path / ADAPTER_CONFIG),
            )
        chain = {"base": base, "seed": seed, "merged": []}
    for earlier in chain["merged"]:
        folder = (path / earlier).resolve()
        if not folder.is_dir():
            raise LdynError(
                f"the earlier stage's adapter folder {folder} is missing: this checkpoint applies after it; copy the "
                "whole checkpoints folder of the run, not one stage's folder",
                file=str(chain_file),
                field="merged",
            )
        _check_adapter_files(folder)
    _check_adapter_files(path)
    return chain


def _check_adapter_files(folder: Path) -> None:
    _json_object(folder / ADAPTER_CONFIG)
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise LdynError(
            "the adapter's weights are missing: the checkpoint is incomplete; save or copy it again",
            file=str(folder / ADAPTER_WEIGHTS[0]),
        )


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LdynError("missing: the checkpoint is incomplete; save or copy it again", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LdynError(f"cannot read it ({reason(e)}); save or copy the checkpoint again", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise LdynError(
            f"malformed JSON ({e.msg}): save or copy the checkpoint again", file=str(path), line=e.lineno
        ) from None
    if not isinstance(data, dict):
        raise LdynError(f"must be a JSON object, got {type(data).__name__}", file=str(path))
    return data


def _chain(path: Path, seed: int) -> dict:
    """`ldyn_adapter_chain.json`, checked: a base model name, the seed, and the earlier adapters' folders."""
    chain = _json_object(path)
    base, merged = chain.get("base"), chain.get("merged", [])
    if not isinstance(base, str) or not base:
        what = "missing" if base is None else f"must be the base model's name, got {base!r}"
        layout = '{"base": MODEL, "seed": N, "merged": [FOLDERS]}'
        raise LdynError(f"{what}; the file holds {layout}, as the run wrote it", file=str(path), field="base")
    if not isinstance(merged, list) or not all(isinstance(m, str) and m for m in merged):
        raise LdynError(f"must be a list of adapter folders, got {merged!r}", file=str(path), field="merged")
    seed = chain.get("seed", seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LdynError(f"must be an integer, got {seed!r}", file=str(path), field="seed")
    return {"base": base, "seed": seed, "merged": merged}


def _load(path: Path, cfg: ModelConfig, seed: int, trainable: bool, seen: tuple[Path, ...]):
    chain = check_adapter_checkpoint(path, seed)
    where = path / CHAIN if (path / CHAIN).is_file() else path / ADAPTER_CONFIG
    if path.resolve() in seen or len(seen) > 16:
        raise LdynError("the adapters' bases loop back to this checkpoint", file=str(where))
    model, tokenizer = _base(chain["base"], cfg, chain["seed"], where, (*seen, path.resolve()))
    for earlier in chain["merged"]:
        model = _attach(model, (path / earlier).resolve(), trainable=False).merge_and_unload()
    model = _attach(model, path, trainable)
    if trainable:
        return model.eval(), tokenizer
    merged = model.merge_and_unload()
    merged.requires_grad_(True)  # PEFT froze the base's weights; a merged model trains as any other
    return merged.eval(), tokenizer


def _base(name: str, cfg: ModelConfig, seed: int, where: Path, seen: tuple[Path, ...]):
    """The model an adapter was trained on: a plain model, or itself an adapter checkpoint (a LoRA run started
    from another LoRA run's checkpoint), merged."""
    if name not in ("tiny", "smollm2") and is_adapter_dir(name):
        return _load(Path(name), cfg, seed, False, seen)
    try:
        return load_pretrained(replace(cfg, name=name, peft=PeftConfig()), seed)
    except LdynError as e:
        field = "base" if where.name == CHAIN else "base_model_name_or_path"
        raise LdynError(f"the adapter's base model: {e.message}", file=str(where), field=field) from None


def _attach(model, folder: Path, trainable: bool):
    """PeftModel.from_pretrained, its faults (damaged weights, shapes of another model) one line naming the file."""
    import torch
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        weights = next((folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()), folder)
        raise LdynError(
            f"cannot load the adapter ({reason(e)}): the file is damaged or belongs to another model; save or "
            "copy the checkpoint again",
            file=str(weights),
        ) from None
