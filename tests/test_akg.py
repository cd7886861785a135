"""The A·K·G engine in float64 on tiny models: matrix-free equals explicit, first order, G from autograd."""

import math

import pytest
import torch
from helpers import OBSERVED, UPDATE, decompose_rows, reference_logps

from ldyn.config import LossConfig
from ldyn.data.tokenize import IGNORE, collate, collate_pairs
from ldyn.dynamics.akg import (
    UpdateDirections,
    change_statistics,
    decompose,
    delta_log_prob,
    logit_jvp,
    loss_logit_gradient,
    parameters,
    update_directions,
)
from ldyn.dynamics.differences import central_difference, one_sided_difference, parameter_buffer
from ldyn.dynamics.entk import entk, kernel_norm, predicted_logit_change
from ldyn.dynamics.probing import ProbeItem
from ldyn.dynamics.update import Decomposer
from ldyn.logprobs.packed import packed_logps
from ldyn.logprobs.padded import scored_logps, sequence_logps
from ldyn.logprobs.shared_prompt import SharedRows
from ldyn.losses import PairLogps, get_loss
from ldyn.models.pretrained import prepare, tiny_model
from ldyn.train.trainer import TrainExample


@pytest.fixture
def small64(tokenizer):
    model, _ = prepare(tiny_model(tokenizer, torch.float64, "sdpa", seed=2, hidden_size=16), tokenizer)
    return model


def test_jvp_path_equals_explicit_kernel_product(small64):
    spec, cfg, eta = get_loss("dpo"), LossConfig(beta=0.5), 1e-3
    reference = reference_logps(small64, UPDATE)
    dirs = update_directions(small64, spec, cfg, UPDATE, 0, reference)
    tangent = {k: -eta * (dirs.positive[k] + dirs.negative[k]) for k in dirs.positive}
    observed = collate(OBSERVED, 0)
    theta = parameters(small64)
    logits, scored, dz = logit_jvp(small64, theta, tangent, observed)  # the scored tokens, sequence by sequence
    # the slow twin: explicit Jacobians, K = J_o J_uᵀ, Δz = −η K G
    upd = collate_pairs(UPDATE, 0, True)
    [(_, labels_u, grad)] = loss_logit_gradient(small64, spec, cfg, [upd], len(UPDATE), reference)
    kernel = entk(small64, theta, observed, upd)
    dz_explicit = predicted_logit_change(kernel, grad[labels_u != IGNORE].detach(), eta)
    assert torch.allclose(dz, dz_explicit, atol=1e-8, rtol=0)
    # a vocabulary subset gives the matching sub-block, and ‖K‖_F is its Frobenius norm
    vocab = torch.tensor([3, 8, 42])
    sub = entk(small64, theta, observed, upd, vocab)
    assert torch.allclose(sub, kernel[:, :, vocab][:, :, :, vocab], atol=1e-12)
    assert torch.allclose(kernel_norm(sub)[0, 0], (sub[0, 0] ** 2).sum().sqrt())
    # and A applied analytically equals the explicit softmax Jacobian I − 1πᵀ
    per_token = []
    for z, d, y in zip(logits, dz, scored.targets):
        a = torch.eye(len(z), dtype=z.dtype) - torch.softmax(z, -1)[None, :].expand(len(z), -1)
        per_token.append((a @ d)[y])
    explicit = torch.zeros(len(OBSERVED), dtype=torch.float64).index_add(0, scored.rows, torch.stack(per_token))
    assert torch.allclose(delta_log_prob(logits, scored, dz), explicit, atol=1e-12)


