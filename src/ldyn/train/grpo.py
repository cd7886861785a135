"""A GRPO stage (`loss.name=grpo`, settings `stages.<i>.rl`): sample, reward, advantages, one update, as TRL 1.16.

One update of a stage with batch_size P and G = rl.num_generations:

1. rollout (`GRPO.wrap`, a data transform like `sampling.ResponseSampler`, run when the trainer asks for the next
   batch, so the policy that samples is θ_t): G completions of each of the P prompts from the model being trained
   (`generate.sampling.generate`: rl.temperature, rl.top_k, at most rl.max_completion_length tokens, each ending at
   its EOS, which is scored), seeded by the stage, the update and the process (a resumed run samples the same);
2. reward (`rl.tasks.score`): each completion decoded and scored by rl.reward with its row's fields (`answer`, ...)
   as TRL passes a dataset's columns; advantages within each prompt's group (`rl.objective.group_advantages`);
3. update (`GRPO.__call__`, the trainer's `objective`): the completions' per-token log-probs from the training
   forward (packed on a CPU, each prompt once for its G completions; one padded batch otherwise), the reference's
   when rl.beta > 0 (the frozen copy of the stage's starting model, as a DPO stage's), and the loss
   `rl.objective.rl_token_loss` with ρ = 1 (TRL's num_iterations = 1: each rollout is used for one update, so the
   old policy is the current one, detached). With grad_accum > 1 each micro-batch is a rollout of its own P prompts;
   loss_type=dapo normalises by the completion tokens of the whole update (all micro-batches and processes), the
   others per micro-batch and average them, as TRL does.

Metrics per update (metrics.jsonl, micro-batch means): loss; reward (mean), reward_std (the mean of the groups'
stds, TRL's), pass_rate (reward ≥ 1), frac_reward_zero_std (groups with no signal); advantage_std; clip_ratio (and
/high, /low; 0 while ρ = 1), kl (β > 0), completion_length (tokens), completions/clipped_ratio (no EOS within
max_completion_length), entropy (mean token entropy of the policy on its completions), cov_logp_advantage
(`rl.objective.logp_advantage_covariance`: what the entropy's change follows), logps/completion (mean token
log-prob) and time/rollout_s (sampling and scoring; time/update_s is the update alone). Every completion goes to
samples.jsonl with its step, prompt id, index in its group, text, reward and advantage.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ldyn.config import RunConfig
from ldyn.data.formats import example_from_row, read_rows
from ldyn.data.tokenize import IGNORE, collate
from ldyn.errors import LdynError
from ldyn.generate.sampling import generate
from ldyn.logprobs.packed import packed_scored_logits
from ldyn.logprobs.padded import response_logits
from ldyn.logprobs.tokens import Scored, SeqLogps, supports_logits_to_keep
from ldyn.losses import RLConfig, get_loss
from ldyn.models.modes import shape_stable_attention
from ldyn.rl.objective import check_rl_config, group_advantages, logp_advantage_covariance, rl_token_loss
from ldyn.rl.tasks import load_reward, score
from ldyn.runs.directory import SAMPLES, RunDir
from ldyn.train.trainer import TrainExample


@dataclass
class Completion(TrainExample):
    """A sampled completion (`chosen`, EOS included when it ended) of the prompt of row `prompt_id`."""

    prompt_id: str = ""
    reward: float = 0.0
    advantage: float = 0.0


class Rollout(list):
    """One micro-batch: its completions, prompt-major (G per prompt), and what sampling them measured."""

    def __init__(self, completions: list[Completion], clipped: float):
        super().__init__(completions)
        self.clipped = clipped  # the fraction that hit max_completion_length without an EOS
        self.num_items = sum(len(c.chosen) for c in completions)  # the update's completion tokens (set by `wrap`)
        self.seconds = 0.0  # the update's sampling and scoring (set by `wrap`)


# ---------------------------------------------------------------- settings and data, checked before a run starts


def check_sampled_stages(cfg: RunConfig, processes: int = 1) -> None:
    """What `config.check` cannot see of a sampled stage: its rl values against rl/objective.py's registry, its
    reward imported, and the instruments that cannot take its update; each refusal names its key. The
    decomposition takes a sampled update's G from the training step's own graph (its loss is over tokens, which
    `akg.update_directions` does not take), so only where the step has one: one process, one micro-batch, no
    autocast, no compile; and not the readout, which runs the update batch itself."""
    sampled = [s for s in cfg.stages if get_loss(s.loss.name).sampled]
    if not sampled:
        return
    first = f"'{sampled[0].name}'"
    if cfg.decompose.every:
        cannot = f"the decomposition cannot take a {sampled[0].loss.name} stage's update (stage {first})"
        if cfg.decompose.method == "readout":
            raise LdynError(f"{cannot} by the readout: use jvp, central or one_sided", field="decompose.method")
        for why, key in ((processes > 1, "processes"), (cfg.mixed_precision != "no", "mixed_precision"),
                         (cfg.compile != "no", "compile")):  # fmt: skip
            if why:
                raise LdynError(f"{cannot} under {key}: its G comes from the step's own graph", field=key)
        if any(s.grad_accum > 1 for s in sampled):
            raise LdynError(f"{cannot} over micro-batches: set grad_accum 1", field=f"stages.{first[1:-1]}.grad_accum")
    if cfg.cuda_graphs:
        raise LdynError(f"does not replay a sampled stage's update (stage {first}): set it false", field="cuda_graphs")
    for s in sampled:
        where = f"stages.{s.name}.rl"
        try:
            check_rl_config(s.rl)
            load_reward(s.rl.reward)
        except LdynError as e:
            raise LdynError(e.message, field=f"{where}.{e.field}" if e.field else where) from None
        if not s.rl.temperature > 0:
            raise LdynError(f"must be > 0 to sample, got {s.rl.temperature}", field=f"{where}.temperature")
        if s.rl.top_k < 0:
            raise LdynError(f"must be >= 0, got {s.rl.top_k}", field=f"{where}.top_k")


def rows_by_id(source, split: str, seed: int, n: int) -> dict[str, dict]:
    """Each training row as read (its fields, `answer` and the rest, the rewards' keywords), by example id."""
    rows, file = read_rows(source, split, seed, n)
    out = {}
    for index, (line, row) in enumerate(rows):
        try:
            out[example_from_row(row, file, line, str(index)).id] = row
        except LdynError:  # a row the training set left out (skip_empty)
            continue
    return out


def check_reward_fields(cfg: RunConfig, rows: dict[str, dict]) -> None:
    """Every sampled stage's reward takes the rows' fields as keywords (a missing `answer` is refused before the
    run starts, not at its first rollout)."""
    fields = {k: [] for k in next(iter(rows.values()), {}) if k not in ("prompt", "completion")}
    for s in cfg.stages:
        if not get_loss(s.loss.name).sampled:
            continue
        fn = load_reward(s.rl.reward)
        try:
            inspect.signature(fn).bind([], [], **fields)
        except TypeError as e:
            have = ", ".join(sorted(fields)) or "none"
            message = f"'{s.rl.reward}' cannot take the training rows' fields ({have}): {e}"
            raise LdynError(message, field=f"stages.{s.name}.rl.reward") from None
        except ValueError:  # no signature to inspect
            pass


# ---------------------------------------------------------------- per-token log-probs of completions


def _padded_scored(model, batch) -> tuple[torch.Tensor, Scored]:
    """(N, V) logits of a padded batch's response tokens, projected only there (as `padded.scored_logps`)."""
    if not supports_logits_to_keep(model):
        return Scored.of_padded(*response_logits(model, batch))
    scored = torch.zeros_like(batch.labels, dtype=torch.bool)
    scored[:, :-1] = batch.labels[:, 1:] != IGNORE
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=scored).logits
    rows, positions = scored.nonzero(as_tuple=True)
    columns = positions - scored.int().argmax(1)[rows]  # a response's tokens are contiguous from its first
    return logits, Scored(batch.labels[:, 1:][scored[:, :-1]], rows, columns, batch.labels.shape[0])


