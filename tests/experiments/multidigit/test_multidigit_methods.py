"""Sorting and median-regression methods: metrics on hand-made cases, losses and gradients."""

import math

import pytest
import torch

from neuralsort.experiments.multidigit.medians import MEDIAN_METHODS, build_median_method
from neuralsort.experiments.multidigit.models import (
    DigitCNN,
    regroup_lengths,
    regroup_sequences,
    sorting_permutation,
    true_median,
)
from neuralsort.experiments.multidigit.quantile import median_metrics
from neuralsort.experiments.multidigit.sort import sort_correct, sort_metrics
from neuralsort.experiments.multidigit.sorters import SORT_METHODS, build_sort_method

SHAPE = (16, 8)  # small stand-in for the 112 x 28 four-digit images


def batch(b: int = 3, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 1, *SHAPE, generator=g), torch.randint(0, 100, (b, n), generator=g)


# ---- targets and metrics ------------------------------------------------------------------------


def test_sorting_permutation_is_descending_and_stable():
    v = torch.tensor([[9, 10, 5, 2], [3, 7, 3, 1]])
    assert sorting_permutation(v).tolist() == [[1, 0, 2, 3], [1, 0, 2, 3]]


def test_true_median_odd_and_even():
    assert true_median(torch.tensor([[5, 1, 9, 3, 7]])).tolist() == [5.0]
    assert true_median(torch.tensor([[4, 1, 9, 3]])).tolist() == [3.5]


def test_sort_metrics_hand_made():
    values = torch.tensor([[30, 10, 20], [5, 6, 7], [1, 2, 3]])
    pred = torch.tensor(
        [
            [0, 2, 1],  # right: 30, 20, 10
            [2, 0, 1],  # 7 right, then 5 and 6 swapped: 1 of 3 positions
            [0, 1, 2],  # ascending: only the middle position (2) is right
        ]
    )
    ok = sort_correct(pred, values)
    assert ok.tolist() == [[True, True, True], [True, False, False], [False, True, False]]
    m = sort_metrics(pred, values)
    assert m["exact"] == pytest.approx(1 / 3)
    assert m["elementwise"] == pytest.approx(5 / 9)


def test_sort_metrics_ties_count_either_order_and_repeated_indices_fail():
    values = torch.tensor([[4, 8, 4]])
    assert sort_metrics(torch.tensor([[1, 2, 0]]), values)["exact"] == 1.0
    assert sort_metrics(torch.tensor([[1, 0, 2]]), values)["exact"] == 1.0
    # a row-argmax prediction that is not a permutation can still get some positions right
    m = sort_metrics(torch.tensor([[1, 1, 0]]), values)
    assert m["exact"] == 0.0 and m["elementwise"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="must match"):
        sort_metrics(torch.tensor([[0, 1]]), values)


def test_median_metrics_hand_made():
    target = torch.tensor([100.0, 200.0, 300.0, 400.0])
    perfect = median_metrics(target.clone(), target)
    assert perfect == {"mse": 0.0, "r2_corr": 1.0, "r2": 1.0}
    # mean prediction: r2 = 0; a constant has no correlation (reported as 0)
    const = median_metrics(torch.full((4,), 250.0), target)
    assert const["r2"] == pytest.approx(0.0) and const["r2_corr"] == 0.0
    assert const["mse"] == pytest.approx(12500.0 * 1e-4)  # Var = 12500
    # an affine distortion keeps the correlation but not 1 - MSE/Var
    aff = median_metrics(2 * target, target)
    assert aff["r2_corr"] == pytest.approx(1.0)
    assert aff["mse"] == pytest.approx(75000.0 * 1e-4)
    assert aff["r2"] == pytest.approx(1 - 75000.0 / 12500.0)
    off = median_metrics(torch.tensor([100.0, 300.0, 200.0, 400.0]), target)
    assert off["r2_corr"] == pytest.approx(0.64)