def test_positive_and_negative_directions_sum_to_the_loss_gradient(small64):
    spec, cfg = get_loss("dpo"), LossConfig()
    reference = reference_logps(small64, UPDATE)
    dirs = update_directions(small64, spec, cfg, UPDATE, 0, reference)
    small64.zero_grad()
    logits_batch = collate_pairs(UPDATE, 0, True)
    logps = sequence_logps(small64, logits_batch)
    policy = PairLogps(logps.sum[:2], logps.sum[2:], logps.n_tokens[:2], logps.n_tokens[2:])
    spec.fn(policy, reference, cfg).losses.mean().backward()
    for name, p in small64.named_parameters():
        assert torch.allclose(dirs.positive[name] + dirs.negative[name], p.grad, atol=1e-12), name
    # the slow twin of each part: G of the joint batch, masked to the part's rows, back through the joint batch
    [(logits, _, grad)] = loss_logit_gradient(small64, spec, cfg, [logits_batch], 2, reference)
    names, params = zip(*small64.named_parameters())
    for rows, part in ((slice(0, 2), dirs.positive), (slice(2, 4), dirs.negative)):
        masked = torch.zeros_like(grad)
        masked[rows] = grad[rows]
        for name, g in zip(names, torch.autograd.grad(logits, params, masked, retain_graph=True)):
            assert torch.allclose(part[name], g, atol=1e-12), name


@pytest.mark.parametrize("loss", ["dpo", "sft"])
@pytest.mark.parametrize("forward", ["padded", "scored", "packed"])
def test_directions_from_the_steps_own_graph_and_gradient(small64, loss, forward):
    spec, cfg, n = get_loss(loss), LossConfig(beta=0.5), len(UPDATE)
    reference = reference_logps(small64, UPDATE) if spec.needs_reference else None
    own = update_directions(small64, spec, cfg, UPDATE, 0, reference)
    # the training step: its forward (each way the trainer runs one), the directions from its graph, its backward
    small64.zero_grad()
    batch = collate_pairs(UPDATE, 0, spec.needs_rejected)
    if forward == "packed":
        responses = [(i, e.chosen) for i, e in enumerate(UPDATE)]
        responses += [(i, e.rejected) for i, e in enumerate(UPDATE)] if spec.needs_rejected else []
        logps = packed_logps(small64, [e.prompt for e in UPDATE], responses)
    else:
        logps = (sequence_logps if forward == "padded" else scored_logps)(small64, batch)
    step_loss = spec.fn(PairLogps.from_rows(logps.sum, logps.n_tokens, n), reference, cfg).losses.mean()
    step = UpdateDirections.from_step(small64, step_loss, logps, n)
    assert step.awaiting_gradient and step.g_norm_sq == pytest.approx(own.g_norm_sq, rel=1e-10)
    step_loss.backward()
    out = parameter_buffer(parameters(small64)) if forward == "packed" else None  # a kept buffer, or new tensors
    step.from_gradient({name: p.grad for name, p in small64.named_parameters()}, out)
    assert not step.awaiting_gradient and (step.negative is None) == (own.negative is None)
    if out is not None and spec.needs_rejected:
        assert all(step.negative[k] is out[k] for k in out)
    for part in ("positive", "negative") if spec.needs_rejected else ("positive",):
        for name, g in getattr(own, part).items():
            assert torch.allclose(getattr(step, part)[name], g, atol=1e-12), (part, name)
    assert any(g.abs().max() > 1e-6 for g in step.positive.values())


@pytest.mark.parametrize("method", ["jvp", "central", "one_sided"])
def test_the_real_step_left_to_decompose_gives_the_rows_of_the_formed_step(small64, method):
    """`tangents["step"] = None`: forward-mode forms θ_after − θ itself, the differences never do (θ − step as
    2θ − θ_after, every shifted set in one buffer); the rows equal those of the step handed over formed."""
    dirs = update_directions(small64, get_loss("dpo"), LossConfig(), UPDATE, 0, reference_logps(small64, UPDATE))
    theta = {k: v.clone() for k, v in parameters(small64).items()}
    after = {k: v - 1e-2 * (dirs.positive[k] + 0.5 * dirs.negative[k]) for k, v in theta.items()}
    formed = {"step": {k: after[k] - theta[k] for k in theta}, "sgd_positive": dirs.positive}
    rows = collate(OBSERVED, 0)
    want = decompose(small64, theta, after, formed, rows, 0, method)
    got = decompose(small64, theta, after, formed | {"step": None}, rows, 0, method)
    assert want.keys() == got.keys() and want["predicted/step"].abs().max() > 1e-4
    for k, v in want.items():
        assert torch.allclose(got[k], v, rtol=1e-10, atol=1e-13), k


