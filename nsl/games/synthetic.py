"""Games whose Shapley values are known in closed form: ground truth for estimators and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


class HarsanyiGame:
    """A sum of unanimity games: ``v(S) = Σ_T a_T · [T ⊆ S]``.

    Every game is one of these (the ``a_T`` are its Harsanyi dividends), and the Shapley value is known in
    closed form: ``φ_i = Σ_{T ∋ i} a_T / |T|``. Additive games have singleton terms only; pairwise
    interaction games add terms of size two.

    Args:
        n_players: number of players N.
        dividends: mapping from a tuple of player indices T to its dividend a_T.
        offset: value of the empty coalition.
    """

    def __init__(self, n_players: int, dividends: Mapping[Sequence[int], float], offset: float = 0.0) -> None:
        self.n_players = n_players
        self.offset = offset
        self.terms = [tuple(sorted(set(t))) for t in dividends]
        for t in self.terms:
            if not t or min(t) < 0 or max(t) >= n_players:
                raise ValueError(f"term {t} must be a non-empty set of players in [0, {n_players}).")
        self.coef = torch.tensor(list(dividends.values()), dtype=torch.float64)
        self.members = torch.zeros(len(self.terms), n_players, dtype=torch.float64)
        for j, t in enumerate(self.terms):
            self.members[j, list(t)] = 1.0
        self.sizes = self.members.sum(dim=1)
        self.n_evals = 0

    def __call__(self, present: Tensor) -> Tensor:
        present = present.reshape(-1, self.n_players)
        inside = (present.double() @ self.members.T) == self.sizes  # (K, terms): T ⊆ S
        self.n_evals += present.shape[0]
        return self.offset + inside.double() @ self.coef

    def shapley(self) -> Tensor:
        """Exact Shapley values, shape (N,)."""
        return (self.members * (self.coef / self.sizes)[:, None]).sum(dim=0)


def additive_game(weights: Sequence[float] | Tensor) -> HarsanyiGame:
    """``v(S) = Σ_{i∈S} w_i``; Shapley value ``φ = w``."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    return HarsanyiGame(len(w), {(i,): float(x) for i, x in enumerate(w)})


