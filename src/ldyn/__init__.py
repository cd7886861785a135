"""ldyn: learning dynamics of LLM finetuning (Ren & Sutherland, ICLR 2025).

The public API, imported on first use (so `import ldyn` stays light):

    cfg = ldyn.load_config("smollm2_sft_dpo", ["stages.dpo.steps=8"])   # a checked RunConfig
    out = ldyn.run(cfg)                                                 # train + probe into a run directory
    ldyn.resume("runs/smollm2_sft_dpo")                                 # continue an interrupted run
    ldyn.decompose_step(cfg)                                            # one update, decomposed into A·K·G
    run = ldyn.load_run("runs/smollm2_sft_dpo")                         # its config, metrics, probes, ...

    records = ldyn.probe(model, ldyn.probe_items(rows), pad_id)         # the instruments, on any model
    start = ldyn.begin_update(model, lr, loss, loss_cfg, examples, pad_id, reference)
    optimizer.step()
    rows = ldyn.decompose_update(model, start, items, pad_id)

    @ldyn.register_loss("my_loss", needs_reference=True, needs_rejected=True, params=("beta",))
    def my_loss(policy, reference, cfg): ...
"""

__version__ = "0.1.0"

_API = {
    "load_config": "ldyn.config",
    "RunConfig": "ldyn.config",
    "run": "ldyn.train.experiment",
    "resume": "ldyn.train.experiment",
    "decompose_step": "ldyn.train.experiment",
    "load_run": "ldyn.runs.directory",
    "register_loss": "ldyn.losses",
    "get_loss": "ldyn.losses",
    "LossConfig": "ldyn.losses",
    "load_model": "ldyn.models.load",
    "probe": "ldyn.dynamics.probing",
    "probe_items": "ldyn.dynamics.probing",
    "ProbeItem": "ldyn.dynamics.probing",
    "begin_update": "ldyn.dynamics.update",
    "decompose_update": "ldyn.dynamics.update",
    "LdynError": "ldyn.errors",
    "keep_freed_memory": "ldyn.runtime.allocator",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ldyn' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
