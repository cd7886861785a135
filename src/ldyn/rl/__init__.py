"""Reinforcement learning with verifiable rewards, the foundations of a GRPO stage: the GRPO family's advantages and
clipped token objective as pure functions (`objective.py`, TRL's names and definitions), and seeded tasks with a
checkable answer and their reward functions (`tasks.py`). Sampling for pass@k lives in `generate/pass_at_k.py`,
which sits above this package."""
