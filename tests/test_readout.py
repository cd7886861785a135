"""The forward-only readout decomposition in float64 on tiny models: what its hooks capture, its G, and its head term
against the exact first-order change of a step of the LM head alone."""

import math

import pytest
import torch
from helpers import OBSERVED, UPDATE, reference_logps

from ldyn.config import LossConfig
from ldyn.data.tokenize import collate
from ldyn.dynamics import readout
from ldyn.dynamics.akg import delta_log_prob, logit_jvp, loss_logit_gradient, parameters
from ldyn.dynamics.probing import ProbeItem
from ldyn.dynamics.readout_projected import projected_statistics
from ldyn.dynamics.update import Decomposer
from ldyn.losses import get_loss
from ldyn.models.pretrained import prepare, tiny_model


def model64(tokenizer, tie: bool):
    model, _ = prepare(
        tiny_model(tokenizer, torch.float64, "sdpa", seed=3, hidden_size=16, tie_word_embeddings=tie), tokenizer
    )
    return model


def update_sides(spec) -> list:
    """The update batch's rows as the readout runs them: y⁺ (or the SFT target), then y⁻ for pair losses."""
    sides = [[(e.prompt, e.chosen) for e in UPDATE]]
    return sides + ([[(e.prompt, e.rejected) for e in UPDATE]] if spec.needs_rejected else [])


@pytest.fixture
def untied64(tokenizer):
    return model64(tokenizer, tie=False)


def test_the_hooks_capture_the_heads_input_and_every_blocks_norms(untied64):
    forward = readout.readout_forward(untied64, collate(OBSERVED, 0))
    head = untied64.get_output_embeddings().weight
    assert torch.allclose(forward.logits, forward.hidden @ head.T, atol=1e-12)  # h is what the head saw, per token
    assert forward.streams.shape == (len(forward.logits), 2 * 2 * 16)  # 2 layers × (attention, MLP) norms × d
    assert forward.scored.n_tokens.tolist() == [len(r) for _, r in OBSERVED]
    # a scored token's stream entries are its own: the same row alone gives the same numbers
    alone = readout.readout_forward(untied64, collate(OBSERVED[2:], 0))
    assert torch.allclose(alone.streams, forward.streams[forward.scored.rows == 2], atol=1e-12)


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_g_equals_autograd_through_the_model(untied64, loss):
    spec, cfg = get_loss(loss), LossConfig(beta=0.5)
    reference = reference_logps(untied64, UPDATE) if spec.needs_reference else None
    update = readout.readout_update(untied64, spec, cfg, UPDATE, 0, reference)
    sides = [[(e.prompt, e.chosen) for e in UPDATE]] + (
        [[(e.prompt, e.rejected) for e in UPDATE]] * spec.needs_rejected
    )
    batches = [collate(s, 0) for s in sides]
    twin = loss_logit_gradient(untied64, spec, cfg, batches, len(UPDATE), reference)
    want = torch.cat([g[labels != -100] for _, labels, g in twin])
    assert torch.allclose(update.grad, want, atol=1e-12)
    assert update.negative.sum() == (sum(len(e.rejected) for e in UPDATE) if spec.needs_rejected else 0)


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_head_term_is_the_exact_first_order_change_of_the_head_alone(untied64, loss):
    """−η Σ ch1 per side equals the JVP along −η ∂L_side/∂W of the LM head (every other parameter still)."""
    spec, cfg, eta = get_loss(loss), LossConfig(beta=0.5), 1e-2
    reference = reference_logps(untied64, UPDATE) if spec.needs_reference else None
    update = readout.readout_update(untied64, spec, cfg, UPDATE, 0, reference)
    observed_batch = collate(OBSERVED, 0)
    observed = readout.readout_forward(untied64, observed_batch)
    head = untied64.get_output_embeddings().weight
    stats = readout.readout_statistics(observed, update, head.detach(), eta)
    theta = parameters(untied64)
    name = next(k for k, p in untied64.named_parameters() if p is head)
    for side in ("positive", "negative") if spec.needs_rejected else ("positive",):
        keep = update.negative if side == "negative" else ~update.negative
        # the slow twin: the head's gradient by autograd through a fresh forward, masked to the side's rows
        batches = [collate(s, 0) for s in update_sides(spec)]
        outs = loss_logit_gradient(untied64, spec, cfg, batches, len(UPDATE), reference)
        masks = [torch.full_like(g[..., 0], i == 1, dtype=torch.bool) for i, (_, _, g) in enumerate(outs)]
        cot = [g * (m == (side == "negative"))[..., None] for (_, _, g), m in zip(outs, masks)]
        (grad_head,) = torch.autograd.grad([z for z, _, _ in outs], [head], grad_outputs=cot)
        tangent = {k: torch.zeros_like(v) for k, v in theta.items()} | {name: -eta * grad_head}
        logits, scored, dz = logit_jvp(untied64, theta, tangent, observed_batch)
        exact = delta_log_prob(logits, scored, dz)
        assert keep.any()
        assert torch.allclose(stats[f"readout/head_{side}"], exact, atol=1e-12, rtol=1e-9), side
        assert stats[f"readout/head_{side}"].abs().max() > 1e-6  # not vacuously zero


