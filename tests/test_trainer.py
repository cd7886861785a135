"""The training loop on tiny models: every parameter moves, callbacks fire in order, accumulation is exact."""

import copy

import pytest
import torch
from accelerate import Accelerator
from helpers import EXAMPLES, compiled_against_eager

from ldyn.config import LossConfig, OptimConfig
from ldyn.logprobs import packed as packing
from ldyn.losses import get_loss
from ldyn.models.pretrained import frozen_copy, prepare, tiny_model
from ldyn.train.trainer import Trainer, TrainExample, batches


def make_trainer(model, loss="dpo", optim="adamw", lr=1e-2, callbacks=(), grad_accum=1, **loss_kw):
    spec = get_loss(loss)
    return Trainer(
        model,
        spec,
        LossConfig(name=loss, **loss_kw),
        OptimConfig(name=optim, lr=lr),
        accelerator=Accelerator(cpu=True),
        pad_id=0,
        ref_model=frozen_copy(model) if spec.needs_reference else None,
        callbacks=callbacks,
        grad_accum=grad_accum,
    )


@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_three_steps_change_every_trainable_parameter(tokenizer, loss):
    model, _ = prepare(tiny_model(tokenizer, seed=3), tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = make_trainer(model, loss).fit(batches(EXAMPLES, 4, seed=0), steps=3)
    assert state.step == 3
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert set(state.metrics) >= {"loss", "logps/chosen", "grad_norm", "lr", "examples_per_s"}


def test_callbacks_fire_in_order(tokenizer):
    model, _ = prepare(tiny_model(tokenizer), tokenizer)
    events = []

    class Recorder:
        def on_train_start(self, s):
            events.append(("start", s.step))

        def on_step_start(self, s):
            events.append(("before", s.step))

        def on_step_end(self, s):
            events.append(("after", s.step))

        def on_train_end(self, s):
            events.append(("end", s.step))

    make_trainer(model, "sft", callbacks=[Recorder()]).fit(batches(EXAMPLES, 2, seed=0), steps=2)
    assert events == [("start", 0), ("before", 0), ("after", 1), ("before", 1), ("after", 2), ("end", 2)]


def test_gradient_accumulation_equals_one_big_batch(tiny64):
    big, small = tiny64, copy.deepcopy(tiny64)
    make_trainer(big, "dpo", optim="sgd", lr=0.1).fit(batches(EXAMPLES, 4, seed=0), steps=2)
    make_trainer(small, "dpo", optim="sgd", lr=0.1, grad_accum=2).fit(batches(EXAMPLES, 2, seed=0), steps=2)
    for (name, a), b in zip(big.named_parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-12), name


def test_reference_log_probs_are_computed_once_per_example(tokenizer):
    model, _ = prepare(tiny_model(tokenizer), tokenizer)
    trainer = make_trainer(model, "dpo")
    calls = []
    trainer.ref_model.register_forward_hook(lambda m, i, o: calls.append(i))
    trainer.fit(batches(EXAMPLES, 4, seed=0), steps=6)  # three passes over 8 examples
    # two batches of unseen examples, each packed into one forward pass (`plan_passes`: short rows are one pass)
    assert len(calls) == 2 and len(trainer.reference_cache) == 8


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_pairs_sharing_their_prompt_train_exactly_as_the_plain_path(tokenizer, loss, monkeypatch):
    """The fast path (packed: prompt run once for chosen and rejected) against its slow twin, in float64: the same
    loss and the same gradient for every parameter (sdpa: eager attention takes its softmax in float32)."""
    model, _ = prepare(tiny_model(tokenizer, dtype=torch.float64, attn_implementation="sdpa", seed=5), tokenizer)
    trainer = make_trainer(model, loss)
    monkeypatch.setattr(packing, "PASS_OVERHEAD", 0)  # the prompts run in separate passes
    examples = [
        TrainExample(str(i), [1 + i] * (2 + i), [4, 5 + i, 6] * (1 + 2 * i), [7, 8 + i] * (3 - i)) for i in range(3)
    ]
    responses = [(i, e.chosen) for i, e in enumerate(examples)] + [(i, e.rejected) for i, e in enumerate(examples)]
    assert len(packing.packed_passes(model, [e.prompt for e in examples], responses)) > 1
    grads = []
    for shared in (True, False):
        model.zero_grad()
        trainer.packs_rows = shared  # the plain path is what runs under several processes, or on a GPU
        loss_value, *_ = trainer.loss_on(examples)
        loss_value.backward()
        grads.append((loss_value.detach(), [p.grad.clone() for p in model.parameters()]))
    (fast_loss, fast), (slow_loss, slow) = grads
    assert torch.allclose(fast_loss, slow_loss, rtol=0, atol=1e-12)
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("optim", ["rmsprop", "sgd"])
def test_other_optimizers_train(tokenizer, optim):
    model, _ = prepare(tiny_model(tokenizer), tokenizer)
    state = make_trainer(model, "sft", optim=optim, lr=1e-3).fit(batches(EXAMPLES, 4, seed=0), steps=2)
    assert state.metrics["loss"] > 0


def test_warmup_is_linear_then_constant(tokenizer):
    model, _ = prepare(tiny_model(tokenizer), tokenizer)
    trainer = make_trainer(model, "sft", lr=1.0)
    trainer.optim_cfg.warmup_steps = 3
    assert [trainer.lr_at(t) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_batches_reshuffle_each_pass_and_resume_exactly():
    ids = lambda it, n: [[e.id for e in next(it)] for _ in range(n)]  # noqa: E731
    first = ids(batches(EXAMPLES, 4, seed=0), 6)
    assert sorted(sum(first[:2], [])) == sorted(e.id for e in EXAMPLES)  # a pass covers each example once
    assert first[:2] != first[2:4]  # the next pass is reshuffled
    assert ids(batches(EXAMPLES, 4, seed=0, skip=3), 3) == first[3:]
    assert ids(batches(EXAMPLES, 4, seed=0, rank=1, world=2), 1) == [first[0][1::2]]


def test_bf16_mixed_precision_trains_while_probes_stay_fp32(tokenizer):
    from ldyn.data.tokenize import TokenizedRow
    from ldyn.dynamics.probing import probe, probe_items

    model, _ = prepare(tiny_model(tokenizer), tokenizer)
    trainer = Trainer(
        model,
        get_loss("dpo"),
        LossConfig(),
        OptimConfig(lr=1e-3),
        accelerator=Accelerator(cpu=True),
        pad_id=0,
        ref_model=frozen_copy(model),
        mixed_precision="bf16",
    )
    assert torch.isfinite(torch.tensor(trainer.fit(batches(EXAMPLES, 4, seed=0), steps=2).metrics["loss"]))
    items = probe_items([TokenizedRow("a", [1, 2, 3], {"chosen": [4, 5, 6], "rejected": [7]}, False)])
    plain = probe(model, items, 0, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as if called from inside a bf16 training step
        inside = probe(model, items, 0, progress=False)
    assert plain == inside


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_a_compiled_training_forward_gives_the_eager_loss_and_gradients(tokenizer, loss, packed, monkeypatch):
    """`compile` traces the decoder layers and trains through them (here with the aot_eager backend, which runs
    the traced forward and backward graphs without generating code); the slow test compiles with inductor."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    (eager_loss, eager), (loss_value, grads) = compiled_against_eager(tokenizer, loss, packed)
    assert torch.allclose(eager_loss, loss_value, rtol=0, atol=1e-12)
    for a, b in zip(eager, grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["sft", "dpo", "ipo"])
def test_updates_of_fixed_padded_shapes_train_exactly_as_the_eager_paths(tokenizer, loss, monkeypatch):
    """`cuda_graphs` lays a batch out in fixed shapes a CUDA graph can replay: the packed passes (or, for a model
    that takes no packed row, one padded row per response) with their lengths rounded up to a bucket, and the
    scored positions gathered by index; on a CPU the same update runs eagerly. In float64, four updates (two
    batch shapes, each met twice; the second meeting reuses the first's buffers) give every update's loss and the
    final parameters of the eager packed path and of the eager padded one."""
    examples = [
        TrainExample(str(i), [1 + i] * (2 + i), [4, 5 + i, 6] * (1 + 2 * (i % 3)), [7, 8 + i] * (3 - i % 3))
        for i in range(8)
    ]
    data = [examples[:4], examples[4:], examples[:4], examples[4:]]
    runs = {}
    for name in ("packed", "padded", "graphed", "graphed, padded rows"):
        model, _ = prepare(tiny_model(tokenizer, dtype=torch.float64, attn_implementation="sdpa", seed=5), tokenizer)
        spec = get_loss(loss)
        trainer = Trainer(
            model,
            spec,
            LossConfig(name=loss),
            OptimConfig(name="adamw", lr=1e-2, max_grad_norm=1.0),
            accelerator=Accelerator(cpu=True),
            pad_id=0,
            ref_model=frozen_copy(model) if spec.needs_reference else None,
            cuda_graphs=4 if name.startswith("graphed") else 0,
        )
        if name == "padded":
            trainer.packs_rows = False
        if name == "graphed, padded rows":
            monkeypatch.setattr("ldyn.train.graphs.packable", lambda model: False)
        losses = [trainer.update([batch], t)["loss"] for t, batch in enumerate(data)]
        monkeypatch.undo()
        runs[name] = losses, [p.detach().clone() for p in model.parameters()]
        if name.startswith("graphed"):  # two shapes, each met with the reference's log-probs computed, then cached
            assert len(trainer.graphed.recorded) == (4 if spec.needs_reference else 2)
            assert "visible" in next(iter(trainer.graphed.recorded.values())).inputs or name.endswith("rows")
    for name in ("padded", "graphed", "graphed, padded rows"):
        assert runs[name][0] == pytest.approx(runs["packed"][0], rel=0, abs=1e-10), name
        for a, b in zip(runs[name][1], runs["packed"][1]):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), name


def test_cuda_graphs_need_one_process_one_micro_batch_and_no_compile(tokenizer):
    model, _ = prepare(tiny_model(tokenizer), tokenizer)
    with pytest.raises(Exception, match="grad_accum=1"):
        Trainer(
            model,
            get_loss("sft"),
            LossConfig(name="sft"),
            OptimConfig(name="adamw", lr=1e-2),
            accelerator=Accelerator(cpu=True),
            pad_id=0,
            grad_accum=2,
            cuda_graphs=64,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the capture itself")
@pytest.mark.parametrize("loss", ["sft", "dpo"])
def test_updates_replayed_as_cuda_graphs_train_as_the_eager_update(tokenizer, loss):
    """On a GPU: the first meeting of a shape records its graph, later ones replay it (new inputs copied in, the
    gradients hooked back after the trainer unhooked them). In fp32, with other attention kernels (no mask), so to
    float32's rounding: every update's loss, and the parameters, against the distance they travelled."""
    examples = [
        TrainExample(str(i), [1 + i] * (2 + i), [4, 5 + i, 6] * (1 + 2 * (i % 3)), [7, 8 + i] * (3 - i % 3))
        for i in range(8)
    ]
    data = [examples[:4], examples[4:], examples[:4], examples[4:], examples[:4]]
    runs = []
    for graphs in (0, 4):
        model, _ = prepare(tiny_model(tokenizer, attn_implementation="sdpa", seed=5), tokenizer)
        model.cuda()
        start = [p.detach().clone() for p in model.parameters()]
        spec = get_loss(loss)
        trainer = Trainer(
            model,
            spec,
            LossConfig(name=loss),
            OptimConfig(name="adamw", lr=1e-3, max_grad_norm=1.0),
            accelerator=Accelerator(),
            pad_id=0,
            cuda_graphs=graphs,
            ref_model=frozen_copy(model) if spec.needs_reference else None,
        )
        losses = [trainer.update([batch], t)["loss"] for t, batch in enumerate(data)]
        runs.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
        if graphs:
            assert len(trainer.graphed.recorded) == (4 if spec.needs_reference else 2)
            assert all(r.graph is not None for r in trainer.graphed.recorded.values())
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-4, abs=1e-5)
    travelled = runs[0][1] - torch.cat([p.flatten() for p in start])
    assert (runs[1][1] - runs[0][1]).norm() < 1e-3 * travelled.norm()
