"""Confidence bounds that stay valid under the bandit's repeated looks, and the top-k certificate built on them.

Why these bounds. In a network game a filter's marginal is a rare large event: large only when the filter is
removed before the collapse, near 0 after it. After a few samples that all missed the event, a player's own
sample variance and observed range are both 0 and any per-player interval has zero width. A distribution-free
bound over the game's full range (marginals of an accuracy lie in [−1, 1]) is sound but needs thousands of
samples per player at tolerances of 1e-2 (a range term of R·log(N/δ)/n). nsl therefore uses, by default:

- an **asymptotic confidence sequence** (time-uniform CLT, Waudby-Smith, Arnold, Wu, Wang & Ramdas 2021,
  Thm 2.2): ``mean ± σ̂·sqrt(2(nρ²+1)/(n²ρ²)·log(sqrt(nρ²+1)/α))``, valid at every n at once, so the bandit may
  look after every round (no optional-stopping error); ρ is tuned to be tightest near ``t_star`` samples;
- a **pooled prior on the variance**: each player's σ̂² is its sample variance shrunk toward the mean of the
  k largest sample variances of all players, ``(n·s² + n0·τ²)/(n + n0)``: before a player has been sampled
  enough it is assumed to vary like the most variable players, so a few identical samples cannot give a
  narrow interval, while a well-sampled player's own variance takes over;
- a **union bound** over the N players (α = δ/N).

``bound="bernstein"`` is the distribution-free alternative: the empirical Bernstein bound of Maurer & Pontil
with a known range of the samples, made time-uniform by a union over sample counts (α_n = α/(n(n+1))). It is
sound without assumptions but slow on network games; it is also what the original TMAB rule used (with R = 1).
The calibration benchmark (``experiments/benchmarks/calibration.py``) measures how often a certified top-k is
wrong on games with exactly known values, next to δ.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nsl.shapley._common import TAILS
from nsl.shapley.result import RunningStats

BOUNDS = ("clt", "bernstein")


def clt_radius(var: Tensor, count: Tensor, alpha: float, *, anytime: bool = True, t_star: float = 200.0) -> Tensor:
    """Half-width of a two-sided level-(1 − α) interval for a mean of ``count`` samples of variance ``var``.

    ``anytime=True``: the asymptotic confidence sequence (covers every n at once); ``False``: the fixed-n normal
    interval ``z·sqrt(var/n)``. Infinite where ``count`` is 0.
    """
    n = count.double()
    var = var.double().clamp(min=0)
    if anytime:
        log_term = -2 * math.log(alpha)
        rho2 = (log_term + math.log(log_term + 1)) / t_star
        m = n * rho2 + 1
        radius = (var * 2 * m / (n.clamp(min=1) ** 2 * rho2) * torch.log(m.sqrt() / alpha)).sqrt()
    else:
        z = math.sqrt(2) * float(torch.erfinv(torch.tensor(1 - alpha, dtype=torch.float64)))
        radius = z * (var / n.clamp(min=1)).sqrt()
    return torch.where(n > 0, radius, torch.full_like(radius, math.inf))


def bernstein_radius(
    var: Tensor, count: Tensor, alpha: float, value_range: float | Tensor, *, anytime: bool = True
) -> Tensor:
    """Maurer & Pontil's empirical Bernstein half-width for samples in an interval of length ``value_range``.

    ``sqrt(2·var·L/n) + 7·R·L/(3(n − 1))`` with ``L = ln(2/α_n)``; ``anytime=True`` spends α over the sample
    counts (α_n = α/(n(n+1)), summing to α), so the bound holds at every n at once. Infinite below 2 samples.
    """
    n = count.double()
    level = alpha / (n * (n + 1)).clamp(min=1) if anytime else torch.full_like(n, alpha)
    log_term = torch.log(2 / level)
    radius = (2 * var.double().clamp(min=0) * log_term / n.clamp(min=1)).sqrt() + 7 * torch.as_tensor(
        value_range, dtype=torch.float64
    ) * log_term / (3 * (n - 1).clamp(min=1))
    return torch.where(n >= 2, radius, torch.full_like(radius, math.inf))


def rare_event_radius(exposure: Tensor, alpha: float, marginal_bound: float) -> Tensor:
    """The mass a rare event could still hide from a player: ``B · log(1/α) / exposure``.

    Say the player's marginal reaches B (the largest marginal seen anywhere in the game) in a set of positions
    that a sample hits with probability p_t. Its samples all miss it with probability Π(1 − p_t) ≤ e^(−Σp_t); at
    the first time Σp_t reaches log(1/α) that is ≤ α, and missing it up to any later time implies missing it up
    to then, so the bound holds at every sample size at once without a union over sizes. Σp_t is the unseen
    mass over B times ``exposure``: the samples, each counted by how much its draw looked where the event could
    be (1 for a uniform position; for importance-weighted positions, q_b·N/Z_b of the least explored bin b).
    Added to the CLT half-width it keeps a player whose samples are all 0 from being set aside before its rare
    event could have shown. Infinite where ``exposure`` is 0.
    """
    exposure = exposure.double()
    radius = marginal_bound * math.log(1 / alpha) / exposure.clamp(min=1e-300)
    return torch.where(exposure > 0, radius, torch.full_like(radius, math.inf))


def prior_variance(stats: RunningStats, k: int) -> float:
    """The pooled prior τ²: the mean of the ``k`` largest sample variances among players with ≥ 2 samples."""
    sampled = stats.count >= 2
    if not bool(sampled.any()):
        return 0.0
    var = stats.var[sampled]
    return float(var.topk(min(k, len(var))).values.mean())


def shrunk_variance(stats: RunningStats, prior: float, prior_samples: float) -> Tensor:
    """Each player's sample variance shrunk toward ``prior`` as if it had ``prior_samples`` samples of it."""
    n = stats.count.double()
    return (n * stats.var + prior_samples * prior) / (n + prior_samples).clamp(min=1e-12)