def test_head_step_is_the_real_steps_head_term(untied64):
    observed_batch = collate(OBSERVED, 0)
    observed = readout.readout_forward(untied64, observed_batch)
    head = untied64.get_output_embeddings().weight.detach()
    torch.manual_seed(0)
    step = 1e-3 * torch.randn_like(head)
    stats = readout.readout_statistics(observed, None, head, 1e-3, head + step)
    theta = parameters(untied64)
    name = next(k for k, p in untied64.named_parameters() if p is untied64.get_output_embeddings().weight)
    tangent = {k: torch.zeros_like(v) for k, v in theta.items()} | {name: step}
    logits, scored, dz = logit_jvp(untied64, theta, tangent, observed_batch)
    assert torch.allclose(stats["readout/head_step"], delta_log_prob(logits, scored, dz), atol=1e-12)
    assert set(stats) == {"readout/head_step"}  # nothing else without the update batch


def test_a_frozen_head_leaves_its_terms_out(untied64):
    spec, cfg = get_loss("sft"), LossConfig()
    update = readout.readout_update(untied64, spec, cfg, UPDATE, 0, None)
    observed = readout.readout_forward(untied64, collate(OBSERVED, 0))
    head = untied64.get_output_embeddings().weight.detach()
    stats = readout.readout_statistics(observed, update, head, 1e-2, head_trained=False)
    assert "readout/head_positive" not in stats
    assert torch.equal(stats["sgd_positive"], stats["readout/backbone_positive"])


def test_decomposer_rows_with_the_readout(untied64):
    """A Decomposer with method="readout" around an SGD step of the DPO loss: its rows carry the observed change
    (as the exact method measures it), the parts, their sums and the mass split; the one-step SGD change of a
    small step is first order: the head term alone is exact for the head, so an update of the head only is
    predicted to within its second-order part (1e-3 of it at η = 1e-5)."""
    spec, cfg, eta = get_loss("dpo"), LossConfig(beta=0.5), 1e-5
    reference = reference_logps(untied64, UPDATE)
    items = [ProbeItem(f"o{i}", t, p, r) for i, (p, r) in enumerate(OBSERVED) for t in ("chosen",)]
    decomposer = Decomposer(items, 0, method="readout")
    decomposer.begin(untied64, eta, loss=spec, loss_cfg=cfg, examples=UPDATE, reference=reference)
    head = untied64.get_output_embeddings().weight
    # an SGD step of the head alone
    batches = [collate(s, 0) for s in update_sides(spec)]
    outs = loss_logit_gradient(untied64, spec, cfg, batches, len(UPDATE), reference)
    (grad_head,) = torch.autograd.grad([z for z, _, _ in outs], [head], grad_outputs=[g for _, _, g in outs])
    with torch.no_grad():
        head -= eta * grad_head
    rows = decomposer.finish(untied64)
    assert len(rows) == len(items) and all(r["method"] == "readout" for r in rows)
    for r in rows:
        head_only = r["readout/head_positive"] + r["readout/head_negative"]
        assert r["observed"] == pytest.approx(head_only, rel=1e-3, abs=1e-9)
        assert r["readout/head_step"] == pytest.approx(head_only, rel=1e-9)  # the real step is this SGD step
        assert r["sgd_positive"] + r["sgd_negative"] == pytest.approx(r["predicted"])
        mass = r["predicted/mass_argmax"] + r["predicted/mass_topk"] + r["predicted/mass_tail"]
        assert abs(mass) < 1e-10  # first-order mass is conserved
        assert {"observed/lbk", "observed/sign_delta", "g_norm_sq"} <= set(r)


