"""On-policy responses: sample from a model and put the samples into the training pairs, as a data transform.

The paper's Section 3 explains the benefit of on-policy methods by where their negative gradient lands: on a
response the model already finds likely (a "non-valley" region), so it squeezes less. Three variants, chosen per
stage by `StageConfig.sample`:

- `responses: rejected`, `source: policy`   on-policy DPO: y⁻ ~ π_θt(· | x) at every update, y⁺ from the data;
- `responses: both`, `source: policy`        two samples per prompt, ordered by a reward (`rank`): the higher is y⁺;
- `responses: rejected`, `source: reference` SPIN (Chen et al. 2024): y⁻ is the sample of the stage's starting
  model (the previous iteration), y⁺ the data's; several SPIN iterations are several stages.

`ResponseSampler.wrap(batches)` samples lazily, when the trainer asks for the next batch, so the policy that
samples is the one about to be updated (θ_t). The trainer knows nothing about it. Every sample is written to
`samples.jsonl` in the run directory with its step, prompt id, role and reward.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

from ldyn.config import SampleConfig
from ldyn.generate.sampling import generate
from ldyn.runs.directory import SAMPLES, RunDir
from ldyn.train.trainer import TrainExample


def unigram_f1(a: list[int], b: list[int]) -> float:
    """F1 of the token multisets of a and b (SQuAD-style overlap)."""
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def overlap_reward(sample: list[int], example: TrainExample) -> float:
    """How much more a sample resembles the data's preferred answer than its rejected one (token unigram F1)."""
    return unigram_f1(sample, example.chosen) - unigram_f1(sample, example.rejected)


REWARDS: dict[str, Callable[[list[int], TrainExample], float]] = {"overlap": overlap_reward}  # SampleConfig.rank


class ResponseSampler:
    """Replace y⁻ (or both responses) of each training pair by samples, per `SampleConfig`."""

    def __init__(
        self,
        cfg: SampleConfig,
        policy,
        reference,
        *,
        pad_id: int,
        eos_id: int,
        run: RunDir | None = None,
        tokenizer=None,
        judge=None,
    ):
        if cfg.source == "reference" and reference is None:
            raise ValueError("sampling from the reference needs a reference model")  # config.check refuses it
        self.cfg, self.pad_id, self.eos_id, self.run = cfg, pad_id, eos_id, run
        self.model = policy if cfg.source == "policy" else reference
        self.tokenizer, self.judge = tokenizer, judge

    def wrap(self, batches: Iterator[list[TrainExample]], step: int) -> Iterator[list[TrainExample]]:
        """Batches with sampled responses; `step` is the global update number of the first batch."""
        for batch in batches:
            yield self(batch, step)
            step += 1

    def __call__(self, batch: list[TrainExample], step: int) -> list[TrainExample]:
        cfg = self.cfg
        copies = 2 if cfg.responses == "both" else 1
        prompts = [e.prompt for e in batch for _ in range(copies)]
        samples = generate(
            self.model,
            prompts,
            self.pad_id,
            self.eos_id,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
        )
        out, rows = [], []
        for i, e in enumerate(batch):
            sid = f"{e.id}@{step}"  # a new id: the trainer's reference cache is keyed by example id
            if cfg.responses == "rejected":
                out.append(replace(e, id=sid, rejected=samples[i]))
                rows.append({"step": step, "example_id": e.id, "role": "rejected", "tokens": samples[i]})
                continue
            a, b = samples[2 * i], samples[2 * i + 1]
            ra, rb = self.rewards(e, a, b)
            (win, rw), (lose, rl) = ((a, ra), (b, rb)) if ra >= rb else ((b, rb), (a, ra))
            out.append(replace(e, id=sid, chosen=win, rejected=lose))
            rows += [
                {"step": step, "example_id": e.id, "role": "chosen", "tokens": win, "reward": rw},
                {"step": step, "example_id": e.id, "role": "rejected", "tokens": lose, "reward": rl},
            ]
        if self.run is not None:
            if self.tokenizer is not None:
                for row in rows:
                    row["text"] = self.tokenizer.decode(row["tokens"], skip_special_tokens=True)
            self.run.append(SAMPLES, rows)
        return out

    def rewards(self, example: TrainExample, a: list[int], b: list[int]) -> tuple[float, float]:
        """Rewards of two samples: a registered reward function, or the judge's preference (1 / 0, ties 0.5)."""
        if self.cfg.rank != "judge":
            reward = REWARDS[self.cfg.rank]
            return reward(a, example), reward(b, example)
        decode = self.tokenizer.decode
        verdict = self.judge.prefer(
            decode(example.prompt), decode(a, skip_special_tokens=True), decode(b, skip_special_tokens=True)
        )
        return {"A": (1.0, 0.0), "B": (0.0, 1.0)}.get(verdict, (0.5, 0.5))
