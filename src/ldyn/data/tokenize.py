"""Tokenisation, truncation and padding: the only place that knows about label masks.

Following the paper's code (eric-mitchell's DPO repo): prompt and response are tokenised separately, an EOS token is
appended to every response (never to the prompt), and labels are -100 on prompt and padding positions. When the
prompt plus the row's *longest* response exceeds `max_length`, the prompt is cut to `max_prompt_length` tokens
(keeping its end for HH-style dialogues); if still too long, every response is cut to fit. A row without a prompt
(language-modelling text) takes its first token as the prompt: no model scores a sequence's first token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldyn.data.formats import Example
from ldyn.data.templates import render
from ldyn.errors import LdynError

IGNORE = -100  # label of positions that are not scored


@dataclass
class TokenizedRow:
    id: str
    prompt: list[int]
    responses: dict[str, list[int]]  # response type (or "chosen"/"rejected") -> token ids, EOS included
    truncated: bool


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded prompt + response
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) response tokens, IGNORE elsewhere

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))


def tokenize_rows(
    tokenizer,
    rows: list[tuple[str, str, dict[str, str]]],
    max_length: int,
    max_prompt_length: int,
    mode: str = "keep_end",
) -> list[TokenizedRow]:
    """[(id, prompt, {name: response})] -> TokenizedRow list, truncated as the paper's code does."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    prompts = _encode(tokenizer, [p for _, p, _ in rows])
    names = [list(r) for _, _, r in rows]
    flat = _encode(tokenizer, [r[k] for (_, _, r), ks in zip(rows, names) for k in ks])
    out, i = [], 0
    for (row_id, _, _), prompt, ks in zip(rows, prompts, names):
        responses = {k: flat[i + j] + [eos] for j, k in enumerate(ks)}
        i += len(ks)
        if not prompt:  # language-modelling text: its first token is the context of the rest (never scored)
            prompt, responses = _first_token_as_prompt(row_id, responses)
        longest = max((len(r) for r in responses.values()), default=0)
        truncated = len(prompt) + longest > max_length
        if truncated:
            prompt = prompt[-max_prompt_length:] if mode == "keep_end" else prompt[:max_prompt_length]
            if len(prompt) + longest > max_length:
                responses = {k: r[: max_length - len(prompt)] for k, r in responses.items()}
        out.append(TokenizedRow(row_id, prompt, responses, truncated))
    return out


def tokenize_examples(tokenizer, examples: list[Example], data) -> list[TokenizedRow]:
    """Examples (`formats.py`) rendered by `data.template` and tokenised with `data`'s lengths and truncation: the
    one route from a row to tokens, for training and probing alike."""
    rendered = [(e.id, *render(tokenizer, data.template, e)) for e in examples]
    return tokenize_rows(tokenizer, rendered, data.max_length, data.max_prompt_length, data.truncation_mode)


def _first_token_as_prompt(row_id: str, responses: dict[str, list[int]]) -> tuple[list[int], dict]:
    firsts = {r[0] for r in responses.values()}
    if len(firsts) != 1:
        raise LdynError(f"row '{row_id}' has no prompt and responses that start differently: give it a prompt")
    return [firsts.pop()], {k: r[1:] for k, r in responses.items()}


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def collate(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """[(prompt ids, response ids)] -> a right-padded Batch whose labels cover the responses only."""
    length = max(len(p) + len(r) for p, r in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(sequences):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r)
        attention_mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(r)
    return Batch(input_ids, attention_mask, labels)


def collate_pairs(examples, pad_id: int, with_rejected: bool) -> Batch:
    """Training examples (prompt, chosen, rejected) -> one Batch: the chosen (or SFT target) rows first, then, with
    `with_rejected`, the rejected rows in the same order, so chosen and rejected share one forward pass."""
    sequences = [(e.prompt, e.chosen) for e in examples]
    if with_rejected:
        sequences += [(e.prompt, e.rejected) for e in examples]
    return collate(sequences, pad_id)