def test_tied_models_work_too(tokenizer):
    model = model64(tokenizer, tie=True)
    spec = get_loss("sft")
    start = readout.begin(
        model, 1e-3, [ProbeItem("o", "chosen", *OBSERVED[0])], 0, loss=spec, loss_cfg=LossConfig(), examples=UPDATE
    )
    rows = readout.finish(model, start)
    assert rows[0]["observed"] == 0.0 and rows[0]["readout/head_step"] == 0.0  # nothing moved
    assert math.isfinite(rows[0]["sgd_positive"]) and rows[0]["sgd_positive"] != 0.0


def test_ldyn_decompose_with_the_readout(tmp_path):
    """`decompose.method=readout` through ldyn's trainer: the same update as the exact method's, the same observed
    change, the readout's parts summing to its SGD-kernel columns, and the decomposition figure drawn."""
    from helpers import decompose_rows

    from ldyn.runs.directory import RunDir

    exact = decompose_rows(tmp_path / "jvp")
    rows = decompose_rows(tmp_path / "readout", "decompose.method=readout")
    assert [(r["example_id"], r["type"]) for r in rows] == [(r["example_id"], r["type"]) for r in exact]
    for a, b in zip(exact, rows):
        assert b["observed"] == pytest.approx(a["observed"], rel=1e-9, abs=1e-12)
        for side in ("positive", "negative"):
            assert b[f"sgd_{side}"] == pytest.approx(b[f"readout/head_{side}"] + b[f"readout/backbone_{side}"])
    assert (RunDir(tmp_path / "readout").figures / "decomposition.png").is_file()


def test_packed_forward_equals_its_padded_twin(untied64):
    """Shared-prompt rows packed (each prompt once: the CPU's layout) give every scored token the same logits,
    hidden state and streams as the padded batch of the same rows, in float64."""
    from ldyn.dynamics.readout_capture import packed_readout_forward
    from ldyn.logprobs.shared_prompt import SharedRows

    pairs = [(f"p{i}" if i != 1 else "p0", p, r) for i, (p, r) in enumerate(OBSERVED)]  # rows 0 and 1 share a prompt
    packed = packed_readout_forward(untied64, SharedRows.of(pairs))
    padded = readout.readout_forward(untied64, collate(OBSERVED, 0))
    order_packed, order_padded = packed.scored.sequence_order(), padded.scored.sequence_order()
    for name in ("logits", "hidden", "streams"):
        a, b = getattr(packed, name)[order_packed], getattr(padded, name)[order_padded]
        assert torch.allclose(a, b, atol=1e-10), name
    assert torch.equal(packed.scored.targets[order_packed], padded.scored.targets[order_padded])


