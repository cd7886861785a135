"""The squeezing toy and classifier dynamics on digits (issue 4)."""

import gzip
import struct

import numpy as np
import pytest
import torch

from ldyn.cli import main
from ldyn.dynamics.entk import classifier_jacobian, kernel_from_jacobians, predicted_logit_change
from ldyn.toys import digits, squeeze
from ldyn.toys.figures import digits_figure, squeeze_figure


@pytest.fixture(scope="module")
def cases():
    return {u.name: u for u in squeeze.notebook_cases()}


def test_notebook_cases_reproduce_the_papers_numbers(cases):
    a, b, c, d, e = (cases[k] for k in "ABCDE")
    assert a.before[21] == pytest.approx(0.072, abs=5e-4) and a.after[21] == pytest.approx(0.947, abs=5e-4)
    assert a.rising == 1
    assert b.before[42] == pytest.approx(0.0233, abs=5e-5) and b.after[42] == pytest.approx(0.00106, abs=5e-6)
    assert b.rising == 49
    assert b.before.max() == pytest.approx(0.028, abs=5e-4) and b.after.max() == pytest.approx(0.029, abs=5e-4)
    assert c.before[11] == pytest.approx(0.029, abs=5e-4) and c.after[11] == pytest.approx(4.6e-6, rel=0.01)
    assert c.before.argmax() == 8 and c.before[8] == pytest.approx(0.763, abs=5e-4)
    assert c.after[8] == pytest.approx(0.987, abs=5e-4) and c.rising == 1
    assert d.before[42] == pytest.approx(4e-10, rel=0.02)
    assert d.before[25] == pytest.approx(2.2e-8, rel=0.01) and d.after[25] == pytest.approx(4.0e-6, rel=0.01)
    assert d.rising == 1  # only the positively updated label: every other class decreases
    assert e.before[100] == pytest.approx(1e-8, rel=0.03) and e.after[100] == pytest.approx(2.4e-45, rel=0.03)
    assert e.before.argmax() == 479 and e.before[479] == pytest.approx(0.512, abs=5e-4)
    assert e.after[479] == pytest.approx(1.0, abs=5e-4) and e.rising == 1


def test_the_step_is_the_closed_form_negative_gradient(cases):
    """For a negative step alone Δz = η'(π − e_ȳ), η' = η‖x‖² (paper §3.4.2): autograd agrees with the formula."""
    c = cases["C"]
    expected = c.eta_prime * (c.before - np.eye(len(c.before))[c.minus])
    np.testing.assert_allclose(c.logits_after - c.logits_before, expected, atol=1e-12)


def test_squeezing_statements_hold_on_random_heads():
    results = squeeze.check(n=400, seed=3)
    assert [r.statement for r in results] == list(squeeze.STATEMENTS)
    for r in results:
        assert r.checked >= 390 and r.violations == 0, r


def test_checker_catches_wrong_statements():
    def everyone_else_rises(u):
        return bool(np.all(np.delete(squeeze.log_change(u), u.minus) > 0))

    def rises_above_uniform(u):  # the right idea with the wrong threshold (1/V instead of log Z / η')
        keep = np.arange(len(u.before)) != u.minus
        return bool(np.array_equal(squeeze.log_change(u)[keep] > 0, u.before[keep] > 1 / len(u.before)))

    results = {
        r.statement: r
        for r in squeeze.check(
            {"all_rise": everyone_else_rises, "uniform_threshold": rises_above_uniform}, n=200, seed=1
        )
    }
    assert results["all_rise"].violations > 20 and not results["all_rise"].holds
    assert results["uniform_threshold"].violations > 20


def test_squeeze_figure_has_a_linear_and_a_log_panel_per_case(cases):
    fig = squeeze_figure(list(cases.values()))
    axes = np.array(fig.axes).reshape(5, 2)
    assert [ax.get_yscale() for ax in axes[:, 0]] == ["linear"] * 5
    assert [ax.get_yscale() for ax in axes[:, 1]] == ["log"] * 5
    assert len(axes[2, 0].lines) == 3  # before, after, the ȳ marker
    assert len(axes[3, 0].lines) == 4  # case D marks both updated labels


# --- digits --------------------------------------------------------------------------------------------------------

SMALL = dict(n_train=200, observed_per_class=3, epochs=1, batch_size=32, record_every=1, kernel_every=3)