@pytest.mark.parametrize("method, order", [("central", 3), ("one_sided", 2)])
def test_finite_differences_equal_the_jvp_up_to_their_order(small64, method, order):
    spec, cfg = get_loss("dpo"), LossConfig(beta=0.5)
    dirs = update_directions(small64, spec, cfg, UPDATE, 0, reference_logps(small64, UPDATE))
    theta, observed = parameters(small64), collate(OBSERVED, 0)
    errors = []
    for eta in (0.02, 0.01, 0.005):
        tangent = {k: -eta * (dirs.positive[k] + dirs.negative[k]) for k in dirs.positive}
        base, _, exact = logit_jvp(small64, theta, tangent, observed)
        with torch.no_grad():
            if method == "central":
                approx = central_difference(small64, theta, tangent, observed)
            else:
                approx = one_sided_difference(small64, theta, tangent, observed, base)
        assert exact.abs().max() > 1e-3
        errors.append(float((approx - exact).abs().max()))
    # the error is O(‖v‖^order): halving the step divides it by about 2^order (8 central, 4 one-sided)
    low, high = 0.75 * 2**order, 1.25 * 2**order
    assert low < errors[0] / errors[1] < high and low < errors[1] / errors[2] < high, errors


def test_dpo_G_from_autograd_is_beta_one_minus_a_times_pi_minus_y(small64):
    beta = 0.5
    reference = reference_logps(small64, UPDATE)
    batch = collate_pairs(UPDATE, 0, True)
    [(logits, labels, grad)] = loss_logit_gradient(
        small64, get_loss("dpo"), LossConfig(beta=beta), [batch], 2, reference
    )
    logps = sequence_logps(small64, batch).sum.detach()
    h = (logps[:2] - reference.chosen) - (logps[2:] - reference.rejected)
    a = torch.sigmoid(beta * h)
    pi = logits.detach().softmax(-1)
    y = torch.nn.functional.one_hot(labels.clamp(min=0), pi.shape[-1]) * (labels != IGNORE)[..., None]
    coeff = (beta * (1 - a) / 2)[:, None, None]  # the batch mean divides by n = 2
    assert torch.allclose(grad[:2], coeff * (pi[:2] - y[:2]) * (labels[:2] != IGNORE)[..., None], atol=1e-12)
    assert torch.allclose(grad[2:], -coeff * (pi[2:] - y[2:]) * (labels[2:] != IGNORE)[..., None], atol=1e-12)


def test_sft_G_is_pi_minus_y(small64):
    examples = [TrainExample("s", [1, 2, 3], [4, 5], None)]
    batch = collate_pairs(examples, 0, False)
    [(logits, labels, grad)] = loss_logit_gradient(small64, get_loss("sft"), LossConfig(), [batch], 1, None)
    pi = logits.detach().softmax(-1)
    y = torch.nn.functional.one_hot(labels.clamp(min=0), pi.shape[-1])
    mask = (labels != IGNORE)[..., None]
    assert torch.allclose(grad, (pi - y) * mask, atol=1e-12)


def relative_residual(model, eta):
    """One plain SGD step of size η on an SFT update; |observed − predicted| / |observed| per observed sequence."""
    spec = get_loss("sft")
    examples = [TrainExample("s", [5, 6, 7], [8, 9, 10], None)]
    dirs = update_directions(model, spec, LossConfig(), examples, 0, None)
    theta = parameters(model)
    step = {k: -eta * g for k, g in dirs.positive.items()}
    after = {k: theta[k] + step[k] for k in theta}
    out = decompose(model, theta, after, {"step": step}, collate(OBSERVED, 0))
    return ((out["observed"] - out["predicted/step"]).abs() / out["observed"].abs()).max().item()


def test_relative_residual_shrinks_linearly_with_eta(small64):
    residuals = [relative_residual(small64, eta) for eta in (2e-3, 1e-3, 5e-4)]
    for big, small in zip(residuals, residuals[1:]):
        assert 1.6 < big / small < 2.4, residuals
    assert residuals[-1] < 0.05


