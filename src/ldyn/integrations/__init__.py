"""ldyn inside the training people already run: `LearningDynamicsCallback` for transformers' Trainer and TRL's
SFTTrainer / DPOTrainer / GRPOTrainer / RLOOTrainer (`hf.py`)."""

from ldyn.integrations.hf import LearningDynamicsCallback

__all__ = ["LearningDynamicsCallback"]
