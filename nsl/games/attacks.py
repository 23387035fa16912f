"""L∞ attacks (FGSM and PGD), a few lines of torch, used to build the adversarial game's examples.

They differentiate only with respect to the input (``torch.autograd.grad``), so no parameter gradient is
accumulated, and they restore the model's mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsl.players import preserve_mode

ATTACKS = ("pgd", "fgsm")


def _input_grad(model: nn.Module, x: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels)
    (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad


def linf_attack(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    attack: str = "pgd",
    eps: float = 16 / 255,
    steps: int = 30,
    step_size: float | None = None,
    targeted: bool = False,
    bounds: tuple[float, float] | None = None,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial examples within an L∞ ball of radius ``eps`` around ``inputs``.

    Untargeted attacks push away from ``labels`` (the true classes); targeted ones (``targeted=True``)
    pull towards ``labels`` (the target classes). PGD starts from a random point of the ball drawn from
    ``generator`` (never the global RNG) and takes ``steps`` signed-gradient steps of ``step_size``
    (default 2.5·eps/steps); FGSM takes one step of size eps. ``bounds`` clamps to the valid input range.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is not supported; use one of {ATTACKS}.")
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be > 0.")
    if attack == "pgd" and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps={steps!r} must be a positive int.")
    step = eps if attack == "fgsm" else (step_size if step_size is not None else 2.5 * eps / steps)
    out = []
    with preserve_mode(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        for start in range(0, len(inputs), batch_size):
            x0 = inputs[start : start + batch_size].detach().clone()
            y = labels[start : start + batch_size].clone()
            x = x0.clone()
            if attack == "pgd":
                noise = torch.rand(x0.shape, generator=generator, device="cpu", dtype=x0.dtype)
                x = x0 + (2 * noise.to(x0.device) - 1) * eps
            n_steps = 1 if attack == "fgsm" else steps
            for _ in range(n_steps):
                if bounds is not None:
                    x = x.clamp(*bounds)
                x = x + step * _input_grad(model, x, y, targeted).sign()
                x = torch.max(torch.min(x, x0 + eps), x0 - eps)
            if bounds is not None:
                x = x.clamp(*bounds)
            out.append(x.detach())
    return torch.cat(out)