def test_change_statistics_conserve_mass_and_match_first_order(small64):
    spec = get_loss("sft")
    examples = [TrainExample("s", [5, 6, 7], [8, 9, 10], None)]
    dirs = update_directions(small64, spec, LossConfig(), examples, 0, None)
    theta = parameters(small64)
    step = {k: -1e-5 * g for k, g in dirs.positive.items()}
    observed = collate(OBSERVED, 0)
    logits, scored, dz = logit_jvp(small64, theta, step, observed)
    from ldyn.logprobs.choose import rows_logits
    from ldyn.logprobs.tokens import rows_logps

    after, _ = rows_logits(small64, observed, 0, {k: theta[k] + step[k] for k in theta})
    exact = change_statistics(logits, scored, after=after)
    first = change_statistics(logits, scored, dlogits=dz)
    assert torch.allclose(first["dlogp_target"], delta_log_prob(logits, scored, dz), rtol=1e-12, atol=1e-15)
    logps = [rows_logps(z, scored.targets, scored.rows, scored.n_rows).sum for z in (after, logits)]
    observed_change = logps[0] - logps[1]
    assert torch.allclose(exact["dlogp_target"], observed_change, rtol=1e-10, atol=1e-13)
    total = exact["mass_argmax"] + exact["mass_topk"] + exact["mass_tail"]
    assert total.abs().max() < 1e-12
    scale = torch.stack([exact[k].abs() for k in ("mass_argmax", "mass_topk", "mass_tail")]).amax(0)
    for key in ("mass_argmax", "mass_topk", "mass_tail"):  # first order within 2% of the mass that moved
        assert ((first[key] - exact[key]).abs() <= 0.02 * scale).all(), key
    vocab = logits.shape[-1]
    pi = logits.softmax(-1)
    a_norm_sq = (vocab - 2 + vocab * (pi * pi).sum(-1)).sum()
    assert math.isclose(exact["a_norm_sq"].sum().item(), a_norm_sq.item(), rel_tol=1e-12)


def test_observed_rows_sharing_their_prompt_decompose_as_the_plain_batch(small64):
    """The fast path (each observed prompt run once, its first-order change carried through its key/value cache)
    against its slow twin, one full sequence per row, in float64: every predicted and observed quantity."""
    spec = get_loss("dpo")
    reference = reference_logps(small64, UPDATE)
    dirs = update_directions(small64, spec, LossConfig(beta=0.5), UPDATE, 0, reference)
    theta = parameters(small64)
    tangents = {
        "step": {k: -1e-3 * g for k, g in dirs.positive.items()},
        "sgd_negative": {k: -1e-3 * g for k, g in dirs.negative.items()},
    }
    after = {k: theta[k] + tangents["step"][k] for k in theta}
    shared = SharedRows.of([(str(prompt), prompt, response) for prompt, response in OBSERVED])
    assert len(shared.prompts) == 2
    fast = decompose(small64, theta, after, tangents, shared, pad_id=0)
    slow = decompose(small64, theta, after, tangents, collate(OBSERVED, 0))
    assert fast.keys() == slow.keys()
    for key in slow:
        assert torch.allclose(fast[key], slow[key], rtol=1e-9, atol=1e-12), key