def token_logps(trainer, model, examples: list[TrainExample]) -> tuple[torch.Tensor, torch.Tensor, SeqLogps]:
    """(log π (N, T), mask (N, T), the rows' SeqLogps with their logits) of each example's `chosen` given its prompt,
    from the trainer's layout (packed: each distinct prompt once) and precision."""
    device = trainer.accelerator.device
    plain = trainer.forward_model if model is trainer.model else model
    with trainer.autocast(), shape_stable_attention():
        if trainer.packs_rows:
            owners: dict[tuple, int] = {}
            for e in examples:
                owners.setdefault(tuple(e.prompt), len(owners))
            prompts = [list(p) for p in owners]
            responses = [(owners[tuple(e.prompt)], e.chosen) for e in examples]
            logits, scored = packed_scored_logits(plain, prompts, responses)
        else:
            batch = collate([(e.prompt, e.chosen) for e in examples], trainer.pad_id).to(device)
            logits, scored = _padded_scored(plain, batch)
    token = -F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), scored.targets, reduction="none"
    )
    n, width = len(examples), max(len(e.chosen) for e in examples)
    where = (scored.rows, scored.columns)
    logp = token.new_zeros(n, width).index_put(where, token)
    mask = token.new_zeros(n, width).index_put(where, torch.ones_like(token.detach()))
    sums = token.new_zeros(n).index_add(0, scored.rows, token)
    lengths = torch.bincount(scored.rows, minlength=n)
    return logp, mask, SeqLogps(sums, sums / lengths.clamp(min=1), lengths, logits, scored.rows)