def top_k_certificate(
    mean: Tensor,
    radius: Tensor,
    k: int,
    tolerance: float,
    tail: str = "top",
    pair_lower: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[bool, Tensor]:
    """Whether the empirical top-k (bottom-k, or both) is certified, and which players still need samples.

    Certified when, on each requested end, every player inside the k is shown ≥ every player outside minus
    ``tolerance`` (LUCB's stopping rule): if every interval holds, every returned player's value is then ≥ the
    true k-th value − ε and every player left out ≤ it + ε. A pair is shown either by the two players' own
    intervals or, with ``pair_lower(a, b)`` (lower bounds on φ_a − φ_b for index vectors a, b; −inf where
    unknown), by an interval on their difference. Players to sample are those of unresolved pairs whose
    interval straddles the band ±ε/2 around the midpoint of the k-th and (k+1)-th means (both sides settle at
    once), or, when none does, all players of unresolved pairs.
    """
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r} is not supported; use one of {TAILS}.")
    n = len(mean)
    active = torch.zeros(n, dtype=torch.bool)
    certified = True
    for sign in (1.0, -1.0) if tail == "both" else (1.0,) if tail == "top" else (-1.0,):
        m = sign * mean
        low, high = m - radius, m + radius
        order = torch.sort(m, descending=True, stable=True).indices
        inside = torch.zeros(n, dtype=torch.bool)
        inside[order[:k]] = True
        edge_in, edge_out = low[inside].min(), high[~inside].max()
        open_in = inside & (low + tolerance < edge_out)  # not shown above every outside player on its own
        open_out = ~inside & (high > edge_in + tolerance)
        if not bool(open_in.any()):
            continue
        if pair_lower is not None:
            a, b = torch.nonzero(open_in).squeeze(1), torch.nonzero(open_out).squeeze(1)
            shown = pair_lower(a, b) if sign > 0 else pair_lower(b, a).T  # lower bounds on sign·(φ_a − φ_b)
            shown = torch.maximum(shown, low[a].unsqueeze(1) - high[b].unsqueeze(0))
            unresolved = shown + tolerance < 0
            if not bool(unresolved.any()):
                continue
            open_in = torch.zeros(n, dtype=torch.bool)
            open_in[a[unresolved.any(dim=1)]] = True
            open_out = torch.zeros(n, dtype=torch.bool)
            open_out[b[unresolved.any(dim=0)]] = True
        certified = False
        middle = (m[order[k - 1]] + m[order[k]]) / 2
        side = (open_in & (low < middle - tolerance / 2)) | (open_out & (high > middle + tolerance / 2))
        active |= side if bool(side.any()) else open_in | open_out
    return certified, active