def test_constant_median_mse_is_the_variance_of_the_median():
    # the paper's constant row: Var(median of 5 uniform four-digit numbers) x 1e-4 = 356.79
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 10_000, (200_000, 5), generator=g)
    med = true_median(v)
    m = median_metrics(torch.full_like(med, float(med.mean())), med)
    assert m["mse"] == pytest.approx(356.79, rel=0.02)


# ---- nets and losses -----------------------------------------------------------------------------


def test_digit_cnn_shapes():
    net = DigitCNN((112, 28), 3)
    assert net.fc1.in_features == 64 * 28 * 7
    assert net(torch.rand(2, 5, 1, 112, 28)).shape == (2, 5, 3)
    assert DigitCNN(SHAPE, 0)(torch.rand(4, 1, *SHAPE)).shape == (4, 64)


def test_digit_cnn_scores_stay_float32_under_bf16_autocast():
    # bfloat16 keeps 8 significant bits: scores of ~100 would be rounded to steps of 0.5
    torch.manual_seed(0)
    net = DigitCNN(SHAPE, 1)
    with torch.no_grad():
        net.head.weight.mul_(300.0)
    x = torch.rand(200, 1, *SHAPE)
    with torch.no_grad():
        plain = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(x)
    assert mixed.dtype == torch.float32
    assert mixed.unique().numel() == plain.unique().numel() == 200
    torch.testing.assert_close(mixed, plain, rtol=0.05, atol=0.5)


def _first_conv(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if name.endswith("conv1.weight")]


@pytest.mark.parametrize("method", SORT_METHODS)
def test_sort_loss_finite_with_gradients_reaching_the_net(method):
    torch.manual_seed(0)
    model = build_sort_method(method, n=4, image_shape=SHAPE, tau=1.0, num_samples=3)
    images, values = batch()
    loss = model.loss(images, values, generator=torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    convs = _first_conv(model)
    assert convs and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in convs)
    pred = model.predict(images)
    assert pred.shape == (3, 4) and pred.dtype == torch.int64
    assert int(pred.min()) >= 0 and int(pred.max()) < 4


@pytest.mark.parametrize("method", ["stochastic", "gumbel-sinkhorn"])
def test_sampled_losses_follow_the_generator(method):
    model = build_sort_method(method, n=4, image_shape=SHAPE, num_samples=2)
    images, values = batch()
    a = model.loss(images, values, generator=torch.Generator().manual_seed(5))
    b = model.loss(images, values, generator=torch.Generator().manual_seed(5))
    c = model.loss(images, values, generator=torch.Generator().manual_seed(6))
    assert a.item() == b.item() and a.item() != c.item()


def test_neuralsort_sorter_learns_to_sort_when_scores_are_right():
    # with scores equal to the values, the relaxed matrix at small tau gives a near-zero loss
    model = build_sort_method("deterministic", n=4, image_shape=SHAPE, tau=0.1)
    images, values = batch()
    model.scores = lambda _images: values.float()  # type: ignore[method-assign]
    assert float(model.loss(images, values)) < 1e-3
    assert sort_metrics(model.predict(images), values)["exact"] == 1.0


@pytest.mark.parametrize("method", [m for m in MEDIAN_METHODS if m != "constant"])
def test_median_loss_finite_with_gradients_reaching_both_nets(method):
    torch.manual_seed(0)
    model = build_median_method(method, n=5, image_shape=SHAPE, scale=100.0, tau=1.0, num_samples=3)
    images, values = batch(n=5)
    loss = model.loss(images, values, generator=torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    convs = _first_conv(model)
    assert len(convs) == (1 if method == "vanilla" else 2)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in convs)
    pred = model.predict(images)
    assert pred.shape == (3,) and pred.dtype == torch.float64


