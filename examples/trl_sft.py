"""A plain TRL SFT script with ldyn's callback, on conversational data: the model from `from_pretrained`, the data
from `load_dataset`, and `LearningDynamicsCallback()` with no arguments, which probes the trainer's own prompts
(the assistant turn and the paper's derived types) rendered with the model's chat template, as TRL trains them.
The two lines ldyn adds are marked `# ldyn`.

    python examples/trl_sft.py --model HuggingFaceTB/SmolLM2-135M-Instruct --data chats.jsonl --out runs/trl_sft

--data: JSON lines with a `messages` list (user and assistant turns), or `prompt` + `completion`.
"""

import argparse

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from ldyn.integrations import LearningDynamicsCallback  # ldyn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--data", required=True, help="conversations (messages) or prompt/completion rows, JSON lines")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--report-to", default="none", help="none, tensorboard, wandb or trackio")
    p.add_argument("--out", default="runs/trl_sft")
    a = p.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(a.model)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
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
        train_dataset=load_dataset("json", data_files=a.data, split="train"),
        processing_class=tokenizer,
        callbacks=[LearningDynamicsCallback()],  # ldyn
    )
    trainer.train()


if __name__ == "__main__":
    main()