def pairwise_game(weights: Sequence[float] | Tensor, interactions: Mapping[tuple[int, int], float]) -> HarsanyiGame:
    """Additive game plus pairwise terms; ``φ_i = w_i + ½ Σ_j W_ij``."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    terms: dict[tuple[int, ...], float] = {(i,): float(x) for i, x in enumerate(w)}
    for (i, j), x in interactions.items():
        terms[(i, j)] = terms.get((i, j), 0.0) + float(x)
    return HarsanyiGame(len(w), terms)


# ---------------------------------------------------------------------------------------------------------------
# Network-shaped games: a collapse that every player shares, with exact Shapley values.

_LOG_FACTORIALS: list[Tensor] = [torch.zeros(1, dtype=torch.float64)]


def _log_binomial(n: Tensor, k: Tensor) -> Tensor:
    """log C(n, k) for integer tensors, from a table of log-factorials (exact to float64 rounding)."""
    top = int(n.max()) if n.numel() else 0
    table = _LOG_FACTORIALS[0]
    if len(table) <= top:
        logs = torch.log(torch.arange(1, 2 * top + 2, dtype=torch.float64))
        table = torch.cat([torch.zeros(1, dtype=torch.float64), logs.cumsum(0)])
        _LOG_FACTORIALS[0] = table
    n, k = n.long(), k.long()
    return table[n] - table[k] - table[n - k]


class CollapseGame:
    """A game shaped like a CNN's accuracy game, with exact Shapley values: ground truth for calibration.

    Players fall into groups; removing a player of group g adds ``damage[g]``. The value stays near ``full``
    until the damage passes ``threshold``, then collapses along a steep sigmoid to ``chance``, so a key player's
    marginal is large only when it is removed early in a scan, before the collapse, and near 0 after it: a rare
    event for permutation sampling. With ``rebound`` (a second damage per group and its threshold) the value
    rises again as the rebound damage grows, scaled so that v(∅) = v(N) exactly: a degenerate game whose values
    sum to 0, like a class game for the class an empty network predicts. Harsanyi ``dividends`` (singletons,
    pairs, triples) are added on top.

    Shapley values are exact: the collapse part depends only on how many players of each group are present, so
    a player's value is a sum over count vectors with multivariate-hypergeometric weights; the dividends add
    ``a_T/|T|`` to each member of T.

    Args:
        group_sizes: players per group; players are assigned to groups in a random order fixed by ``seed``.
        damage: damage per removed player, one per group.
        threshold: damage at the middle of the collapse.
        temperature: width of the collapse, in damage units.
        full, chance: value of the grand coalition's collapse part and of the collapsed network.
        rebound: optional ``(damage per group, threshold)`` of the rise back to v(N) near the empty coalition.
        dividends: optional Harsanyi dividends ``{tuple of players: a_T}``.
        seed: seeds the assignment of players to groups.
    """

    def __init__(
        self,
        group_sizes: Sequence[int],
        damage: Sequence[float],
        threshold: float,
        temperature: float = 0.12,
        *,
        full: float = 0.94,
        chance: float = 0.1,
        rebound: tuple[Sequence[float], float] | None = None,
        dividends: Mapping[Sequence[int], float] | None = None,
        seed: int = 0,
    ) -> None:
        if len(group_sizes) != len(damage) or not group_sizes or min(group_sizes) < 1:
            raise ValueError(
                f"group_sizes={list(group_sizes)} and damage={list(damage)} need one positive size per group."
            )
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0.")
        self.sizes = torch.tensor(list(group_sizes), dtype=torch.float64)
        self.n_players = int(self.sizes.sum())
        self.damage = torch.tensor(list(damage), dtype=torch.float64)
        self.threshold, self.temperature, self.full, self.chance = threshold, temperature, full, chance
        generator = torch.Generator().manual_seed(seed)
        group = torch.repeat_interleave(torch.arange(len(group_sizes)), self.sizes.long())
        self.group = group[torch.randperm(self.n_players, generator=generator)]
        self.onehot = torch.nn.functional.one_hot(self.group, len(group_sizes)).double()  # (N, G)
        self.rebound = None
        if rebound is not None:
            rebound_damage = torch.tensor(list(rebound[0]), dtype=torch.float64)
            if rebound_damage.shape != self.damage.shape:
                raise ValueError("rebound needs one damage per group.")
            self.rebound = (rebound_damage, float(rebound[1]))
            self.rebound_scale = 1.0
            # Scale the rise so that v(∅) = v(N): the collapse part falls by `fall`, the rise must make it up.
            empty = torch.zeros_like(self.sizes)
            fall = 1.0 - float(self._collapse(empty))
            rise = float(self._rise(empty)) - float(self._rise(self.sizes))
            self.rebound_scale = fall / rise if rise > 0 else 0.0
        self.harsanyi = HarsanyiGame(self.n_players, dividends or {}, offset=0.0) if dividends else None
        self.n_evals = 0

    def _collapse(self, counts: Tensor) -> Tensor:
        damage = ((self.sizes - counts) * self.damage).sum(-1)
        scale = torch.sigmoid(torch.tensor(self.threshold / self.temperature, dtype=torch.float64))
        return torch.sigmoid((self.threshold - damage) / self.temperature) / scale

    def _rise(self, counts: Tensor) -> Tensor:
        assert self.rebound is not None
        rebound_damage, threshold = self.rebound
        damage = ((self.sizes - counts) * rebound_damage).sum(-1)
        return torch.sigmoid((damage - threshold) / self.temperature)

    def value_of_counts(self, counts: Tensor) -> Tensor:
        """The collapse part of the value for present-player counts per group, shape (..., G)."""
        level = self._collapse(counts)
        if self.rebound is not None:
            level = level + self.rebound_scale * (self._rise(counts) - self._rise(self.sizes))
        return self.chance + (self.full - self.chance) * level

    def __call__(self, present: Tensor) -> Tensor:
        present = present.reshape(-1, self.n_players)
        self.n_evals += present.shape[0]
        values = self.value_of_counts(present.double() @ self.onehot)
        if self.harsanyi is not None:
            values = values + self.harsanyi(present)
        return values

    def shapley(self) -> Tensor:
        """Exact Shapley values, shape (N,)."""
        n, groups = self.n_players, len(self.sizes)
        per_group = torch.empty(groups, dtype=torch.float64)
        for g in range(groups):
            others = self.sizes.clone()
            others[g] -= 1  # the other players of i's group
            grids = torch.meshgrid(*[torch.arange(int(m) + 1, dtype=torch.float64) for m in others], indexing="ij")
            counts = torch.stack([c.reshape(-1) for c in grids], dim=-1)  # every count vector of the others
            size = counts.sum(-1)
            # P(coalition of the others has these counts) = Π C(m_h, c_h) / C(N-1, s), times 1/N for its size
            log_weight = (
                _log_binomial(others.expand_as(counts), counts).sum(-1)
                - _log_binomial(torch.full_like(size, n - 1), size)
                - math.log(n)
            )
            step = torch.zeros(groups, dtype=torch.float64)
            step[g] = 1.0
            gain = self.value_of_counts(counts + step) - self.value_of_counts(counts)
            per_group[g] = (log_weight.exp() * gain).sum()
        phi = per_group[self.group]
        if self.harsanyi is not None:
            phi = phi + self.harsanyi.shapley()
        return phi


def centre(dividends: dict[tuple[int, ...], float], n_players: int) -> None:
    """Shift every singleton dividend by the same amount so that all dividends sum to 0 (v(N) stays put)."""
    shift = sum(dividends.values()) / n_players
    for i in range(n_players):
        dividends[(i,)] = dividends.get((i,), 0.0) - shift


NETWORK_SHAPES = ("rare", "flat", "interactions", "degenerate", "constant")


def network_game(n_players: int = 300, shape: str = "rare", seed: int = 0) -> CollapseGame:
    """One game of the calibration families, shaped like a CNN's accuracy game (v(N) ≈ 0.94, chance 0.1).

    Shapes:
        ``rare``: 10 key players (damage 1.0) and 10 secondary ones (0.6) among N; the value collapses once about
            one key player and a few others are gone, after a few percent of a scan. Values: keys ≈ 0.033,
            secondary ≈ 0.018, the rest ≈ 0.001, spread by small singleton and pairwise dividends.
        ``flat``: 5 key players and 15 boundary players of one value (spread by ≤ 0.001): the 10th value lies
            inside a plateau, so many top-10s are ε-correct and certifying one needs intervals of width ≈ ε.
        ``interactions``: ``rare`` with strong pairwise and triple dividends among all players.
        ``degenerate``: ``rare`` plus 10 players whose absence makes the value rise back, so v(∅) = v(N): values
            of both signs that sum to 0 (a class game for the class the empty network predicts).
        ``constant``: every coalition is worth 0.5, every marginal is 0: nothing can be certified.

    ``seed`` draws the assignment of players to groups and the dividends (a new instance of the family).
    """
    if shape not in NETWORK_SHAPES:
        raise ValueError(f"shape={shape!r} is not known; use one of {NETWORK_SHAPES}.")
    if not isinstance(n_players, int) or n_players < 40:
        raise ValueError(f"n_players={n_players!r}: the network-shaped games need at least 40 players.")
    generator = torch.Generator().manual_seed(seed)

    def gauss(scale: float) -> float:
        return scale * float(torch.randn(1, generator=generator, dtype=torch.float64))

    def random_terms(count: int, size: int, scale: float) -> dict[tuple[int, ...], float]:
        terms: dict[tuple[int, ...], float] = {}
        for _ in range(count):
            members = tuple(sorted(torch.randperm(n_players, generator=generator)[:size].tolist()))
            terms[members] = terms.get(members, 0.0) + gauss(scale)
        return terms

    rest_damage = 1.2 / (0.1 * n_players)  # the rest alone collapse the value after 10 % of a scan
    if shape == "constant":
        return CollapseGame([n_players], [0.0], threshold=1.0, full=0.5, chance=0.5, seed=seed)
    if shape == "flat":
        sizes, damage = [5, 15, n_players - 20], [1.0, 0.6, rest_damage]
        dividends = {(i,): gauss(0.0004) for i in range(n_players)}
        centre(dividends, n_players)
        return CollapseGame(sizes, damage, threshold=1.2, dividends=dividends, seed=seed)
    dividends = {(i,): gauss(0.002) for i in range(n_players)}
    pair_scale, rebound = 0.003, None
    sizes, damage = [10, 10, n_players - 20], [1.0, 0.6, rest_damage]
    if shape == "interactions":
        pair_scale = 0.01
        dividends.update(random_terms(n_players // 3, 3, 0.02))
    if shape == "degenerate":
        sizes, damage = [10, 10, n_players - 30, 10], [*damage, rest_damage]
        rebound = ([0.0, 0.0, 0.0, 1.0], 9.0)  # the rise needs nine of the ten rebound players gone
    for members, a in random_terms(n_players, 2, pair_scale).items():
        dividends[members] = dividends.get(members, 0.0) + a
    centre(dividends, n_players)
    return CollapseGame(sizes, damage, threshold=1.2, rebound=rebound, dividends=dividends, seed=seed)
