"""How a model runs for a measurement or a training forward: eval mode, the measurement mode forward-mode
autodiff needs, attention kernels that keep shapes cheap, and the compiled training forward."""

from __future__ import annotations

import contextlib
import copy

import torch


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode (dropout off) for a measurement, then back in the mode the trainer had set."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


@contextlib.contextmanager
def measurement_mode(model):
    """Eval mode (no dropout, no gradient checkpointing), and without the forward hooks transformers puts on the
    input embeddings for gradient checkpointing (`enable_input_require_grads`, possibly more than once): they call
    `requires_grad_`, which forward-mode autodiff refuses. Everything is restored afterwards."""
    removed = []
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):  # torch keeps a module's forward hooks here
            if getattr(hook, "__name__", "") == "make_inputs_require_grads":
                removed.append((module, key, hook))
                del module._forward_hooks[key]
    try:
        with eval_mode(model), shape_stable_attention():
            yield model
    finally:
        for module, key, hook in removed:
            module._forward_hooks[key] = hook


def shape_stable_attention():
    """Scaled dot-product attention by any backend but cuDNN's. On Hopper GPUs torch (2.11) prefers cuDNN, which
    builds an execution plan for every new shape: ~23 ms of CPU time per forward call and ~33 ms per backward, per
    layer. Every training batch and probe batch has its own sequence length, so the GPU mostly waited (a 1B model's
    bf16 SFT update, profiled on an H200: 1.17 s with cuDNN, 0.31 s with flash or memory-efficient attention). A
    no-op on a CPU, which has no cuDNN attention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def compiled(model, mode: str = "default"):
    """The model with its repeated blocks `torch.compile`d, for training forwards; the model itself stays eager.

    Returns a shallow copy of the module tree down to each block (transformers' `_no_split_modules`: the decoder
    layers) with the block replaced by its compiled wrapper; parameters, buffers and hooks are the model's own, so
    gradients land where the optimizer looks, while probes and the decomposition keep running -- and
    differentiating in forward mode -- the eager model. Compiling one layer that every layer reuses ("regional
    compilation") takes seconds where the whole model takes minutes; shapes are dynamic, so any sequence length
    reuses it. "default" fuses the elementwise operators (a fraction of the kernel launches that bound a small
    model on a GPU, fewer passes over memory on a CPU); "max-autotune" also searches for matrix-product kernels;
    "reduce-overhead" replays each block as a CUDA graph. A model with no declared blocks is compiled whole.
    """
    if mode == "no":
        return model
    options = {"mode": None if mode == "default" else mode, "dynamic": True}
    blocks = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}

    def swap(module):
        if type(module).__name__ in blocks:
            return torch.compile(module, **options)
        children = {name: swap(child) for name, child in module._modules.items()}
        if all(children[name] is child for name, child in module._modules.items()):
            return module
        clone = copy.copy(module)  # shares parameters, buffers and hooks; only the children differ
        clone._modules = children
        return clone

    swapped = swap(model)
    return swapped if swapped is not model else torch.compile(model, **options)
