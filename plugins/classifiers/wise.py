"""Weight-space ensembling of a finetuned body with the body it started from (WiSE-FT).

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models": the linear interpolation
theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_1 of the pre-trained weights theta_0 and
the finetuned weights theta_1 keeps most of what finetuning learnt while staying close to the
pre-trained representation, which is what a few dozen labels and a few hundred noisy steps
can pull away from. One body at inference (unlike an output ensemble), no extra training.
"""

from __future__ import annotations

import torch


def interpolate_weights(init: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * init + alpha * tuned for every floating tensor (same names, same shapes);
    integer buffers (position ids) are taken from ``tuned``. alpha = 1: ``tuned``; 0: ``init``."""
    if init.keys() != tuned.keys():
        missing, extra = sorted(tuned.keys() - init.keys()), sorted(init.keys() - tuned.keys())
        raise ValueError(f"cannot interpolate two bodies with other tensors: only in the tuned one {missing[:3]}, "
                         f"only in the initial one {extra[:3]}. Fix: interpolate a body with its own checkpoint.")
    out = {}
    for k, t in tuned.items():
        a = init[k]
        if a.shape != t.shape:
            raise ValueError(f"cannot interpolate {k!r}: shape {tuple(a.shape)} vs {tuple(t.shape)}.")
        out[k] = torch.lerp(a.to(t.dtype), t, alpha) if t.is_floating_point() else t  # a + alpha * (t - a)
    return out