def test_the_observed_forward_is_the_next_updates_forward_at_theta(small64):
    """Decomposing every update: update t's forward at θ_{t+1} stands in for update t+1's forward at θ, with the
    same rows as computing it again; it is not used once anything else moved the parameters."""
    spec, cfg, lr = get_loss("dpo"), LossConfig(beta=0.5), 1e-3
    reference = reference_logps(small64, UPDATE)
    items = [ProbeItem(str(i), "chosen", prompt, response) for i, (prompt, response) in enumerate(OBSERVED)]

    def sgd_step(start):
        with torch.no_grad():
            for name, p in small64.named_parameters():
                p -= lr * (start.directions.positive[name] + start.directions.negative[name])

    every = Decomposer(items, 0, method="one_sided", every_update=True)  # keeps each observed forward
    first = every.begin(small64, lr, loss=spec, loss_cfg=cfg, examples=UPDATE, reference=reference)
    sgd_step(first)
    every.finish(small64)
    assert every._kept is not None
    kept = every.begin(small64, lr, loss=spec, loss_cfg=cfg, examples=UPDATE, reference=reference)
    assert every._before is not None and kept.theta is every._before.theta  # θ_{t+1} of the last update, reused
    sgd_step(kept)
    with_kept = every.finish(small64)
    # the same update again from the same θ without a kept forward: the same rows
    with torch.no_grad():
        for name, p in small64.named_parameters():
            p.copy_(kept.theta[name])
    fresh = Decomposer(items, 0, method="one_sided")
    sgd_step(fresh.begin(small64, lr, loss=spec, loss_cfg=cfg, examples=UPDATE, reference=reference))
    again = fresh.finish(small64)
    assert [r.keys() for r in with_kept] == [r.keys() for r in again]
    for a, b in zip(with_kept, again):
        for key in a:
            assert a[key] == (b[key] if isinstance(b[key], str) else pytest.approx(b[key], rel=1e-12, abs=1e-15)), key
    # parameters moved since (another step, a reload): the kept forward is stale and is not used
    with torch.no_grad():
        next(small64.parameters()).add_(1e-3)
    every.begin(small64, lr)
    assert every._before is None
    every.pending = None
    # forward-mode takes the logits at θ from its own primal pass: nothing to keep
    jvp = Decomposer(items, 0, every_update=True)
    sgd_step(jvp.begin(small64, lr, loss=spec, loss_cfg=cfg, examples=UPDATE, reference=reference))
    jvp.finish(small64)
    assert jvp._kept is None


def test_decompose_command_records_predicted_against_observed(tmp_path):
    from ldyn import cli
    from ldyn.runs.directory import RunDir

    out = tmp_path / "dec"
    code = cli.main(
        [
            "decompose",
            "smollm2_sft_dpo",
            "--stage",
            "dpo",
            "model.name=tiny",
            f"output_dir={out}",
            "data.n_train=2",
            "stages.dpo.batch_size=2",
            "decompose.n=2",
            "stages.dpo.optim.name=sgd",
            "stages.dpo.optim.lr=1e-3",
            "stages.dpo.optim.max_grad_norm=0",
            "data.max_length=48",
            "data.max_prompt_length=24",
            "model.dtype=float64",
        ]
    )
    assert code == 0
    run = RunDir(out)
    rows = run.read("decomposition.jsonl")
    assert {r["step"] for r in rows} == {1} and len({r["example_id"] for r in rows}) == 2
    assert {r["type"] for r in rows} >= {"chosen", "rejected", "irr_hum", "random_nonhum"}
    scale = max(abs(r["observed"]) for r in rows)
    for r in rows:
        # plain SGD without clipping: the real step is the SGD kernel's −η(g⁺ + g⁻)
        assert r["predicted"] == pytest.approx(r["sgd_positive"] + r["sgd_negative"], rel=1e-6, abs=1e-9)
        assert abs(r["predicted"] - r["observed"]) < 0.01 * scale  # first order, up to O(η²)
        assert (
            r["observed/lbk"] >= 0
            and abs(r["observed/mass_argmax"] + r["observed/mass_topk"] + r["observed/mass_tail"]) < 1e-5
        )
    assert (run.figures / "decomposition.png").is_file() and (run.figures / "decomposition_summary.csv").is_file()
    times = run.read("decomposition_times.jsonl")
    assert times[0]["seconds"] > 0 and times[0]["update_seconds"] > 0


