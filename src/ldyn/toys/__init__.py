"""Two small worlds the paper builds its intuition on: the squeezing toy and classifier dynamics on digits."""

import torch

from ldyn.losses import LossConfig, PairLogps, get_loss


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The registered SFT loss −log π(y|x) on a one-token response, averaged over the batch: a classifier is an LM
    whose response is a single token, so both toys train (and take G) through the same loss as the LLMs."""
    logp = logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    ones = torch.ones_like(logp)
    return get_loss("sft").fn(PairLogps(logp, None, ones, None), None, LossConfig()).losses.mean()