@torch.no_grad()
def mean_entropy(logits: torch.Tensor, rows: torch.Tensor, n: int, chunk: int = 256) -> torch.Tensor:
    """The mean over completions of their tokens' mean entropy H(π_t), from the scored tokens' (N, V) logits."""
    h = []
    for lo in range(0, logits.shape[0], chunk):
        z = logits[lo : lo + chunk].float()
        logq = torch.log_softmax(z, -1)
        h.append(-(logq.exp() * logq).sum(-1))
    per_token = torch.cat(h) if h else logits.new_zeros(0, dtype=torch.float32)
    totals = per_token.new_zeros(n).index_add(0, rows, per_token)
    return (totals / torch.bincount(rows, minlength=n).clamp(min=1)).mean()


# ---------------------------------------------------------------- the stage


class GRPO:
    """A GRPO stage's rollouts (`wrap`) and its loss (`__call__`, the trainer's `objective`)."""

    def __init__(
        self,
        cfg: RLConfig,
        policy,
        tokenizer,
        rows: dict[str, dict],
        *,
        grad_accum: int = 1,
        seed: int = 0,
        rank: int = 0,
        run: RunDir | None = None,
    ):
        self.cfg, self.policy, self.tokenizer, self.rows = cfg, policy, tokenizer, rows
        self.grad_accum, self.seed, self.rank, self.run = grad_accum, seed, rank, run
        self.reward = load_reward(cfg.reward)

    # ---- rollout

    def wrap(self, batches: Iterator[list[TrainExample]], step: int) -> Iterator[Rollout]:
        """Each update's grad_accum prompt batches as rollouts; `step` is the global number of the first update."""
        while True:
            started = time.perf_counter()
            rollouts = [self.sample(next(batches), step, i) for i in range(self.grad_accum)]
            seconds, tokens = time.perf_counter() - started, sum(r.num_items for r in rollouts)
            for r in rollouts:
                r.num_items, r.seconds = tokens, seconds
            yield from rollouts
            step += 1

    def sample(self, batch: list[TrainExample], step: int, micro: int = 0) -> Rollout:
        """G completions of each prompt of `batch`, rewarded, with their group's advantages."""
        cfg, tok, g = self.cfg, self.tokenizer, self.cfg.num_generations
        device = next(self.policy.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(random.Random(f"{self.seed}/{step}/{micro}/{self.rank}").getrandbits(63))
            samples = generate(
                self.policy,
                [e.prompt for e in batch for _ in range(g)],
                tok.pad_token_id,
                tok.eos_token_id,
                max_new_tokens=cfg.max_completion_length,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
            )
        texts = [tok.decode(s, skip_special_tokens=True) for s in samples]
        prompts = [tok.decode(e.prompt) for e in batch]
        rows = [self.rows.get(e.id, {}) for e in batch]
        rewards = score(
            self.reward,
            [prompts[i // g] for i in range(len(samples))],
            texts,
            [rows[i // g] for i in range(len(samples))],
        )
        advantages = group_advantages(
            torch.tensor(rewards, dtype=torch.float64).view(len(batch), g), cfg.advantage, cfg.scale_rewards
        )
        completions, records = [], []
        for i, (tokens, text, reward, advantage) in enumerate(
            zip(samples, texts, rewards, advantages.flatten().tolist())
        ):
            e = batch[i // g]
            completions.append(Completion(f"{e.id}@{step}#{i % g}", e.prompt, tokens, None, e.id, reward, advantage))
            records.append({"step": step, "example_id": e.id, "role": "completion", "index": i % g, "tokens": tokens,
                            "text": text, "reward": reward, "advantage": advantage})  # fmt: skip
        if self.run is not None:
            self.run.append(SAMPLES, records)
        clipped = sum(s[-1] != tok.eos_token_id for s in samples) / len(samples)
        return Rollout(completions, clipped)

    # ---- the loss

    def __call__(self, trainer, examples: Rollout) -> tuple[torch.Tensor, dict[str, float], SeqLogps]:
        """The micro-batch's loss (its backward takes it divided by grad_accum), metrics and rows' log-probs."""
        cfg = self.cfg
        logp, mask, logps = token_logps(trainer, trainer.model, examples)
        reference = None
        if cfg.beta > 0:
            with torch.no_grad():
                reference = token_logps(trainer, trainer.ref_model, examples)[0]
        advantages = torch.tensor([e.advantage for e in examples], dtype=logp.dtype, device=logp.device)
        num_items, scale = None, 1.0
        if cfg.loss_type == "dapo":  # normalised over the whole update: the micro-batches' losses add up
            num_items, scale = self.update_tokens(trainer, examples), float(trainer.grad_accum)
        out = rl_token_loss(logp, None, reference, advantages, mask, cfg, num_items=num_items)
        loss = out.losses.mean() * scale
        rewards = torch.tensor([e.reward for e in examples], dtype=torch.float64).view(-1, cfg.num_generations)
        group_std = rewards.std(1)
        metrics = {
            "loss": loss.detach(),
            "reward": rewards.mean(),
            "reward_std": group_std.mean(),
            "pass_rate": (rewards >= 1).double().mean(),
            "frac_reward_zero_std": (group_std == 0).double().mean(),
            "advantage_std": advantages.std() if len(examples) > 1 else advantages.new_zeros(()),
            **{k: v.detach().float().mean() for k, v in out.metrics.items() if k != "advantage_mean"},
            "completions/clipped_ratio": torch.tensor(getattr(examples, "clipped", 0.0)),
            "entropy": mean_entropy(logps.logits, logps.rows, len(examples)),
            "cov_logp_advantage": logp_advantage_covariance(logp.detach(), advantages, mask),
            "logps/completion": logps.mean.detach().mean(),
            "time/rollout_s": torch.tensor(getattr(examples, "seconds", 0.0)),
        }
        values = torch.stack([v.detach().to("cpu", torch.float64) for v in metrics.values()]).tolist()
        return loss, dict(zip(metrics, values)), logps

    def update_tokens(self, trainer, examples: Rollout) -> float:
        """dapo's normaliser: the update's completion tokens over every process, divided by their number (TRL's
        num_items_in_batch / num_processes: the processes' gradients are averaged)."""
        local = float(getattr(examples, "num_items", sum(len(e.chosen) for e in examples)))
        processes = trainer.accelerator.num_processes
        if processes == 1:
            return local
        total = trainer.accelerator.reduce(torch.tensor(local, device=trainer.accelerator.device), reduction="sum")
        return float(total) / processes