def test_explicit_kernel_equals_the_jvp_of_the_real_gradient_step():
    """−η K G with K formed from Jacobians equals J_o·(−η ∇_θ L) by forward-mode AD (float64)."""
    torch.manual_seed(0)
    model = digits.make_model("cnn", 8).double()
    x_o, x_u = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.rand(4, 1, 8, 8, dtype=torch.float64)
    y_u = torch.tensor([1, 7, 7, 3])
    theta = {n: p.detach() for n, p in model.named_parameters()}
    z_u = model(x_u)
    (grad,) = torch.autograd.grad(digits.classification_loss(z_u, y_u), z_u)
    kernel = kernel_from_jacobians(classifier_jacobian(model, theta, x_o), classifier_jacobian(model, theta, x_u))
    explicit = predicted_logit_change(kernel, grad, 0.1)
    step = torch.autograd.grad(digits.classification_loss(model(x_u), y_u), list(model.parameters()))
    tangent = {n: -0.1 * g for n, g in zip(theta, step)}
    _, jvp = torch.func.jvp(lambda p: torch.func.functional_call(model, p, (x_o,)), (theta,), (tangent,))
    torch.testing.assert_close(explicit, jvp, atol=1e-12, rtol=1e-10)


def test_digits_predicted_matches_observed_within_one_percent_in_float64(tmp_path):
    cfg = digits.DigitsConfig(**SMALL, lr=0.01, float64=True)
    result = digits.run(cfg, tmp_path)
    assert len(result.steps) == 7 and result.agreement.shape == (7, 3)
    assert result.agreement[:, 1].max() < 0.01
    assert result.agreement[:, 2].min() > 0.999
    # the accumulated influence sums the per-example shares: over learnt classes it is the total predicted change
    assert np.isfinite(result.influence).all() and np.abs(result.influence).sum() > 0
    pull = result.influence_pull
    assert pull[3, 8] == result.influence_prob[3, 8, 3] and pull[8, 3] == result.influence_prob[8, 3, 8]
    assert (np.diag(pull) > 0).all()  # learning a class raises that label on its own held-out images
    assert result.class_norms.shape == (3, 10, 10) and list(result.kernel_steps) == [0, 3, 6]
    np.testing.assert_allclose(np.einsum("raa->ra", result.coupling), 1.0)
    for name in ("digits.png", "agreement.png", "dynamics.npz", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_first_order_error_shrinks_with_the_learning_rate():
    """On the smooth (tanh) LeNet the relative residual halves with η; a ReLU MLP does too once η is small
    enough that no unit crosses its kink within the step."""
    for model, rates in (("cnn", (0.08, 0.04)), ("mlp", (0.02, 0.01))):
        errors = [
            digits.run(digits.DigitsConfig(**SMALL | {"n_train": 32}, model=model, lr=lr, float64=True)).agreement[0, 1]
            for lr in rates
        ]
        assert errors[1] == pytest.approx(errors[0] / 2, rel=0.05), model


def test_digits_figure_panels():
    result = digits.run(digits.DigitsConfig(**SMALL, model="cnn", lr=0.05))
    fig = digits_figure(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("average prediction") for t in titles)
    assert any(t.startswith("accumulated influence") for t in titles)
    assert any(t.startswith("eNTK coupling ‖K_ab‖") for t in titles)
    assert any("over training" in t for t in titles)
    assert len(result.top_pairs("coupling", 3)) == 3


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_idx_files_with_lenet(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (80, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(80) % 10)  # 8 per class
    cfg = digits.DigitsConfig(
        data="mnist",
        mnist_path=str(tmp_path),
        model="cnn",
        n_train=30,
        observed_per_class=1,
        epochs=1,
        batch_size=15,
        record_every=1,
    )
    result = digits.run(cfg)
    assert result.average_prediction.shape == (10, 10) and len(result.steps) == 2


def test_toy_cli(tmp_path, capsys):
    assert main(["toy", "squeeze", "--out", str(tmp_path / "sq"), "--check", "50"]) == 0
    out = capsys.readouterr().out
    assert "C: negative gradient on a peak label" in out and "runner_up_rises: holds" in out
    assert (tmp_path / "sq" / "squeeze.png").exists()
    assert (
        main(
            [
                "toy",
                "digits",
                "--out",
                str(tmp_path / "dg"),
                "--n-train",
                "100",
                "--epochs",
                "1",
                "--observed-per-class",
                "2",
                "--record-every",
                "2",
            ]
        )
        == 0
    )
    assert "most coupled pairs by coupling" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "lenet"], "unknown model 'lenet'"),
        (["--data", "mnist", "--mnist-path", "/nonexistent/mnist"], "/nonexistent/mnist: not a folder"),
        (["--n-train", "5000"], "n_train=5000 leaves no held-out images"),
    ],
)
def test_toy_digits_bad_input(args, message, capsys):
    assert main(["toy", "digits", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldyn: error: ") and message in err and "Traceback" not in err


def test_bad_idx_file_is_named(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(10))
    assert main(["toy", "digits", "--data", "mnist", "--mnist-path", str(tmp_path)]) == 2
    assert "train-images-idx3-ubyte: not an idx file" in capsys.readouterr().err
