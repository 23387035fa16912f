"""Semivalues: Shapley, Banzhaf and Beta(α, β), each a weight on the coalition sizes a marginal is taken at.

A semivalue of player i is a weighted mean of its marginals over the size s of the coalition S it joins,
``φ_i = Σ_s ω(s) · E_{|S| = s}[v(S ∪ i) − v(S)]`` with ``Σ_s ω(s) = 1`` (S uniform among the sets of that size).
The three families nsl knows are all *probabilistic values*: every other player is in S independently with a
probability t, and t has a distribution:

- ``"shapley"``: t uniform on [0, 1], so ω(s) = 1/N (every size alike; the only efficient one: Σφ = v(N) − v(∅));
- ``"banzhaf"``: t = 1/2, so ω(s) = C(N−1, s)/2^(N−1): sizes near N/2 (Wang & Jia 2023: the most robust to noise);
- ``"beta(α,β)"`` (Kwon & Zou 2022): t ~ Beta(β, α); α > β weighs small coalitions, β > α large ones, near the
  full model, where a repair that removes a few filters acts. ``beta(1,1)`` is Shapley; ``beta(1,16)`` puts a mean
  of 1/17 of the other filters out;
- ``"leave_one_out"``: t = 1, all the weight on the full coalition: ``v(N) − v(N ∖ i)``, the limit of Beta as β → ∞.
  It needs no sampling: ``tmab`` computes it exactly in N + 1 evaluations.

Because the inclusions are independent given t, a semivalue restricted to the players that matter to a term of a
game is the same semivalue on fewer players: the exact values of :mod:`nsl.games.synthetic` need only
:meth:`Semivalue.moment`, ``E[t^a (1 − t)^b]``.

In a scan (players removed one at a time), position p means p players removed before i, so a coalition of size
N − 1 − p: :meth:`Semivalue.position_weights` is ω read from the full model down.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("shapley", "banzhaf", "beta", "leave_one_out")
ACCEPTED = ("'shapley', 'banzhaf', 'beta(α,β)' with α, β > 0 (e.g. 'beta(1,4)': weighted toward the full model) or "
            "'leave_one_out'")
_BETA = re.compile(r"^beta\(\s*([0-9.eE+-]+)\s*,\s*([0-9.eE+-]+)\s*\)$")


@dataclass(frozen=True)
class Semivalue:
    """One semivalue: ``kind`` (``"shapley"``, ``"banzhaf"``, ``"beta"``) and, for Beta, ``alpha`` and ``beta``.

    Build one with :func:`parse_semivalue` (``"banzhaf"``, ``"beta(1,4)"``); ``name`` is its canonical spelling.
    """

    kind: str = "shapley"
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def name(self) -> str:
        if self.kind == "beta":
            return f"beta({_number(self.alpha)},{_number(self.beta)})"
        return self.kind

    @property
    def is_shapley(self) -> bool:
        """Shapley's weights (also ``beta(1,1)``): the only semivalue whose values sum to v(N) − v(∅)."""
        return self.kind == "shapley" or (self.kind == "beta" and self.alpha == 1 and self.beta == 1)

    def log_moment(self, a: Tensor | float, b: Tensor | float) -> Tensor:
        """log E[t^a (1 − t)^b]: the chance that a given a others are in the coalition and b given others are not."""
        a_t = torch.as_tensor(a, dtype=torch.float64)
        b_t = torch.as_tensor(b, dtype=torch.float64)
        if self.kind == "leave_one_out":  # t = 1: everyone else is present
            return torch.where(b_t == 0, 0.0, -math.inf) + 0 * a_t
        if self.kind == "banzhaf":
            return -(a_t + b_t) * math.log(2)
        alpha, beta = (1.0, 1.0) if self.kind == "shapley" else (self.alpha, self.beta)
        # t ~ Beta(β, α): E[t^a (1−t)^b] = B(a + β, b + α) / B(β, α)
        prior = _log_beta(torch.tensor(beta, dtype=torch.float64), torch.tensor(alpha, dtype=torch.float64))
        return _log_beta(a_t + beta, b_t + alpha) - prior

    def moment(self, a: Tensor | float, b: Tensor | float) -> Tensor:
        """E[t^a (1 − t)^b] (see :meth:`log_moment`)."""
        return self.log_moment(a, b).exp()

    def log_size_weights(self, n_players: int) -> Tensor:
        """log ω(s) for s = 0..N−1: the log weight of the marginals at coalitions of s other players."""
        s = torch.arange(n_players, dtype=torch.float64)
        m = n_players - 1
        log_choose = torch.lgamma(torch.full_like(s, m + 1.0)) - torch.lgamma(s + 1) - torch.lgamma(m - s + 1)
        return log_choose + self.log_moment(s, m - s)

    def size_weights(self, n_players: int) -> Tensor:
        """ω(s) for s = 0..N−1, summing to 1 (float64; sizes far from where the weight lies may underflow to 0)."""
        w = self.log_size_weights(n_players).exp()
        return w / w.sum()

    def position_weights(self, n_players: int) -> Tensor:
        """ω by scan position p = 0..N−1 (p players removed before the player: size N − 1 − p)."""
        return self.size_weights(n_players).flip(0)

    def __str__(self) -> str:
        return self.name


SHAPLEY = Semivalue("shapley")
BANZHAF = Semivalue("banzhaf")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _log_beta(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def parse_semivalue(spec: str | Semivalue | None) -> Semivalue:
    """``"shapley"`` | ``"banzhaf"`` | ``"beta(α,β)"`` (or a :class:`Semivalue`) -> a :class:`Semivalue`.

    ValueError naming the value and what is accepted otherwise (before any work starts).
    """
    if spec is None:
        return SHAPLEY
    if isinstance(spec, Semivalue):
        if spec.kind not in KINDS:
            raise ValueError(f"semivalue kind {spec.kind!r} is not known; use {ACCEPTED}.")
        return parse_semivalue(spec.name)
    if not isinstance(spec, str):
        raise ValueError(f"semivalue={spec!r} is not accepted; use {ACCEPTED}.")
    text = spec.strip().lower().replace(" ", "")
    if text in ("shapley", "banzhaf", "leave_one_out"):
        return Semivalue(text)
    match = _BETA.match(text)
    if match:
        try:
            alpha, beta = float(match.group(1)), float(match.group(2))
        except ValueError:
            alpha = beta = float("nan")
        if math.isfinite(alpha) and math.isfinite(beta) and alpha > 0 and beta > 0:
            if alpha == 1 and beta == 1:
                return SHAPLEY  # beta(1,1) is Shapley: one name for one semivalue
            return Semivalue("beta", alpha, beta)
    raise ValueError(f"semivalue={spec!r} is not accepted; use {ACCEPTED}.")


LEAVE_ONE_OUT = Semivalue("leave_one_out")


def values_suffix(name: str) -> str:
    """What follows a game's or an estimator's name in titles and lines: ``" (banzhaf values)"``; ``""`` for Shapley."""
    return "" if name == "shapley" else f" ({name} values)"

__all__ = ["BANZHAF", "KINDS", "LEAVE_ONE_OUT", "SHAPLEY", "Semivalue", "parse_semivalue", "values_suffix"]
