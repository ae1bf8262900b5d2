"""Classification and box-distribution losses of the focal family, as pure functions.

Every function takes raw logits, never probabilities, and works in log space
(``log_softmax``, ``logsigmoid``, ``binary_cross_entropy_with_logits``). So logits of
+-100 give finite losses and finite gradients, where ``log(softmax(x))`` would give
``-inf``. A modulating factor such as ``(1 - p_t)^gamma`` is computed as
``exp(gamma * log(1 - p_t))`` for the same reason: its gradient stays finite even when
``p_t`` rounds to 1 and ``gamma`` is below 1.

Two output layouts exist, and each docstring names the one it uses:

- one value per sample, shape (N,): ``softmax_cross_entropy``, ``focal_loss``,
  ``poly_focal_loss`` and ``distribution_focal_loss`` (one value per predicted side);
- one value per sample and class, shape (N, C), like ``torchvision.ops.sigmoid_focal_loss``:
  ``modified_focal_loss``, ``varifocal_loss`` and ``quality_focal_loss``.

``reduction="mean"`` averages over every element of that unreduced output, so for the
(N, C) losses it divides by N * C. A caller that normalises by the number of positive
samples uses ``reduction="sum"`` and divides.

The "softmax form" and the "modified" form are those of lvsolo's blog post "Focal Loss
and its improvements" (2024-10-24), which this project regenerates.

PyTorch and torchvision provide only the cross-entropy and the sigmoid focal loss
(``torchvision.ops.sigmoid_focal_loss``), so the other forms are written here. The
sigmoid branch of ``modified_focal_loss`` is written here too, in log space, so that
gamma below 1 keeps finite gradients, and a test checks it against torchvision.

Sources:

- focal loss: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
- poly focal loss: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of
  Classification Loss Functions", ICLR 2022.
- varifocal loss: Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector",
  CVPR 2021.
- quality and distribution focal loss: Li et al., "Generalized Focal Loss: Learning
  Qualified and Distributed Bounding Boxes for Dense Object Detection", NeurIPS 2020.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

Reduction = Literal["none", "mean", "sum"]
Activation = Literal["softmax", "sigmoid"]

_REDUCTIONS = ("none", "mean", "sum")
_ACTIVATIONS = ("softmax", "sigmoid")

# Distance kept between a clamped DFL target and reg_max, so that the right-hand bin
# floor(target) + 1 is at most reg_max.
DFL_CLAMP_EPS = 1e-3

__all__ = [
    "DFL_CLAMP_EPS",
    "distribution_focal_loss",
    "focal_loss",
    "modified_focal_loss",
    "poly_focal_loss",
    "quality_focal_loss",
    "softmax_cross_entropy",
    "varifocal_loss",
]


# --- argument checks ---------------------------------------------------------------


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_real(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_alpha(alpha: float) -> None:
    _check_real("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")


def _check_non_negative(name: str, value: float) -> None:
    _check_real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_logits_2d(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point tensor of shape (N, C), got {shape}")
    if logits.shape[1] < 1:
        raise ValueError(f"logits must have at least one class column, got shape {tuple(logits.shape)}")


def _check_class_target(logits: Tensor, target: Tensor) -> None:
    """Check an (N,) tensor of class indices against (N, C) logits."""
    _check_logits_2d(logits)
    if not isinstance(target, Tensor) or target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        dtype = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be an integer tensor of class indices, got {dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target must have shape (N,) = ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )

    num_classes = logits.shape[1]
    if target.numel() > 0:
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target class indices must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                f"got values from {low} to {high}"
            )


def _check_score_target(logits: Tensor, target_score: Tensor) -> None:
    """Check an (N, C) tensor of soft targets in [0, 1] against (N, C) logits."""
    _check_logits_2d(logits)
    if not isinstance(target_score, Tensor) or not target_score.is_floating_point():
        dtype = target_score.dtype if isinstance(target_score, Tensor) else type(target_score).__name__
        raise ValueError(f"target_score must be a floating-point tensor, got {dtype}")
    if target_score.shape != logits.shape:
        raise ValueError(
            f"target_score must have the shape of logits {tuple(logits.shape)}, got {tuple(target_score.shape)}"
        )

    if target_score.numel() > 0:
        low, high = float(target_score.min()), float(target_score.max())
        if not (0.0 <= low and high <= 1.0):
            raise ValueError(f"target_score values must lie in [0, 1], got values from {low} to {high}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean()


# --- stable log-probabilities ------------------------------------------------------


def _log_one_minus_softmax(logits: Tensor) -> Tensor:
    """Compute log(1 - softmax(logits)) per element without cancellation.

    Args:
        logits: (N, C) class logits, C >= 2.

    Returns:
        (N, C) log(1 - p_i), finite for finite logits.
    """
    # Every class except the largest has p <= 0.5, where log1p(-p) is accurate.
    # The largest class may have p that rounds to 1, so its complement is summed
    # directly from the other classes: log(1 - p_top) = logsumexp(others) - logsumexp(all).
    top = logits.argmax(dim=1, keepdim=True)
    is_top = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top, True)

    # The top entry is zeroed before log1p, because torch.where alone would still
    # back-propagate NaN from log1p(-1) into the unused branch.
    prob_without_top = F.softmax(logits, dim=1).masked_fill(is_top, 0.0)
    log_rest = torch.log1p(-prob_without_top)

    others = logits.masked_fill(is_top, float("-inf"))
    log_top = torch.logsumexp(others, dim=1, keepdim=True) - torch.logsumexp(logits, dim=1, keepdim=True)

    return torch.where(is_top, log_top.expand_as(logits), log_rest)


def _softmax_target_terms(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Return log p_t and log(1 - p_t) of the softmax, each (N,), for C >= 2."""
    index = target.long().unsqueeze(1)
    log_p_t = F.log_softmax(logits, dim=1).gather(1, index).squeeze(1)
    log_one_minus_p_t = _log_one_minus_softmax(logits).gather(1, index).squeeze(1)
    return log_p_t, log_one_minus_p_t


