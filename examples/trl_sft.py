"""TRL's SFTTrainer with ldyn's LearningDynamicsCallback on prompt-completion data (the lines ldyn adds: `# ldyn`).

    python examples/trl_sft.py --model smollm2 --data ../shared/data/hh/probe_train.jsonl \
        --probes ../shared/data/hh/probe_train.jsonl --steps 20 --out runs/trl_sft
"""

import argparse

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ldyn.config import ModelConfig
from ldyn.data.preference import load_pairs
from ldyn.integrations import LearningDynamicsCallback  # ldyn
from ldyn.models.load import load_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", default="embedded", help="prompt + chosen pairs: JSONL, HF dataset, or 'embedded'")
    p.add_argument("--probes", default="embedded")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-probe", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--report-to", default="none")
    p.add_argument("--out", default="runs/trl_sft")
    a = p.parse_args(argv)

    model, tokenizer = load_model(ModelConfig(a.model))
    pairs, _ = load_pairs(a.data, n=a.n_train, skip_empty=True)
    train = Dataset.from_list([{"prompt": x.prompt, "completion": x.chosen} for x in pairs])
    args = SFTConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=a.batch_size,
        learning_rate=a.lr,
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
        a.probes, every=a.every, n=a.n_probe, max_length=a.max_length, max_prompt_length=a.max_prompt_length
    )  # ldyn
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    print(callback.run.path)


if __name__ == "__main__":
    main()
