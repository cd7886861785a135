"""Generation: sampling continuations from a causal LM (`generate`) and asking a model for a text in a chat
(`LocalChat`), the local twin of `endpoint.ChatEndpoint`. Used by on-policy training, the win rate and
`ldyn probes build`."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    pad_id: int,
    eos_id: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    do_sample: bool = True,
) -> list[list[int]]:
    """Sample one continuation per prompt (token ids); each ends at its first EOS (kept) or at max_new_tokens."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    options = (
        dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0) if do_sample else dict(do_sample=False)
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        use_cache=True,
        **options,
    )
    responses = []
    for row in out[:, width:].tolist():
        responses.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return [r or [eos_id] for r in responses]


def sample_texts(
    model_name: str,
    prompts: list[str],
    *,
    seed: int,
    max_new_tokens: int,
    max_prompt_tokens: int = 256,
    batch_size: int = 8,
    top_k: int = 0,
    desc: str | None = None,
    template: str = "hh",
    loaded: tuple | None = None,
):
    """Load `model_name` and sample one continuation per prompt (rendered by `template` as training renders it,
    `data/templates.py`: "hh" keeps a text as it is; its last `max_prompt_tokens` tokens), a batch at a time;
    yields (index, decoded text) as each batch is done, so that callers can cache every sample as soon as it
    exists. `desc` shows a progress bar over batches. `loaded`: (model, tokenizer) of `model_name`, already loaded.
    """
    from tqdm.auto import tqdm

    from ldyn.config import ModelConfig
    from ldyn.data.templates import render_prompt
    from ldyn.models.load import load_model

    model, tokenizer = loaded or load_model(ModelConfig(model_name), seed)
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=desc is None):
        texts = [render_prompt(tokenizer, template, p) for p in prompts[start : start + batch_size]]
        ids = [tokenizer(t, add_special_tokens=False).input_ids[-max_prompt_tokens:] for t in texts]
        out = generate(
            model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens=max_new_tokens, top_k=top_k
        )
        for offset, tokens in enumerate(out):
            yield start + offset, tokenizer.decode(tokens, skip_special_tokens=True)


class LocalChat:
    """A local causal LM answering one user message (with its chat template when the tokenizer has one, else the
    plain text), sampled with the given temperature; the same `complete(system, user)` as `ChatEndpoint`."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int = 96, temperature: float = 0.7, seed: int = 0):
        self.model, self.tokenizer, self.id = model, tokenizer, f"local:{name}"
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.failures: list[str] = []

    def prompt_ids(self, system: str, user: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids if isinstance(ids, list) else ids["input_ids"])
        return tok(f"{system}\n\n{user}\n\n", add_special_tokens=False).input_ids

    def complete_many(self, requests: list[tuple[str, str]], batch_size: int = 8, seed: int | None = None) -> list[str]:
        """One answer per (system, user) request, sampled in batches; `seed` (default: the chat's) seeds them."""
        torch.manual_seed(self.seed if seed is None else seed)
        out = []
        for start in range(0, len(requests), batch_size):
            ids = [self.prompt_ids(s, u) for s, u in requests[start : start + batch_size]]
            tokens = generate(
                self.model,
                ids,
                self.tokenizer.pad_token_id,
                self.tokenizer.eos_token_id,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
            )
            out += [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        return out

    def complete(self, system: str, user: str) -> str | None:
        return self.complete_many([(system, user)])[0]
