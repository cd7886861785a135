"""Models: `load_model` (`load.py`) gives any Hugging Face causal LM, the embedded SmolLM2-135M-Instruct or a tiny
random Llama (`pretrained.py`), or a LoRA run's checkpoint with its adapters merged (`adapters.py`, which also gives
a model its per-stage adapter and its reference with the adapter off); `modes.py` is how a model runs for a
measurement or a training forward."""