def test_finite_differences_and_the_steps_gradient_give_the_jvp_decomposition(tmp_path, monkeypatch):
    reused = decompose_rows(tmp_path / "reused")  # g± from the step's own graph and gradient (one process, no autocast)
    central = decompose_rows(tmp_path / "central", "decompose.method=central")
    one_sided = decompose_rows(tmp_path / "one_sided", "decompose.method=one_sided")
    from ldyn.train.callbacks import DecompositionCallback

    steps_start = DecompositionCallback.on_step_start

    def own_backward(self, state):  # the directions by a forward and backward of their own, as with several
        state.step_graph = False  # processes, autocast or a compiled forward
        steps_start(self, state)

    monkeypatch.setattr(DecompositionCallback, "on_step_start", own_backward)
    separate = decompose_rows(tmp_path / "separate")
    monkeypatch.undo()
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = decompose_rows(tmp_path / "compiled", "compile=default")  # takes its own forward and backward
    # the update replayed from fixed shapes, as `cuda_graphs` does on a GPU (run eagerly here): its directions by a
    # backward of their own, the step's gradient from the graph's
    monkeypatch.setattr("ldyn.train.experiment._graphs", lambda cfg, accelerator: cfg.cuda_graphs)
    graphed = decompose_rows(tmp_path / "graphed", "cuda_graphs=true", "cuda_graphs_pad_to=8")
    for a, g in zip(reused, graphed):
        for column in ("predicted", "sgd_positive", "sgd_negative", "observed"):
            assert a[column] == pytest.approx(g[column], rel=1e-9, abs=1e-12)
    for a, b in zip(reused, compiled):
        for column in ("predicted", "sgd_positive", "sgd_negative", "observed"):
            assert a[column] == pytest.approx(b[column], rel=1e-9, abs=1e-12)
    for a, b, c, d in zip(reused, separate, central, one_sided):
        for column in ("predicted", "sgd_positive", "sgd_negative"):
            assert a[column] == pytest.approx(b[column], rel=1e-9, abs=1e-12)
            assert c[column] == pytest.approx(b[column], rel=1e-4, abs=1e-9)  # O(η³) apart
        assert d["predicted"] == c["predicted"]  # the real step stays central
        for column in ("sgd_positive", "sgd_negative"):  # O(η²) apart, so further than central
            assert d[column] == pytest.approx(b[column], rel=1e-2, abs=1e-9)
        assert a["observed"] == b["observed"] == pytest.approx(c["observed"], rel=1e-9, abs=1e-12)


def test_influence_heatmap_across_training_signals(tmp_path, probe_file):
    from ldyn import cli

    common = [
        "model.name=tiny",
        f"data.train={probe_file}",
        f"probe.path={probe_file}",
        "probe.every=0",
        "decompose.every=1",
        "decompose.n=2",
        "data.n_train=4",
        "checkpoint_every=0",
    ]
    sft = [
        f"output_dir={tmp_path / 'sft'}",
        "stages.sft.target=irr_hum",
        "stages.sft.steps=2",
        "stages.sft.batch_size=2",
    ]
    assert cli.main(["run", "hh_probe_sft", *common, *sft]) == 0
    dpo = [f"output_dir={tmp_path / 'dpo'}", "stages.dpo.steps=2", "stages.dpo.batch_size=2"]
    assert cli.main(["run", "hh_probe_dpo", *common, *dpo]) == 0
    assert cli.main(["influence", str(tmp_path / "sft"), str(tmp_path / "dpo"), "--out", str(tmp_path / "i.png")]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "i.csv")))
    assert [c.split(" [")[0] for c in rows[0] if c != "type"] == ["SFT on irr_hum", "DPO (y⁺, y⁻)"]
    assert {r["type"] for r in rows} == {"chosen", "rejected", "irr_hum", "random_permute"}
    assert (tmp_path / "i.png").stat().st_size > 0


def test_sft_target_must_be_a_field_of_the_training_data(tmp_path, pairs_file, capsys):
    from ldyn import cli

    code = cli.main(
        [
            "run",
            "hh_probe_sft",
            "model.name=tiny",
            f"data.train={pairs_file}",
            "probe.path=embedded",
            "stages.sft.target=irr_hum",
            f"output_dir={tmp_path / 'x'}",
        ]
    )
    assert code == 2
    assert "pairs.jsonl:1: field 'irr_hum': missing" in capsys.readouterr().err
