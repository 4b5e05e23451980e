"""The maths of consistency training on the unlabeled pool, as pure functions.

- ``ema``: one exponential-moving-average step, shared by the running estimates below.
- ``flexmatch_thresholds``: per-class confidence thresholds that adapt to how well each class is
  learnt (FlexMatch, Zhang et al. 2021, "Curriculum Pseudo Labeling"): a class the model rarely
  predicts confidently gets a lower bar, so the pool's hard classes are not starved of targets
  while the easy ones flood the loss (FixMatch's single fixed threshold, Sohn et al. 2020).
- ``align_distribution``: distribution alignment (ReMixMatch, Berthelot et al. 2020): the weak
  view's probabilities are multiplied by the class prior over their running mean and
  renormalised, so the targets follow the estimated class mix instead of the model's bias.
- ``consistency_loss``: FixMatch's unlabeled loss: cross-entropy of the strong view's logits to
  the weak view's hard pseudo-label, on the rows whose (aligned) confidence clears their class's
  threshold.
- ``softmatch_update`` / ``softmatch_weights``: SoftMatch's soft mask (Chen et al. 2023, "SoftMatch:
  Addressing the Quantity-Quality Trade-off in Semi-supervised Learning"): instead of a hard
  threshold, every pool row is weighted by a Gaussian of its confidence truncated at the running
  mean, so rows at or above the mean confidence count fully and less confident ones fade out
  smoothly; ``soft_consistency_loss`` is the FixMatch loss with those weights.
- ``freematch_update`` / ``freematch_thresholds`` / ``freematch_fairness_loss``: FreeMatch (Wang et
  al. 2023, "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning"): the global
  threshold is a moving average of the pool's max-probability (Eq. 6), so it follows the model's
  confidence as it learns instead of a fixed tau; each class's bar is that threshold scaled by
  the class's moving-average probability over its maximum (Eq. 7-9); the self-adaptive fairness
  term (Eq. 11) compares the strong views' mean prediction with the moving averages, each
  normalised by its own histogram of predicted classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ema(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """An exponential moving average step, same shapes in and out: momentum * old + (1 - momentum) * new
    (the running estimates of SoftMatch, FreeMatch and distribution alignment all move this way)."""
    return momentum * old + (1 - momentum) * new


def flexmatch_thresholds(confident_counts: torch.Tensor, n_unused: int, tau: float, warmup: bool = True) -> torch.Tensor:
    """(C,) per class, the pool rows currently predicted as that class with confidence above
    ``tau`` (sigma_c in the paper); ``n_unused`` pool rows not above ``tau`` for any class ->
    (C,) thresholds T_c = M(beta_c) * tau with beta_c = sigma_c / max(max_c sigma, n_unused)
    (``warmup``: early on, when most rows are unused, every beta is small and the thresholds low)
    or sigma_c / max_c sigma, and the convex mapping M(x) = x / (2 - x) (the paper's choice)."""
    sigma = confident_counts.float()
    denom = torch.maximum(sigma.max(), torch.tensor(float(n_unused))) if warmup else sigma.max()
    beta = sigma / denom.clamp(min=1.0)  # (C,) in [0, 1]
    return beta / (2.0 - beta) * tau


def align_distribution(probs: torch.Tensor, prior: torch.Tensor, running_mean: torch.Tensor) -> torch.Tensor:
    """(B, C) probabilities, (C,) target class prior, (C,) running mean of the model's predictions
    over the pool -> (B, C) probs * prior / running_mean, renormalised per row."""
    p = probs * (prior / running_mean.clamp(min=1e-6))
    return p / p.sum(1, keepdim=True)


def consistency_loss(strong_logits: torch.Tensor, weak_probs: torch.Tensor, thresholds: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) logits of the strong views, (B, C) target probabilities of the weak views (no grad),
    (C,) per-class thresholds -> (scalar loss: masked CE summed over B / B, (B,) bool mask).

    The mean is over all B rows, masked ones counting 0, as in FixMatch: the unlabeled term's
    weight grows as more rows clear their threshold."""
    conf, target = weak_probs.max(1)  # (B,), (B,)
    mask = conf >= thresholds[target]  # (B,)
    return soft_consistency_loss(strong_logits, weak_probs, mask.float()), mask


def softmatch_update(mu: torch.Tensor, var: torch.Tensor, conf: torch.Tensor, momentum: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar running mean ``mu`` and variance ``var`` of the pool's max-probability, (B,) this
    batch's max-probabilities -> the updated (mu, var): exponential moving averages of the batch
    mean and unbiased batch variance (SoftMatch's estimate of the confidence distribution; the paper
    starts them at 1 / C and 1.0)."""
    batch_var = conf.var(unbiased=True) if len(conf) > 1 else torch.zeros((), device=conf.device)
    return ema(mu, conf.mean(), momentum), ema(var, batch_var, momentum)


def softmatch_weights(conf: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, n_sigma: float = 2.0) -> torch.Tensor:
    """(B,) max-probabilities of the weak views, scalar running mean and variance -> (B,) weights in
    (0, 1]: 1 at or above ``mu``, exp(-(conf - mu)^2 / (2 var / n_sigma^2)) below it (the paper's
    truncated Gaussian; ``n_sigma`` = 2 as in its released code)."""
    below = torch.clamp(conf - mu, max=0.0)  # (B,) 0 for rows at or above the mean
    return torch.exp(-below.pow(2) / (2 * var.clamp(min=1e-8) / n_sigma ** 2))


def soft_consistency_loss(strong_logits: torch.Tensor, weak_probs: torch.Tensor, row_weights: torch.Tensor
                          ) -> torch.Tensor:
    """(B, C) logits of the strong views, (B, C) weak-view probabilities (no grad), (B,) weights ->
    scalar: sum_i w_i CE(strong_i, argmax weak_i) / B (FixMatch's loss with a soft mask)."""
    target = weak_probs.argmax(1)  # (B,)
    ce = F.cross_entropy(strong_logits, target, reduction="none")  # (B,)
    return (ce * row_weights).sum() / max(len(ce), 1)


def freematch_update(time_p: torch.Tensor, p_model: torch.Tensor, label_hist: torch.Tensor, probs: torch.Tensor,
                     momentum: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scalar global threshold ``time_p``, (C,) moving-average class probability ``p_model``, (C,)
    moving-average histogram of predicted classes ``label_hist``, (B, C) this batch's weak-view
    probabilities -> the three updated (exponential moving averages of the batch's mean max-probability,
    mean probability and share of argmax per class; the paper starts them all at 1 / C)."""
    conf, pred = probs.max(1)  # (B,), (B,)
    hist = torch.bincount(pred, minlength=probs.shape[1]).to(probs.dtype)  # (C,)
    return (ema(time_p, conf.mean(), momentum), ema(p_model, probs.mean(0), momentum),
            ema(label_hist, hist / hist.sum().clamp(min=1), momentum))


def freematch_thresholds(time_p: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """Scalar global threshold, (C,) moving-average class probability -> (C,) per-class thresholds
    time_p * p_model_c / max_c p_model (MaxNorm; the most predicted class gets the global bar)."""
    return time_p * p_model / p_model.max().clamp(min=1e-12)


def freematch_fairness_loss(strong_logits: torch.Tensor, mask: torch.Tensor, p_model: torch.Tensor,
                            label_hist: torch.Tensor) -> torch.Tensor:
    """(B, C) logits of the strong views, (B,) bool mask of the rows above their threshold, (C,) the
    moving averages -> scalar: sum_c a_c log b_c with a = SumNorm(p_model / label_hist) and b =
    SumNorm(mean masked strong probability / its histogram of argmaxes), the paper's -H(a, b) (Eq. 11,
    minimised with weight lambda_f); a class no masked row predicts counts 0 in b's scaling, as in
    the authors' code. 0 when no row clears its bar."""
    if not bool(mask.any()):
        return strong_logits.sum() * 0.0  # keeps the graph; nothing to balance
    probs = F.softmax(strong_logits[mask], -1)  # (M, C)
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).to(probs.dtype)  # (C,)
    hist = hist / hist.sum()

    def inv(x):  # 1 / x with 0 where x is 0 (a class never predicted)
        return torch.where(x > 0, 1.0 / x.clamp(min=1e-12), torch.zeros_like(x)).detach()

    a = p_model * inv(label_hist)
    a = a / a.sum()  # (C,)
    b = probs.mean(0) * inv(hist)
    b = b / b.sum()  # (C,)
    return (a * torch.log(b + 1e-12)).sum()
