"""TRL's DPOTrainer with ldyn's LearningDynamicsCallback on ldyn's models (the tiny one for tests), with the batch
settings a launch test compares across process counts (tests/test_integrations.py). The plain user script is
examples/trl_dpo.py.

    python tests/trl_dpo_tiny.py --model smollm2 --data ../shared/data/hh/probe_train.jsonl \
        --probes ../shared/data/hh/probe_train.jsonl --steps 20 --out runs/trl_dpo
    ldyn report runs/trl_dpo/ldyn --out runs/trl_dpo/report.html

--model: "smollm2" (the embedded SmolLM2-135M-Instruct), "tiny" (a random 2-layer Llama, for tests), or any Hugging
Face model id or local directory. --data: preference pairs (prompt, chosen, rejected) as JSONL or a HF dataset.
"""

import argparse

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from ldyn.config import ModelConfig
from ldyn.data.preference import load_pairs
from ldyn.integrations import LearningDynamicsCallback  # ldyn
from ldyn.models.load import load_model
from ldyn.models.pretrained import frozen_copy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", default="embedded", help="preference pairs: JSONL, HF dataset, or 'embedded'")
    p.add_argument("--probes", default="embedded", help="probe set in the paper authors' format")
    p.add_argument("--n-train", type=int, default=64, help="training pairs")
    p.add_argument("--n-probe", type=int, default=8, help="probed prompts")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=5, help="probe every k optimizer steps")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--report-to", default="none", help="none, tensorboard, wandb or trackio")
    p.add_argument("--decompose-every", type=int, default=0, help="observed vs predicted change every k updates")
    p.add_argument("--out", default="runs/trl_dpo")
    a = p.parse_args(argv)

    model, tokenizer = load_model(ModelConfig(a.model))
    pairs, _ = load_pairs(a.data, n=a.n_train, skip_empty=True)
    train = Dataset.from_list([{"prompt": x.prompt, "chosen": x.chosen, "rejected": x.rejected} for x in pairs])
    args = DPOConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.lr,
        beta=a.beta,
        max_length=a.max_length,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=a.report_to,
        seed=0,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
    )
    callback = LearningDynamicsCallback(
        a.probes,
        every=a.every,
        n=a.n_probe,
        max_length=a.max_length,
        max_prompt_length=a.max_prompt_length,
        decompose_every=a.decompose_every,
    )  # ldyn
    trainer = DPOTrainer(
        model=model,
        ref_model=frozen_copy(model),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    print(callback.run.path)


if __name__ == "__main__":
    main()
