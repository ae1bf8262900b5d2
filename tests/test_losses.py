"""Tests of the focal-family losses against hand-computed values and torchvision."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

import yolonb.losses
from yolonb.losses import (
    DFL_CLAMP_EPS,
    distribution_focal_loss,
    focal_loss,
    modified_focal_loss,
    poly_focal_loss,
    quality_focal_loss,
    softmax_cross_entropy,
    varifocal_loss,
)

LN2 = math.log(2.0)
DOUBLE = torch.float64

# softmax([0, ln 2, 0]) = [1, 2, 1] / 4 = [0.25, 0.5, 0.25]
THREE_CLASS_LOGITS = torch.tensor([[0.0, LN2, 0.0]], dtype=DOUBLE)


def logits_for_probability(p: float) -> torch.Tensor:
    """Return two-class logits [ln p, ln(1 - p)], whose softmax is [p, 1 - p] for target class 0."""
    return torch.tensor([[math.log(p), math.log(1.0 - p)]], dtype=DOUBLE)


# --- sigmoid focal: reference values and torchvision ------------------------------


def test_sigmoid_focal_positive_value():
    # p = sigmoid(0) = 0.5: alpha (1 - p)^2 (-ln p) = 0.25 * 0.25 * ln 2 = 0.0433217
    loss = modified_focal_loss(
        torch.zeros(1, 1, dtype=DOUBLE), torch.tensor([0]), alpha=0.25, gamma=2.0, activation="sigmoid", reduction="none"
    )
    assert loss.shape == (1, 1)
    assert loss.item() == pytest.approx(0.25 * 0.25 * LN2, abs=1e-7)
    assert loss.item() == pytest.approx(0.043322, abs=5e-7)


def test_sigmoid_focal_negative_value():
    # Class 1 is a negative with p = sigmoid(0) = 0.5:
    # (1 - alpha) p^2 (-ln(1 - p)) = 0.75 * 0.25 * ln 2 = 0.1299651.
    # Class 0 is the target with logit 100, so its term is about 0.25 e^-300 = 1e-131.
    logits = torch.tensor([[100.0, 0.0]], dtype=DOUBLE)
    loss = modified_focal_loss(logits, torch.tensor([0]), alpha=0.25, gamma=2.0, activation="sigmoid", reduction="none")
    assert loss[0, 1].item() == pytest.approx(0.75 * 0.25 * LN2, abs=1e-7)
    assert loss[0, 1].item() == pytest.approx(0.129965, abs=5e-7)
    assert loss[0, 0].item() < 1e-100


def test_sigmoid_focal_matches_torchvision_per_element():
    generator = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(16, 5, generator=generator, dtype=DOUBLE)
    logits[0, :] = torch.tensor([50.0, -50.0, 20.0, -20.0, 0.0], dtype=DOUBLE)
    target = torch.randint(0, 5, (16,), generator=generator)
    one_hot = F.one_hot(target, 5).to(DOUBLE)

    ours_input = logits.clone().requires_grad_(True)
    theirs_input = logits.clone().requires_grad_(True)
    ours = modified_focal_loss(ours_input, target, alpha=0.25, gamma=2.0, activation="sigmoid", reduction="none")
    theirs = sigmoid_focal_loss(theirs_input, one_hot, alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)

    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_input.grad, theirs_input.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sigmoid_focal_reductions_match_torchvision(reduction):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=generator)
    target = torch.randint(0, 4, (6,), generator=generator)
    ours = modified_focal_loss(logits, target, activation="sigmoid", reduction=reduction)
    theirs = sigmoid_focal_loss(logits, F.one_hot(target, 4).float(), reduction=reduction)
    torch.testing.assert_close(ours, theirs)


# --- softmax focal ----------------------------------------------------------------


def test_softmax_cross_entropy_three_classes():
    # p = [0.25, 0.5, 0.25]: -ln 0.5 = ln 2 for class 1, -ln 0.25 = 2 ln 2 for class 0.
    loss = softmax_cross_entropy(THREE_CLASS_LOGITS.repeat(2, 1), torch.tensor([1, 0]), reduction="none")
    assert loss.tolist() == pytest.approx([LN2, 2 * LN2], abs=1e-12)


def test_focal_three_class_values():
    # target 1: p_t = 0.5,  0.25 * (1 - 0.5)^2  * ln 2   = 0.25 * 0.25   * 0.6931472 = 0.0433217
    # target 0: p_t = 0.25, 0.25 * (1 - 0.25)^2 * ln 4   = 0.25 * 0.5625 * 1.3862944 = 0.1949477
    logits = THREE_CLASS_LOGITS.repeat(2, 1)
    loss = focal_loss(logits, torch.tensor([1, 0]), alpha=0.25, gamma=2.0, reduction="none")
    assert loss[0].item() == pytest.approx(0.0433217, abs=1e-7)
    assert loss[1].item() == pytest.approx(0.1949477, abs=1e-7)


def test_modified_softmax_three_class_values():
    # target 1, p = [0.25, 0.5, 0.25]:
    # class 1 (target):   0.25 * (1 - 0.5)^2 * (-ln 0.5)  = 0.25 * 0.25   * 0.6931472 = 0.0433217
    # class 0 and 2:      0.75 * 0.25^2     * (-ln 0.75) = 0.75 * 0.0625 * 0.2876821 = 0.0134851
    loss = modified_focal_loss(THREE_CLASS_LOGITS, torch.tensor([1]), alpha=0.25, gamma=2.0, reduction="none")
    assert loss.shape == (1, 3)
    assert loss[0].tolist() == pytest.approx([0.0134851, 0.0433217, 0.0134851], abs=1e-7)


def test_focal_reduces_to_cross_entropy():
    generator = torch.Generator().manual_seed(2)
    logits = 3.0 * torch.randn(10, 6, generator=generator, dtype=DOUBLE)
    target = torch.randint(0, 6, (10,), generator=generator)
    expected = F.cross_entropy(logits, target, reduction="none")

    focal = focal_loss(logits, target, alpha=1.0, gamma=0.0, reduction="none")
    torch.testing.assert_close(focal, expected)

    # alpha = 1 gives the non-target classes weight 1 - alpha = 0.
    modified = modified_focal_loss(logits, target, alpha=1.0, gamma=0.0, reduction="none")
    torch.testing.assert_close(modified.sum(dim=1), expected)

    plain = softmax_cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(plain, expected)


def test_focal_alpha_scales_linearly():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=generator, dtype=DOUBLE)
    target = torch.randint(0, 4, (5,), generator=generator)
    quarter = focal_loss(logits, target, alpha=0.25, reduction="none")
    three_quarters = focal_loss(logits, target, alpha=0.75, reduction="none")
    torch.testing.assert_close(three_quarters, 3.0 * quarter)


def test_focal_single_class_is_zero():
    logits = torch.randn(3, 1, requires_grad=True)
    loss = focal_loss(logits, torch.zeros(3, dtype=torch.long), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(3, 1))


# --- poly focal -------------------------------------------------------------------


@pytest.mark.parametrize("p_t", [0.05, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("poly_scale", [1.0, -1.0, 0.5])
@pytest.mark.parametrize("poly_pow", [1, 2, 3, 0.5])
def test_poly_focal_adds_poly_term(p_t, poly_scale, poly_pow):
    gamma = 2.0
    logits = logits_for_probability(p_t)
    target = torch.tensor([0])

    poly = poly_focal_loss(logits, target, alpha=0.25, gamma=gamma, poly_scale=poly_scale, poly_pow=poly_pow)
    focal = focal_loss(logits, target, alpha=0.25, gamma=gamma)
    expected = poly_scale * (1.0 - p_t) ** (gamma + poly_pow)
    assert (poly - focal).item() == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_poly_focal_hand_value():
    # p_t = 0.5, alpha 0.25, gamma 2, poly_scale 1, poly_pow 1:
    # 0.25 * 0.25 * ln 2 + 1 * 0.5^3 = 0.0433217 + 0.125 = 0.1683217
    loss = poly_focal_loss(logits_for_probability(0.5), torch.tensor([0]), poly_scale=1.0, poly_pow=1)
    assert loss.item() == pytest.approx(0.1683217, abs=1e-7)


# --- varifocal --------------------------------------------------------------------


def test_varifocal_reference_values():
    # Positive, p = 0.5, q = 0.8: q * BCE = 0.8 * -(0.8 ln 0.5 + 0.2 ln 0.5) = 0.8 ln 2 = 0.5545177
    # Negative, p = 0.5: alpha p^2 (-ln 0.5) = 0.75 * 0.25 * ln 2 = 0.1299651
    logits = torch.zeros(1, 2, dtype=DOUBLE)
    target_score = torch.tensor([[0.8, 0.0]], dtype=DOUBLE)
    loss = varifocal_loss(logits, target_score, alpha=0.75, gamma=2.0, reduction="none")
    assert loss[0, 0].item() == pytest.approx(0.554518, abs=5e-7)
    assert loss[0, 1].item() == pytest.approx(0.129965, abs=5e-7)


def test_varifocal_positive_ignores_alpha_and_gamma():
    logits = torch.tensor([[1.3, -0.4]], dtype=DOUBLE)
    target_score = torch.tensor([[0.6, 0.0]], dtype=DOUBLE)
    default = varifocal_loss(logits, target_score, reduction="none")
    other = varifocal_loss(logits, target_score, alpha=0.1, gamma=0.5, reduction="none")
    assert other[0, 0].item() == pytest.approx(default[0, 0].item(), rel=1e-12)
    assert other[0, 1].item() != pytest.approx(default[0, 1].item(), rel=1e-3)


# --- quality focal ----------------------------------------------------------------


def test_quality_focal_values():
    # Positive, p = sigmoid(0) = 0.5, q = 0.8: |0.8 - 0.5|^2 * ln 2 = 0.09 * 0.6931472 = 0.0623832
    # Negative, p = sigmoid(ln 3) = 0.75, q = 0: 0.75^2 * (-ln 0.25) = 0.5625 * 1.3862944 = 0.7797906
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=DOUBLE)
    target_score = torch.tensor([[0.8, 0.0]], dtype=DOUBLE)
    loss = quality_focal_loss(logits, target_score, beta=2.0, reduction="none")
    assert loss[0].tolist() == pytest.approx([0.0623832, 0.7797906], abs=1e-7)


def test_quality_focal_beta_zero_is_bce():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 3, generator=generator, dtype=DOUBLE)
    target_score = torch.rand(4, 3, generator=generator, dtype=DOUBLE)
    loss = quality_focal_loss(logits, target_score, beta=0.0, reduction="none")
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, target_score, reduction="none"))


# --- distribution focal -----------------------------------------------------------


def test_dfl_splits_target_between_bins():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 8, generator=generator, dtype=DOUBLE)
    loss = distribution_focal_loss(logits, torch.tensor([3.4], dtype=DOUBLE), reduction="none")

    ce_3 = F.cross_entropy(logits, torch.tensor([3])).item()
    ce_4 = F.cross_entropy(logits, torch.tensor([4])).item()
    assert loss.item() == pytest.approx(0.6 * ce_3 + 0.4 * ce_4, rel=1e-12)


def test_dfl_bin_weights_from_gradient():
    # d loss / d logit_k = softmax_k - w_k, and with equal logits softmax_k = 1/8,
    # so the gradient exposes the weights: w_3 = 0.6, w_4 = 0.4, all others 0.
    logits = torch.zeros(1, 8, dtype=DOUBLE, requires_grad=True)
    distribution_focal_loss(logits, torch.tensor([3.4], dtype=DOUBLE), reduction="sum").backward()
    weights = (1.0 / 8.0 - logits.grad[0]).tolist()
    assert weights == pytest.approx([0, 0, 0, 0.6, 0.4, 0, 0, 0], abs=1e-12)


@pytest.mark.parametrize("reg_max", [1, 7, 16])
def test_dfl_equal_logits_give_log_bins(reg_max):
    # A uniform distribution over reg_max + 1 bins gives CE = ln(reg_max + 1) for every bin,
    # and the two bin weights sum to 1, even for clamped targets.
    targets = torch.tensor([0.0, 0.5, 0.4 * reg_max, reg_max - 0.01, float(reg_max), reg_max + 5.0, -1.0])
    logits = torch.zeros(targets.numel(), reg_max + 1)
    loss = distribution_focal_loss(logits, targets, reduction="none")
    torch.testing.assert_close(loss, torch.full_like(targets, math.log(reg_max + 1)))


def test_dfl_clamps_large_target(caplog):
    reg_max = 7
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(4, reg_max + 1, generator=generator, dtype=DOUBLE)
    targets = torch.tensor([2.5, 20.0, 7.5, 7.0], dtype=DOUBLE)

    with caplog.at_level(logging.WARNING, logger="yolonb.losses.focal"):
        loss = distribution_focal_loss(logits, targets, reduction="none")

    # Clamped to 7 - 0.001: weight 0.001 on bin 6 and 0.999 on bin 7.
    ce = -F.log_softmax(logits, dim=1)
    for row in (1, 2, 3):
        expected = DFL_CLAMP_EPS * ce[row, 6] + (1.0 - DFL_CLAMP_EPS) * ce[row, 7]
        assert loss[row].item() == pytest.approx(expected.item(), rel=1e-9)
    assert loss[0].item() == pytest.approx((0.5 * ce[0, 2] + 0.5 * ce[0, 3]).item(), rel=1e-12)

    # 20.0 and 7.5 lie beyond bin 7. The target 7.0 sits on that bin, so it is not counted.
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 4 targets lie beyond the last bin (reg_max=7)" in warnings[0].getMessage()


def test_dfl_no_warning_inside_bins(caplog):
    with caplog.at_level(logging.WARNING, logger="yolonb.losses.focal"):
        distribution_focal_loss(torch.zeros(3, 5), torch.tensor([0.0, 2.2, 4.0]))
    assert caplog.records == []


def test_dfl_negative_target_clamped_to_zero():
    logits = torch.tensor([[0.3, -1.2, 0.8]], dtype=DOUBLE)
    loss = distribution_focal_loss(logits, torch.tensor([-2.0], dtype=DOUBLE))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0])).item(), rel=1e-12)


def test_dfl_four_sides_shape():
    logits = torch.randn(3, 4, 17)
    targets = 16.0 * torch.rand(3, 4)
    loss = distribution_focal_loss(logits, targets, reduction="none", reg_max=16)
    assert loss.shape == (3, 4)
    flat = distribution_focal_loss(logits.reshape(12, 17), targets.reshape(12), reduction="none")
    torch.testing.assert_close(loss.reshape(12), flat)


# --- numerical stability at the extremes ------------------------------------------


def test_focal_value_at_extreme_logit():
    # softmax([-100, 0, 0])[0] = e^-100 / (e^-100 + 2), so -ln p_t = 100 + ln 2 (to 1e-43)
    # and (1 - p_t)^2 = 1: loss = 0.25 * (100 + ln 2) = 25.1732868
    logits = torch.tensor([[-100.0, 0.0, 0.0]])
    assert focal_loss(logits, torch.tensor([0])).item() == pytest.approx(0.25 * (100 + LN2), rel=1e-6)


def test_modified_softmax_negative_near_one():
    # Non-target class 1 has p = 1 / (1 + 2 e^-100), so -ln(1 - p) = 100 - ln 2 (to 1e-43):
    # 0.75 * 1 * (100 - ln 2) = 74.4801398. A naive log(1 - softmax) gives inf here.
    logits = torch.tensor([[0.0, 100.0, 0.0]])
    loss = modified_focal_loss(logits, torch.tensor([0]), reduction="none")
    assert loss[0, 1].item() == pytest.approx(0.75 * (100 - LN2), rel=1e-6)
    assert loss[0, 0].item() == pytest.approx(0.25 * 100.0, rel=1e-6)
    assert loss[0, 2].item() == pytest.approx(0.0, abs=1e-30)


EXTREME_LOGITS = torch.tensor(
    [
        [100.0, -100.0, 0.0],
        [-100.0, 100.0, 50.0],
        [50.0, -50.0, -100.0],
        [-50.0, 50.0, 100.0],
    ]
)
EXTREME_TARGET = torch.tensor([0, 0, 1, 2])
EXTREME_SCORE = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.9, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
    ]
)

EXTREME_CASES = {
    "softmax_cross_entropy": lambda x: softmax_cross_entropy(x, EXTREME_TARGET),
    "focal": lambda x: focal_loss(x, EXTREME_TARGET),
    "focal_gamma_half": lambda x: focal_loss(x, EXTREME_TARGET, gamma=0.5),
    "modified_softmax": lambda x: modified_focal_loss(x, EXTREME_TARGET, activation="softmax"),
    "modified_softmax_gamma_half": lambda x: modified_focal_loss(x, EXTREME_TARGET, gamma=0.5),
    "modified_sigmoid": lambda x: modified_focal_loss(x, EXTREME_TARGET, activation="sigmoid"),
    "poly_focal": lambda x: poly_focal_loss(x, EXTREME_TARGET, poly_scale=-1.0, poly_pow=3),
    "varifocal": lambda x: varifocal_loss(x, EXTREME_SCORE),
    "quality_focal": lambda x: quality_focal_loss(x, EXTREME_SCORE),
    "distribution_focal": lambda x: distribution_focal_loss(x, torch.tensor([0.0, 1.5, 2.0, 7.0])),
}


@pytest.mark.parametrize("name", sorted(EXTREME_CASES))
def test_extreme_logits_finite(name):
    logits = EXTREME_LOGITS.clone().requires_grad_(True)
    loss = EXTREME_CASES[name](logits)
    loss.backward()
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    assert torch.isfinite(logits.grad).all(), f"{name}: gradient {logits.grad}"


# --- reductions -------------------------------------------------------------------

GENERATOR = torch.Generator().manual_seed(7)
REDUCTION_LOGITS = torch.randn(5, 4, generator=GENERATOR)
REDUCTION_TARGET = torch.randint(0, 4, (5,), generator=GENERATOR)
REDUCTION_SCORE = torch.rand(5, 4, generator=GENERATOR) * (torch.rand(5, 4, generator=GENERATOR) > 0.5)

REDUCTION_CASES = {
    "softmax_cross_entropy": (lambda r: softmax_cross_entropy(REDUCTION_LOGITS, REDUCTION_TARGET, reduction=r), (5,)),
    "focal": (lambda r: focal_loss(REDUCTION_LOGITS, REDUCTION_TARGET, reduction=r), (5,)),
    "modified_softmax": (lambda r: modified_focal_loss(REDUCTION_LOGITS, REDUCTION_TARGET, reduction=r), (5, 4)),
    "poly_focal": (lambda r: poly_focal_loss(REDUCTION_LOGITS, REDUCTION_TARGET, reduction=r), (5,)),
    "varifocal": (lambda r: varifocal_loss(REDUCTION_LOGITS, REDUCTION_SCORE, reduction=r), (5, 4)),
    "quality_focal": (lambda r: quality_focal_loss(REDUCTION_LOGITS, REDUCTION_SCORE, reduction=r), (5, 4)),
    "distribution_focal": (
        lambda r: distribution_focal_loss(REDUCTION_LOGITS, torch.tensor([0.0, 0.7, 1.5, 2.9, 3.0]), reduction=r),
        (5,),
    ),
}


@pytest.mark.parametrize("name", sorted(REDUCTION_CASES))
def test_reductions(name):
    compute, shape = REDUCTION_CASES[name]
    unreduced = compute("none")
    assert unreduced.shape == shape
    torch.testing.assert_close(compute("sum"), unreduced.sum())
    torch.testing.assert_close(compute("mean"), unreduced.mean())


# --- argument checks --------------------------------------------------------------

LOGITS = torch.zeros(2, 3)
TARGET = torch.tensor([0, 2])
SCORE = torch.zeros(2, 3)

INVALID_CALLS = [
    ("alpha", "-0.1", lambda: focal_loss(LOGITS, TARGET, alpha=-0.1)),
    ("alpha", "1.5", lambda: modified_focal_loss(LOGITS, TARGET, alpha=1.5)),
    ("alpha", "2.0", lambda: varifocal_loss(LOGITS, SCORE, alpha=2.0)),
    ("gamma", "-1.0", lambda: focal_loss(LOGITS, TARGET, gamma=-1.0)),
    ("gamma", "nan", lambda: poly_focal_loss(LOGITS, TARGET, gamma=float("nan"))),
    ("beta", "-2.0", lambda: quality_focal_loss(LOGITS, SCORE, beta=-2.0)),
    ("poly_pow", "0", lambda: poly_focal_loss(LOGITS, TARGET, poly_pow=0)),
    ("reduction", "'avg'", lambda: softmax_cross_entropy(LOGITS, TARGET, reduction="avg")),
    ("activation", "'tanh'", lambda: modified_focal_loss(LOGITS, TARGET, activation="tanh")),
    ("target", "(3,)", lambda: focal_loss(LOGITS, torch.tensor([0, 1, 2]))),
    ("target", "from 0 to 3", lambda: focal_loss(LOGITS, torch.tensor([0, 3]))),
    ("target", "torch.float32", lambda: focal_loss(LOGITS, torch.tensor([0.0, 1.0]))),
    ("logits", "(2, 3, 1)", lambda: focal_loss(LOGITS.unsqueeze(-1), TARGET)),
    ("target_score", "(2, 2)", lambda: varifocal_loss(LOGITS, torch.zeros(2, 2))),
    ("target_score", "1.5", lambda: quality_focal_loss(LOGITS, torch.full((2, 3), 1.5))),
    ("reg_max", "0", lambda: distribution_focal_loss(torch.zeros(2, 1), torch.zeros(2))),
    ("reg_max + 1 = 17", "(2, 3)", lambda: distribution_focal_loss(LOGITS, torch.zeros(2), reg_max=16)),
    ("target", "(3,)", lambda: distribution_focal_loss(LOGITS, torch.zeros(3))),
    ("target", "torch.int64", lambda: distribution_focal_loss(LOGITS, torch.tensor([1, 2]))),
]


@pytest.mark.parametrize("argument, value, call", INVALID_CALLS, ids=[f"{a}={v}" for a, v, _ in INVALID_CALLS])
def test_invalid_argument_raises(argument, value, call):
    with pytest.raises(ValueError) as error:
        call()
    assert argument in str(error.value)
    assert value in str(error.value)


def test_package_attribute_error():
    with pytest.raises(AttributeError, match="no_such_loss"):
        yolonb.losses.no_such_loss