def test_every_update_reuses_the_observed_forward_only_while_nothing_changed(untied64, monkeypatch):
    """Decomposing every update, the forward at θ_{t+1} serves as the next update's at θ_t: the same rows as
    running it again, one forward fewer; a parameter changed in between (its version bumps) is noticed."""
    spec, cfg, eta = get_loss("sft"), LossConfig(), 1e-3
    items = [ProbeItem(f"o{i}", "chosen", p, r) for i, (p, r) in enumerate(OBSERVED)]
    calls = []
    for name in ("forward_of", "scored_logits"):  # count every observed forward
        real = getattr(readout, name)
        monkeypatch.setattr(readout, name, lambda model, rows, real=real: calls.append(1) or real(model, rows))

    def step():
        with torch.no_grad():
            for p in untied64.parameters():
                p.add_(1e-4 * torch.ones_like(p))

    def two_updates(every_update: bool, tamper: bool = False) -> list[dict]:
        d = Decomposer(items, 0, method="readout", every_update=every_update)
        out = []
        for _ in range(2):
            d.begin(untied64, eta, loss=spec, loss_cfg=cfg, examples=UPDATE)
            step()
            out += d.finish(untied64)
            if tamper:
                with torch.no_grad():
                    next(untied64.parameters()).mul_(1.0)  # same values, a new version: not the kept θ
        return out

    state = {k: v.clone() for k, v in untied64.state_dict().items()}
    fresh = two_updates(False)
    n_fresh, calls[:] = len(calls), []
    untied64.load_state_dict(state)
    reused = two_updates(True)
    assert n_fresh == 4 and len(calls) == 3  # the second begin reused the first finish's forward
    for a, b in zip(fresh, reused):
        assert a.keys() == b.keys()
        for k in (k for k in a if k not in ("method", "example_id", "type")):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
    untied64.load_state_dict(state)
    calls[:] = []
    two_updates(True, tamper=True)
    assert len(calls) == 4  # begin ran its own forward again: the parameters changed since the kept one


@pytest.mark.parametrize("loss, head_trained", [("dpo", True), ("sft", True), ("dpo", False)])
def test_the_projected_statistics_equal_their_full_vocabulary_twin(untied64, loss, head_trained):
    """`readout_projected.projected_statistics` (Δz read at the scored token, the top K and under π) against
    `readout_statistics` (every part's Δz over the whole vocabulary), in float64: the same keys, the same numbers."""
    spec, cfg, eta = get_loss(loss), LossConfig(beta=0.5), 1e-2
    reference = reference_logps(untied64, UPDATE) if spec.needs_reference else None
    update = readout.readout_update(untied64, spec, cfg, UPDATE, 0, reference)
    observed = readout.readout_forward(untied64, collate(OBSERVED, 0))
    head = untied64.get_output_embeddings().weight.detach()
    torch.manual_seed(1)
    after = head + 1e-3 * torch.randn_like(head)
    for part in (update, None):
        want = readout.readout_statistics(observed, part, head, eta, after, head_trained=head_trained)
        got = projected_statistics(observed, part, head, eta, after, head_trained=head_trained)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert value.abs().max() > 1e-9, key  # not vacuously zero
            torch.testing.assert_close(got[key], value, rtol=1e-9, atol=1e-13, msg=key)


@pytest.mark.parametrize("stage", ["dpo", "sft"])
def test_the_update_side_from_the_training_step_equals_its_own_forward(tmp_path, monkeypatch, stage):
    """In ldyn's trainer (one process, packed on a CPU) the readout takes G, h and h̃ from the training step's own
    forward (`readout.update_from_step`); a run made to run the update batch itself (the step's forward refused)
    gives the same rows in float64, and the step's forward is read, not repeated."""
    from helpers import decompose_rows

    args = ("decompose.method=readout", f"--stage={stage}") if stage == "sft" else ("decompose.method=readout",)
    calls = []
    real = readout.update_from_step
    monkeypatch.setattr(readout, "update_from_step", lambda *a: calls.append(real(*a)) or calls[-1])
    from_step = decompose_rows(tmp_path / "step", *args)
    assert len(calls) == 1 and calls[0] is not None  # the step's forward was read
    monkeypatch.setattr(readout, "update_from_step", lambda *a: None)
    own = decompose_rows(tmp_path / "own", *args)
    assert [(r["example_id"], r["type"]) for r in own] == [(r["example_id"], r["type"]) for r in from_step]
    for a, b in zip(own, from_step):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key
    assert any(abs(r["sgd_positive"]) > 1e-9 for r in own)