def test_constant_median_predicts_the_mean_training_median():
    model = build_median_method("constant", n=3, image_shape=SHAPE, scale=100.0)
    assert not list(model.parameters())
    model.observe(torch.tensor([[1, 5, 9], [2, 3, 4]]))  # medians 5 and 3
    model.observe(torch.tensor([[10, 10, 10]]))
    images = torch.zeros(2, 3, 1, *SHAPE)
    assert model.predict(images).tolist() == [6.0, 6.0]
    assert float(model.loss(images, torch.tensor([[6, 6, 6]]))) == 0.0


class Fixed(torch.nn.Module):
    """A stand-in net that ignores the images and returns a fixed output."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, _images: torch.Tensor) -> torch.Tensor:
        return self.out


def test_neuralsort_median_picks_the_middle_value():
    model = build_median_method("deterministic", n=5, image_shape=SHAPE, scale=100.0, tau=0.01)
    images, values = batch(b=2, n=5)
    # scores = values and regressed values = values / scale: the hard selector gives the median
    model.scorer = Fixed(values.float().unsqueeze(-1))
    model.regressor = Fixed((values.float() / 100.0).unsqueeze(-1))
    assert torch.allclose(model.predict(images), true_median(values))
    assert float(model.loss(images, values)) < 1e-6


def test_unknown_methods_raise():
    with pytest.raises(ValueError, match="method must be one of"):
        build_sort_method("bogus", n=3, image_shape=SHAPE)
    with pytest.raises(ValueError, match="method must be one of"):
        build_median_method("bogus", n=3, image_shape=SHAPE, scale=1.0)


# ---- regrouping ---------------------------------------------------------------------------------


def test_regroup_keeps_the_batch_and_deals_distinct_items_from_it():
    b, n, factor = 4, 3, 5
    values = torch.arange(b * n).reshape(b, n) * 7
    per_item = torch.stack([values.float(), -values.float()], dim=-1)  # (B, n, 2) tied to values
    out, vals = regroup_sequences(per_item, values, factor, torch.Generator().manual_seed(0))
    assert out.shape == (factor * b, n, 2) and vals.shape == (factor * b, n)
    assert torch.equal(out[:b], per_item) and torch.equal(vals[:b], values)
    # every new sequence: n distinct items of this batch, each with its own outputs
    assert torch.equal(out[..., 0], vals.float()) and torch.equal(out[..., 1], -vals.float())
    assert all(len(set(row.tolist())) == n for row in vals)
    assert set(vals.flatten().tolist()) <= set(values.flatten().tolist())
    assert not torch.equal(vals[b:], vals[:b].repeat(factor - 1, 1))
    same, _ = regroup_sequences(per_item, values, 1)
    assert same is per_item


def test_regroup_passes_gradients_to_every_used_item():
    per_item = torch.randn(3, 4, requires_grad=True)
    out, _ = regroup_sequences(per_item, torch.randint(0, 9, (3, 4)), 3)
    out.sum().backward()
    assert per_item.grad is not None and float(per_item.grad.min()) >= 1.0


@pytest.mark.parametrize("method", SORT_METHODS)
def test_regrouped_sort_loss_trains_every_method(method):
    torch.manual_seed(0)
    model = build_sort_method(method, n=4, image_shape=SHAPE, num_samples=2, regroup=3)
    images, values = batch()
    gen = torch.Generator().manual_seed(1)
    loss = model.loss(images, values, generator=gen)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in _first_conv(model))
    # a different grouping gives a different loss (the extra sequences are really used)
    other = model.loss(images, values, generator=torch.Generator().manual_seed(2))
    assert other.item() != loss.item()


@pytest.mark.parametrize("method", [m for m in MEDIAN_METHODS if m != "constant"])
def test_regrouped_median_loss_trains_every_method(method):
    torch.manual_seed(0)
    model = build_median_method(
        method, n=5, image_shape=SHAPE, scale=100.0, num_samples=2, regroup=4
    )
    images, values = batch(n=5)
    loss = model.loss(images, values, generator=torch.Generator().manual_seed(1))
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in _first_conv(model))


def test_regroup_lengths_deals_every_length_from_the_batch():
    b, n, factor = 4, 3, 4
    values = torch.arange(b * n).reshape(b, n) * 7
    per_item = torch.stack([values.float(), -values.float()], dim=-1)
    groups = regroup_lengths(per_item, values, factor, [2, 5, 12], torch.Generator().manual_seed(0))
    # ceil(factor * B * n / (K * m)) sequences of each length m: 8, 4 and 2
    assert [tuple(v.shape) for _, v in groups] == [(8, 2), (4, 5), (2, 12)]
    for out, vals in groups:
        assert torch.equal(out[..., 0], vals.float()) and torch.equal(out[..., 1], -vals.float())
        assert all(len(set(row.tolist())) == vals.shape[1] for row in vals)
        assert set(vals.flatten().tolist()) <= set(values.flatten().tolist())
    # without lengths: plain regrouping at n
    ((out, vals),) = regroup_lengths(
        per_item, values, factor, None, torch.Generator().manual_seed(0)
    )
    ref, ref_vals = regroup_sequences(per_item, values, factor, torch.Generator().manual_seed(0))
    assert torch.equal(out, ref) and torch.equal(vals, ref_vals)
    with pytest.raises(ValueError, match="lengths must lie in 2..12"):
        regroup_lengths(per_item, values, factor, [13])


@pytest.mark.parametrize("method", ["deterministic", "stochastic"])
def test_neuralsort_trains_on_several_lengths_and_sorts_any_n(method):
    torch.manual_seed(0)
    model = build_sort_method(
        method, n=4, image_shape=SHAPE, num_samples=2, regroup=3, lengths=[2, 4, 7]
    )
    assert model.any_n
    images, values = batch()
    loss = model.loss(images, values, generator=torch.Generator().manual_seed(1))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in _first_conv(model))
    plain = build_sort_method(method, n=4, image_shape=SHAPE, num_samples=2, regroup=3)
    plain.load_state_dict(model.state_dict())
    assert plain.loss(images, values, generator=torch.Generator().manual_seed(1)) != loss
    longer, _ = batch(b=2, n=9)
    assert model.predict(longer).shape == (2, 9)
    median = build_median_method(
        method, n=5, image_shape=SHAPE, scale=100.0, num_samples=2, lengths=[3, 9]
    )
    median_loss = median.loss(*batch(n=5), generator=torch.Generator().manual_seed(1))
    assert math.isfinite(median_loss.item()) and median.predict(longer).shape == (2,)


def test_several_lengths_need_a_neuralsort_method():
    with pytest.raises(ValueError, match="needs a NeuralSort method"):
        build_sort_method("sinkhorn", n=3, image_shape=SHAPE, lengths=[3, 5])
    with pytest.raises(ValueError, match="needs a NeuralSort method"):
        build_median_method("vanilla", n=3, image_shape=SHAPE, scale=1.0, lengths=[3, 5])
    assert not getattr(build_sort_method("vanilla", n=3, image_shape=SHAPE), "any_n", False)


def test_regroup_near_deals_windows_of_neighbouring_values():
    b, n, factor = 4, 3, 4
    values = torch.randperm(b * n).reshape(b, n) * 7
    gen = torch.Generator().manual_seed(0)
    ((out, vals),) = regroup_lengths(values.float(), values, factor, None, gen, near=0.5)
    assert vals.shape == (factor * b, n) and torch.equal(out, vals.float())
    close = vals[: factor * b // 2].sort(dim=-1).values
    # a window of n neighbours in the sorted batch: consecutive multiples of 7
    assert torch.equal(close.diff(dim=-1), torch.full((factor * b // 2, n - 1), 7))
    spread = vals[factor * b // 2 :].sort(dim=-1).values.diff(dim=-1)
    assert (spread > 7).any()
