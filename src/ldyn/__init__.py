"""ldyn: learning dynamics of LLM finetuning (Ren & Sutherland, ICLR 2025)."""

__version__ = "0.1.0"
