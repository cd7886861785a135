"""A plain TRL DPO script with ldyn's callback: the model from `from_pretrained`, the data from `load_dataset`,
and `LearningDynamicsCallback()` with no arguments, which probes the trainer's own prompts (and its eval split's)
with the paper's response types. The two lines ldyn adds are marked `# ldyn`.

    python examples/trl_dpo.py --model HuggingFaceTB/SmolLM2-135M-Instruct --data pairs.jsonl --out runs/trl_dpo
    ldyn report runs/trl_dpo/ldyn --out runs/trl_dpo/report.html

--data: preference rows (prompt, chosen, rejected; text or conversational) as JSON lines. Offline, the embedded
SmolLM2 is a local checkpoint once ldyn has converted it: `--model $(python -c "from ldyn.models.pretrained import
embedded_smollm2; print(embedded_smollm2())")`, and `--data ../shared/data/hh/probe_train.jsonl` is the paper
authors' HH set.
"""

import argparse

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from ldyn.integrations import LearningDynamicsCallback  # ldyn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--data", required=True, help="preference pairs as JSON lines")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--report-to", default="none", help="none, tensorboard, wandb or trackio")
    p.add_argument("--out", default="runs/trl_dpo")
    a = p.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(a.model)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train").select_columns(["prompt", "chosen", "rejected"])
    data = data.train_test_split(test_size=0.1, seed=0)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(
            output_dir=a.out,
            max_steps=a.steps,
            per_device_train_batch_size=2,
            learning_rate=a.lr,
            max_length=a.max_length,
            logging_steps=1,
            save_strategy="no",
            report_to=a.report_to,
            bf16=torch.cuda.is_available(),  # a CPU without native bf16 runs it ~50x slower than fp32
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback()],  # ldyn
    )
    trainer.train()


if __name__ == "__main__":
    main()