def _zero_loss(logits: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of `shape` that stay attached to the graph of `logits` (gradient zero)."""
    return (logits.sum() * 0.0).expand(shape).clone()


# --- classification losses ---------------------------------------------------------


def softmax_cross_entropy(logits: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Compute the softmax cross-entropy, the class loss of the original YOLO code base.

    Args:
        logits: (N, C) class logits.
        target: (N,) int64 class indices in [0, C).
        reduction: "none" returns (N,) values, "mean" their mean, "sum" their sum.

    Returns:
        (N,) or a scalar: -log softmax(logits)[target], in nats.

    Raises:
        ValueError: on an invalid reduction, shape, dtype or class index.
    """
    _check_reduction(reduction)
    _check_class_target(logits, target)

    return F.cross_entropy(logits, target.long(), reduction=reduction)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Compute the focal loss on the softmax cross-entropy: -alpha (1 - p_t)^gamma log p_t.

    This is the blog post's form: the focal term of Lin et al. (ICCV 2017) applied to the
    softmax over the classes of a positive cell. Unlike the
    paper's sigmoid form, it has no term for the non-target classes, so alpha only scales
    the loss. ``modified_focal_loss`` adds that term. With alpha = 1 and gamma = 0 it
    equals ``softmax_cross_entropy``.

    Args:
        logits: (N, C) class logits.
        target: (N,) int64 class indices in [0, C).
        alpha: weight in [0, 1].
        gamma: focusing parameter, >= 0.
        reduction: "none" returns (N,) values, "mean" their mean, "sum" their sum.

    Returns:
        (N,) or a scalar, in nats. With C = 1 the softmax is always 1, so the loss is zero.

    Raises:
        ValueError: on an invalid alpha, gamma, reduction, shape, dtype or class index.
    """
    _check_reduction(reduction)
    _check_alpha(alpha)
    _check_non_negative("gamma", gamma)
    _check_class_target(logits, target)

    if logits.shape[1] == 1:
        return _reduce(_zero_loss(logits, (logits.shape[0],)), reduction)

    log_p_t, log_one_minus_p_t = _softmax_target_terms(logits, target)
    modulating = torch.exp(gamma * log_one_minus_p_t)
    loss = -alpha * modulating * log_p_t

    return _reduce(loss, reduction)


def modified_focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    activation: Activation = "softmax",
    reduction: Reduction = "mean",
) -> Tensor:
    """Compute the focal loss with the negative-class term added (the blog post's "modified" form).

    For sample n with target class t and class probabilities p:

    - target class: -alpha (1 - p_t)^gamma log p_t;
    - every other class i: -(1 - alpha) p_i^gamma log(1 - p_i).

    With ``activation="sigmoid"``, p = sigmoid(logits) per class and each element equals
    ``torchvision.ops.sigmoid_focal_loss`` with one-hot targets, which is the form of Lin
    et al. (ICCV 2017). With ``activation="softmax"``, p = softmax(logits) over the classes.

    Args:
        logits: (N, C) class logits.
        target: (N,) int64 class indices in [0, C).
        alpha: weight of the target-class term in [0, 1]; the other classes get 1 - alpha.
        gamma: focusing parameter, >= 0.
        activation: "softmax" or "sigmoid", how probabilities come from the logits.
        reduction: "none" returns (N, C) values, "mean" their mean over all N * C
            elements (as torchvision does), "sum" their sum.

    Returns:
        (N, C) or a scalar, in nats. With softmax over C = 1 the loss is zero.

    Raises:
        ValueError: on an invalid alpha, gamma, activation, reduction, shape, dtype or
            class index.
    """
    _check_reduction(reduction)
    _check_alpha(alpha)
    _check_non_negative("gamma", gamma)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    _check_class_target(logits, target)

    is_target = F.one_hot(target.long(), logits.shape[1]).bool()

    if activation == "sigmoid":
        log_p = F.logsigmoid(logits)
        log_one_minus_p = F.logsigmoid(-logits)
    elif logits.shape[1] == 1:
        return _reduce(_zero_loss(logits, tuple(logits.shape)), reduction)
    else:
        log_p = F.log_softmax(logits, dim=1)
        log_one_minus_p = _log_one_minus_softmax(logits)

    positive = -alpha * torch.exp(gamma * log_one_minus_p) * log_p
    negative = -(1.0 - alpha) * torch.exp(gamma * log_p) * log_one_minus_p
    loss = torch.where(is_target, positive, negative)

    return _reduce(loss, reduction)


def poly_focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    poly_scale: float = 1.0,
    poly_pow: float = 1,
    reduction: Reduction = "mean",
) -> Tensor:
    """Compute the poly focal loss: focal_loss + poly_scale (1 - p_t)^(gamma + poly_pow).

    Leng et al. (ICLR 2022) add epsilon (1 - p_t)^(gamma + 1) to the focal loss (Poly-1).
    Here the exponent is generalised to gamma + poly_pow, as in the blog post's grid, and
    the focal part is the softmax form of ``focal_loss``. The poly term carries no alpha.
    A negative poly_scale lowers the weight of the leading polynomial term, and the loss
    of a sample can then be negative. With alpha 0.25, gamma 2 and poly_scale -1 the loss
    of a sample is lowest near p_t = 0.1, not at 1, so training lowers the true class's
    probability (`yolonb.report.tables.poly_loss_minimum` finds the minimum).

    Args:
        logits: (N, C) class logits.
        target: (N,) int64 class indices in [0, C).
        alpha: weight of the focal part in [0, 1].
        gamma: focusing parameter, >= 0.
        poly_scale: coefficient of the added term, any finite number (epsilon in the paper).
        poly_pow: added to gamma in the exponent of the added term, > 0.
        reduction: "none" returns (N,) values, "mean" their mean, "sum" their sum.

    Returns:
        (N,) or a scalar. With C = 1, p_t = 1 and the loss is zero.

    Raises:
        ValueError: on an invalid alpha, gamma, poly_scale, poly_pow, reduction, shape,
            dtype or class index.
    """
    _check_reduction(reduction)
    _check_alpha(alpha)
    _check_non_negative("gamma", gamma)
    _check_real("poly_scale", poly_scale)
    _check_real("poly_pow", poly_pow)
    if poly_pow <= 0:
        raise ValueError(f"poly_pow must be > 0, got {poly_pow!r}")
    _check_class_target(logits, target)

    if logits.shape[1] == 1:
        return _reduce(_zero_loss(logits, (logits.shape[0],)), reduction)

    log_p_t, log_one_minus_p_t = _softmax_target_terms(logits, target)
    focal = -alpha * torch.exp(gamma * log_one_minus_p_t) * log_p_t
    poly = poly_scale * torch.exp((gamma + poly_pow) * log_one_minus_p_t)
    loss = focal + poly

    return _reduce(loss, reduction)


def varifocal_loss(
    logits: Tensor,
    target_score: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Compute the varifocal loss of Zhang et al. (VarifocalNet, CVPR 2021).

    With p = sigmoid(logits) and q = target_score per element:

    - positive (q > 0): -q (q log p + (1 - q) log(1 - p)), the binary cross-entropy
      towards q weighted by q itself, so alpha and gamma do not apply;
    - negative (q = 0): -alpha p^gamma log(1 - p).

    The paper's default is alpha = 0.75. The blog post used 0.25.

    Args:
        logits: (N, C) class logits.
        target_score: (N, C) targets in [0, 1]. A positive sample has the IoU of its
            predicted box with the ground truth at its class and 0 elsewhere. A negative
            sample has zeros only.
        alpha: weight of the negative term in [0, 1].
        gamma: focusing parameter of the negative term, >= 0.
        reduction: "none" returns (N, C) values, "mean" their mean over all N * C
            elements, "sum" their sum.

    Returns:
        (N, C) or a scalar, in nats.

    Raises:
        ValueError: on an invalid alpha, gamma, reduction, shape, dtype or a
            target_score outside [0, 1].
    """
    _check_reduction(reduction)
    _check_alpha(alpha)
    _check_non_negative("gamma", gamma)
    _check_score_target(logits, target_score)

    bce = F.binary_cross_entropy_with_logits(logits, target_score, reduction="none")
    negative_weight = alpha * torch.exp(gamma * F.logsigmoid(logits))
    weight = torch.where(target_score > 0, target_score, negative_weight)
    loss = weight * bce

    return _reduce(loss, reduction)


def quality_focal_loss(
    logits: Tensor,
    target_score: Tensor,
    beta: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Compute the quality focal loss of Li et al. (Generalized Focal Loss, NeurIPS 2020).

    Per element, with p = sigmoid(logits) and q = target_score:
    |q - p|^beta * BCE(p, q), where BCE(p, q) = -(q log p + (1 - q) log(1 - p)).
    Negatives have q = 0, so every element is supervised.

    Args:
        logits: (N, C) class logits.
        target_score: (N, C) targets in [0, 1]: the IoU of a positive's predicted box
            with its ground truth at its class, 0 elsewhere.
        beta: exponent of the modulating factor, >= 0 (the paper uses 2). Below 1 the
            factor's gradient is cut to 0 where p equals q exactly, where it would
            otherwise be NaN.
        reduction: "none" returns (N, C) values, "mean" their mean over all N * C
            elements, "sum" their sum.

    Returns:
        (N, C) or a scalar, in nats.

    Raises:
        ValueError: on an invalid beta, reduction, shape, dtype or a target_score
            outside [0, 1].
    """
    _check_reduction(reduction)
    _check_non_negative("beta", beta)
    _check_score_target(logits, target_score)

    bce = F.binary_cross_entropy_with_logits(logits, target_score, reduction="none")
    # The floor keeps the gradient of |q - p|^beta finite at p = q for beta < 1.
    modulating = (target_score - torch.sigmoid(logits)).abs().clamp_min(1e-12).pow(beta)
    loss = modulating * bce

    return _reduce(loss, reduction)


# --- box distribution loss ---------------------------------------------------------


def distribution_focal_loss(
    logits: Tensor,
    target: Tensor,
    reduction: Reduction = "mean",
    *,
    reg_max: int | None = None,
) -> Tensor:
    """Compute the distribution focal loss of Li et al. (Generalized Focal Loss, NeurIPS 2020).

    A box side (a distance from the anchor point, in stride units) is predicted as a
    discrete distribution over the reg_max + 1 bins 0, 1, ..., reg_max, so ``reg_max``
    names the top bin index, not the number of bins (the paper uses reg_max = 16, that
    is 17 bins). For a target y between bins l = floor(y) and r = l + 1, the loss is
    (r - y) CE(l) + (y - l) CE(r), where CE(k) = -log softmax(logits)[k]. A target of
    3.4 thus puts weight 0.6 on bin 3 and 0.4 on bin 4.

    Targets are clamped to [0, reg_max - DFL_CLAMP_EPS], so r never exceeds reg_max. A
    target beyond the last bin means the box is too large for the bins at its level.
    Each call that clamps such targets logs one warning with their count.

    Args:
        logits: (..., reg_max + 1) bin logits, for example (M, 4, reg_max + 1) for the
            four sides of M boxes.
        target: (...) float distances in bin units, the shape of logits without its
            last dimension.
        reduction: "none" returns a value per target (the shape of target), "mean"
            their mean, "sum" their sum.
        reg_max: top bin index, >= 1. When given, it must equal logits.shape[-1] - 1;
            when None, it is read from logits.

    Returns:
        target-shaped values or a scalar, in nats.

    Raises:
        ValueError: on an invalid reg_max, reduction, shape or dtype.
    """
    _check_reduction(reduction)
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point tensor of shape (..., reg_max + 1), got {shape}")

    num_bins = logits.shape[-1]
    if reg_max is None:
        reg_max = num_bins - 1
    if isinstance(reg_max, bool) or not isinstance(reg_max, int) or reg_max < 1:
        raise ValueError(f"reg_max must be an integer >= 1 (at least 2 bins), got {reg_max!r}")
    if num_bins != reg_max + 1:
        raise ValueError(
            f"logits must have reg_max + 1 = {reg_max + 1} bins in the last dimension, "
            f"got shape {tuple(logits.shape)}"
        )

    if not isinstance(target, Tensor) or not target.is_floating_point():
        dtype = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be a floating-point tensor of distances in bin units, got {dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target must have the shape of logits without the bin dimension, {tuple(logits.shape[:-1])}, "
            f"got {tuple(target.shape)}"
        )

    upper = reg_max - DFL_CLAMP_EPS
    too_large = int((target > reg_max).sum())
    negative = int((target < 0).sum())
    if too_large or negative:
        logger.warning(
            "distribution_focal_loss: %d of %d targets lie beyond the last bin (reg_max=%d) and %d below 0; "
            "they were clamped to [0, %g]. Raise reg_max or check the box targets of that level.",
            too_large,
            target.numel(),
            reg_max,
            negative,
            upper,
        )
    target = target.clamp(min=0.0, max=upper)

    left = target.floor().long()
    right = left + 1
    weight_left = right.to(target.dtype) - target
    weight_right = target - left.to(target.dtype)

    log_prob = F.log_softmax(logits, dim=-1)
    log_left = log_prob.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    log_right = log_prob.gather(-1, right.unsqueeze(-1)).squeeze(-1)
    loss = -(weight_left * log_left + weight_right * log_right)

    return _reduce(loss, reduction)
