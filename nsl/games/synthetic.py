"""Games whose Shapley values are known in closed form: ground truth for estimators and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nsl.games.base import check_game
from nsl.shapley.semivalues import Semivalue, parse_semivalue


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

    def semivalue(self, semivalue: str | Semivalue = "shapley") -> Tensor:
        """Exact values of any semivalue, shape (N,): a member of T gets a_T · E[t^(|T|−1)] (the rest of T present)."""
        share = parse_semivalue(semivalue).moment(self.sizes - 1, 0)
        return (self.members * (self.coef * share)[:, None]).sum(dim=0)


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
        return self.semivalue("shapley")

    def semivalue(self, semivalue: str | Semivalue = "shapley") -> Tensor:
        """Exact values of any semivalue (:mod:`nsl.shapley.semivalues`), shape (N,)."""
        value = parse_semivalue(semivalue)
        n, groups = self.n_players, len(self.sizes)
        per_group = torch.empty(groups, dtype=torch.float64)
        for g in range(groups):
            others = self.sizes.clone()
            others[g] -= 1  # the other players of i's group
            grids = torch.meshgrid(*[torch.arange(int(m) + 1, dtype=torch.float64) for m in others], indexing="ij")
            counts = torch.stack([c.reshape(-1) for c in grids], dim=-1)  # every count vector of the others
            size = counts.sum(-1)
            # P(the others present have these counts) = Π C(m_h, c_h) · E[t^s (1−t)^(N−1−s)]: each other player is
            # in independently with probability t (Shapley: t uniform, which gives Π C(m_h, c_h) / (N C(N−1, s))).
            log_weight = _log_binomial(others.expand_as(counts), counts).sum(-1) + value.log_moment(size, n - 1 - size)
            step = torch.zeros(groups, dtype=torch.float64)
            step[g] = 1.0
            gain = self.value_of_counts(counts + step) - self.value_of_counts(counts)
            per_group[g] = (log_weight.exp() * gain).sum()
        phi = per_group[self.group]
        if self.harsanyi is not None:
            phi = phi + self.harsanyi.semivalue(value)
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


# ---------------------------------------------------------------------------------------------------------------
# Per-example games: a value that is a weighted sum over examples, each example's game with exact Shapley values.


@dataclass(frozen=True)
class CountTerm:
    """One term of a per-example game: ``coef · [keys ⊆ S] · [lo ≤ |S ∩ counted| ≤ hi]``.

    ``keys`` must all be present (a unanimity over a few key filters); ``counted`` is a set of players, disjoint
    from the keys, whose number present must lie in the band ``[lo, hi]`` (a collapse threshold, a quota, a band
    of scan positions). Players in neither set do not matter to the term.
    """

    coef: float
    keys: tuple[int, ...]
    counted: tuple[int, ...]
    lo: int
    hi: int

    def shapley(self, n_players: int) -> Tensor:
        """Exact Shapley values of the term, shape (N,), in O(|counted|).

        Only the order of keys ∪ counted matters (m players). A key's marginal is 1 when it comes after the other
        keys and after j counted players with lo ≤ j ≤ hi; a counted player's is +1 when it brings the count to lo
        and −1 when it takes it past hi, both after every key. The predecessors of a player at a uniform position
        form a uniform subset of the others, so each probability is a ratio of binomials.
        """
        k, a = len(self.keys), len(self.counted)
        m = k + a
        phi = torch.zeros(n_players, dtype=torch.float64)
        if m == 0 or self.lo > self.hi or self.coef == 0:
            return phi
        lo, hi = max(self.lo, 0), min(self.hi, a)
        if k and lo <= hi:
            j = torch.arange(lo, hi + 1, dtype=torch.float64)
            phi[list(self.keys)] = float((_log_choose(a, j) - _log_choose(m - 1, k - 1 + j)).exp().sum()) / m
        if a:
            value = 0.0
            if 1 <= self.lo <= a and self.lo <= self.hi:  # the count reaches lo
                value += math.exp(_log_choose(a - 1, self.lo - 1) - _log_choose(m - 1, k + self.lo - 1))
            if 0 <= self.hi <= a - 1 and self.lo <= self.hi:  # the count passes hi
                value -= math.exp(_log_choose(a - 1, self.hi) - _log_choose(m - 1, k + self.hi))
            phi[list(self.counted)] = value / m
        return self.coef * phi

    def semivalue(self, n_players: int, semivalue: str | Semivalue = "shapley") -> Tensor:
        """Exact values of the term under any semivalue, shape (N,), in O(|counted|).

        The same events as :meth:`shapley`, with the chance that the keys and counted players present are given ones
        ``E[t^in (1 − t)^out]`` (each other player present independently with probability t): the players in
        neither set drop out, as for Shapley.
        """
        value = parse_semivalue(semivalue)
        k, a = len(self.keys), len(self.counted)
        phi = torch.zeros(n_players, dtype=torch.float64)
        if k + a == 0 or self.lo > self.hi or self.coef == 0:
            return phi
        lo, hi = max(self.lo, 0), min(self.hi, a)
        if k and lo <= hi:
            j = torch.arange(lo, hi + 1, dtype=torch.float64)
            phi[list(self.keys)] = float((_log_choose(a, j) + value.log_moment(k - 1 + j, a - j)).exp().sum())
        if a:
            total = 0.0
            if 1 <= self.lo <= a and self.lo <= self.hi:  # the count reaches lo: lo − 1 of the other a − 1 present
                log_p = float(value.log_moment(k + self.lo - 1, a - self.lo))
                total += math.exp(_log_choose(a - 1, self.lo - 1) + log_p)
            if 0 <= self.hi <= a - 1 and self.lo <= self.hi:  # the count passes hi: hi of the other a − 1 present
                log_p = float(value.log_moment(k + self.hi, a - 1 - self.hi))
                total -= math.exp(_log_choose(a - 1, self.hi) + log_p)
            phi[list(self.counted)] = total
        return self.coef * phi


def _log_choose(n: int | float | Tensor, r: int | float | Tensor) -> Any:
    """log C(n, r) by log-gamma (a float for scalars, a tensor for tensors)."""
    if isinstance(n, Tensor) or isinstance(r, Tensor):
        n_t, r_t = torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
        return torch.lgamma(n_t + 1) - torch.lgamma(r_t + 1) - torch.lgamma(n_t - r_t + 1)
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


SHORT_LIST = 32  # counted (or uncounted) lists up to this long are gathered; longer ones go through a matmul


class CountTermGames:
    """E per-example games on N players, example e's value a sum of :class:`CountTerm` s, evaluated vectorised.

    ``values(present)`` scores K coalitions on every example at once, (K, E); ``example_values(present,
    examples)`` scores row r's coalition on example ``examples[r]``, (R,); ``shapley()`` gives every example's
    exact Shapley values, (E, N). Wrap it in :class:`ExampleMixture` for a game that is a weighted sum over them.

    Args:
        n_players: N.
        terms: one sequence of terms per example (an empty sequence is an example worth 0 for every coalition).
    """

    def __init__(self, n_players: int, terms: Sequence[Sequence[CountTerm]]) -> None:
        if not isinstance(n_players, int) or isinstance(n_players, bool) or n_players < 1:
            raise ValueError(f"n_players={n_players!r} is not accepted; use an int ≥ 1.")
        if not terms:
            raise ValueError("terms is empty; give one sequence of terms per example (at least one example).")
        self.n_players = n_players
        self.terms = [list(t) for t in terms]
        n_examples, width = len(self.terms), max(1, max(len(t) for t in self.terms))
        key_width = max(1, max((len(term.keys) for t in self.terms for term in t), default=1))
        # Padded keys and padded counted indices are masked off; padded terms have coef 0.
        self.keys = torch.zeros(n_examples, width, key_width, dtype=torch.long)
        self.key_pad = torch.ones(n_examples, width, key_width, dtype=torch.bool)  # True: not a key
        self.counted = torch.zeros(n_examples, width, n_players, dtype=torch.bool)
        self.lo = torch.ones(n_examples, width, dtype=torch.long)
        self.hi = torch.zeros(n_examples, width, dtype=torch.long)
        self.coef = torch.zeros(n_examples, width, dtype=torch.float64)
        for e, example in enumerate(self.terms):
            for j, term in enumerate(example):
                members = [*term.keys, *term.counted]
                if members and (min(members) < 0 or max(members) >= n_players):
                    raise ValueError(f"example {e}, term {j}: players must lie in [0, {n_players}), got {term}.")
                if set(term.keys) & set(term.counted) or len(set(term.keys)) != len(term.keys):
                    raise ValueError(f"example {e}, term {j}: keys must be distinct and not counted, got {term}.")
                self.keys[e, j, : len(term.keys)] = torch.tensor(term.keys, dtype=torch.long)
                self.key_pad[e, j, : len(term.keys)] = False
                self.counted[e, j, list(term.counted)] = True
                self.lo[e, j], self.hi[e, j], self.coef[e, j] = term.lo, term.hi, term.coef
        self._counted_columns = self.counted.reshape(-1, n_players).T.float()  # (N, E·J): counts by one matmul
        # Per row, a count is a gather of the counted players, or of the others subtracted from |S| where that
        # list is shorter (a collapse counts everyone but the keys): O(min(|A|, N − |A|)) per term, not O(N).
        # Where both lists are long (voting), rows are grouped by example for one matmul per example instead.
        self._complement = self.counted.sum(-1) > n_players // 2  # (E, J)
        listed = torch.where(self._complement.unsqueeze(-1), ~self.counted, self.counted)
        list_width = max(1, int(listed.sum(-1).max()))
        self._short_lists = list_width <= SHORT_LIST
        order = torch.argsort((~listed).to(torch.uint8), dim=-1, stable=True)[..., :list_width]
        self._listed = order  # (E, J, L) player indices, the listed ones first
        self._listed_pad = ~listed.gather(-1, order)  # True: padding
        self._counted_by_example = self.counted.float().transpose(1, 2).contiguous()  # (E, N, J)

    def __len__(self) -> int:
        return len(self.terms)

    def _terms_value(self, keys_ok: Tensor, counts: Tensor, lo: Tensor, hi: Tensor, coef: Tensor) -> Tensor:
        return ((keys_ok & (counts >= lo) & (counts <= hi)).double() * coef).sum(-1)

    def values(self, present: Tensor) -> Tensor:
        """Every example's value for K coalitions, (K, N) bool -> (K, E) float64."""
        present = present.reshape(-1, self.n_players).bool()
        out = []
        for chunk in present.split(4096):
            k = chunk.shape[0]
            keys_ok = (chunk[:, self.keys.reshape(-1)].reshape(k, *self.keys.shape) | self.key_pad).all(-1)
            counts = (chunk.float() @ self._counted_columns).reshape(k, *self.lo.shape)  # exact below 2^24
            out.append(self._terms_value(keys_ok, counts, self.lo, self.hi, self.coef))
        return torch.cat(out) if out else torch.zeros(0, len(self), dtype=torch.float64)

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:
        """Row r's coalition on example ``examples[r]``: (R, N) bool, (R,) long -> (R,) float64."""
        present = present.reshape(-1, self.n_players).bool()
        examples = examples.long()
        out = []
        for rows, ex in zip(present.split(16384), examples.split(16384), strict=True):
            r = rows.shape[0]
            keys = rows.gather(1, self.keys[ex].reshape(r, -1)).reshape(r, *self.keys.shape[1:])
            keys_ok = (keys | self.key_pad[ex]).all(-1)  # (R, J)
            counts = self._short_counts(rows, ex) if self._short_lists else self._grouped_counts(rows, ex)
            out.append(self._terms_value(keys_ok, counts, self.lo[ex], self.hi[ex], self.coef[ex]))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def _short_counts(self, rows: Tensor, examples: Tensor) -> Tensor:
        """|S ∩ counted| per row and term from the short lists (summing bools as uint8: the fast path)."""
        r = rows.shape[0]
        listed = rows.gather(1, self._listed[examples].reshape(r, -1)).reshape(r, *self._listed.shape[1:])
        counts = (listed & ~self._listed_pad[examples]).view(torch.uint8).sum(-1, dtype=torch.int32)
        complement = self._complement[examples]
        if bool(complement.any()):
            size = rows.view(torch.uint8).sum(1, keepdim=True, dtype=torch.int32)
            counts = torch.where(complement, size - counts, counts)
        return counts

    def _grouped_counts(self, rows: Tensor, examples: Tensor) -> Tensor:
        """|S ∩ counted| per row and term: rows sorted by example, one (rows, N) @ (N, J) matmul per example."""
        order = torch.argsort(examples)
        present = rows[order].float()
        found, sizes = torch.unique_consecutive(examples[order], return_counts=True)
        counts = torch.empty(len(rows), self.lo.shape[1])
        start = 0
        for e, size in zip(found.tolist(), sizes.tolist(), strict=True):
            torch.mm(present[start : start + size], self._counted_by_example[e], out=counts[start : start + size])
            start += size
        return torch.empty_like(counts).index_copy_(0, order, counts)

    def shapley(self) -> Tensor:
        """Exact Shapley values of every example's game, (E, N) float64."""
        phi = torch.zeros(len(self), self.n_players, dtype=torch.float64)
        for e, example in enumerate(self.terms):
            for term in example:
                phi[e] += term.shapley(self.n_players)
        return phi

    def semivalue(self, semivalue: str | Semivalue = "shapley") -> Tensor:
        """Exact values of every example's game under any semivalue, (E, N) float64."""
        value = parse_semivalue(semivalue)
        phi = torch.zeros(len(self), self.n_players, dtype=torch.float64)
        for e, example in enumerate(self.terms):
            for term in example:
                phi[e] += term.semivalue(self.n_players, value)
        return phi

    def select(self, examples: Sequence[int]) -> CountTermGames:
        """The games of the listed examples only, in that order."""
        return CountTermGames(self.n_players, [self.terms[e] for e in examples])


class _GameList:
    """Any E games on the same players, scored one by one: the generic members of an :class:`ExampleMixture`."""

    def __init__(self, games: Sequence[Any]) -> None:
        if not games:
            raise ValueError("games is empty; an ExampleMixture needs at least one example's game.")
        sizes = {check_game(g) for g in games}
        if len(sizes) != 1:
            raise ValueError(f"the games have different numbers of players {sorted(sizes)}; they must share them.")
        self.games = list(games)
        self.n_players = sizes.pop()

    def __len__(self) -> int:
        return len(self.games)

    def values(self, present: Tensor) -> Tensor:
        present = present.reshape(-1, self.n_players)
        return torch.stack([torch.as_tensor(g(present)).double().reshape(-1) for g in self.games], dim=1)

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:
        out = torch.zeros(len(examples), dtype=torch.float64)
        for e in torch.unique(examples).tolist():
            rows = torch.nonzero(examples == e).squeeze(1)
            out[rows] = torch.as_tensor(self.games[e](present[rows])).double().reshape(-1)
        return out

    def shapley(self) -> Tensor:
        missing = [type(g).__name__ for g in self.games if not callable(getattr(g, "shapley", None))]
        if missing:
            raise TypeError(f"exact values need every member game to have shapley(); {missing[0]} has none.")
        return torch.stack([torch.as_tensor(g.shapley()).double().reshape(-1) for g in self.games])

    def semivalue(self, semivalue: str | Semivalue = "shapley") -> Tensor:
        missing = [type(g).__name__ for g in self.games if not callable(getattr(g, "semivalue", None))]
        if missing:
            raise TypeError(f"exact semivalues need every member game to have semivalue(); {missing[0]} has none.")
        return torch.stack([torch.as_tensor(g.semivalue(semivalue)).double().reshape(-1) for g in self.games])


class ExampleMixture:
    """A game that is a weighted sum over examples, ``v(S) = offset + Σ_e w_e · u_e(S)``, with exact values.

    Each u_e is a game on the same N players with exact Shapley values, so by linearity ``shapley()`` =
    Σ_e w_e φ(u_e) exactly. It is an :class:`~nsl.games.ExampleGame`: ``example_values(present, examples)`` scores
    row r's coalition on example ``examples[r]`` alone, as one model row of a network game would. Ground truth for
    estimators that sample (coalition, example) pairs.

    Args:
        games: a :class:`CountTermGames` (all examples evaluated at once), or a sequence of games (each with
            ``n_players``, ``__call__`` and, for exact values, ``shapley()``), one per example.
        weights: w_e, one per example (signed weights allowed).
        offset: the constant of the value.

    Example:
        >>> import torch
        >>> from nsl.games import ExampleMixture, additive_game
        >>> game = ExampleMixture([additive_game([1.0, 0.0]), additive_game([0.0, 1.0])], [0.5, 0.5])
        >>> game(torch.tensor([[True, False]])).tolist(), game.shapley().tolist()
        ([0.5], [0.5, 0.5])
        >>> game.example_values(torch.tensor([[True, False], [True, False]]), torch.tensor([0, 1])).tolist()
        [1.0, 0.0]
    """

    why_not_decomposable = ""

    def __init__(self, games: CountTermGames | Sequence[Any], weights: Sequence[float] | Tensor,
                 offset: float = 0.0) -> None:
        self.games = games if isinstance(games, CountTermGames) else _GameList(games)
        self.n_players = self.games.n_players
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if len(weights) != len(self.games):
            raise ValueError(f"weights has {len(weights)} entries for {len(self.games)} examples; give one each.")
        if not torch.isfinite(weights).all() or not math.isfinite(float(offset)):
            raise ValueError("weights and offset must be finite.")
        self.example_weights = weights
        self.example_offset = float(offset)
        self.n_evals = 0
        self.n_rows = 0

    @property
    def rows_per_eval(self) -> int:
        """Rows one full-set evaluation stands for: the number of examples."""
        return len(self.games)

    def __call__(self, present: Tensor) -> Tensor:
        present = torch.as_tensor(present).reshape(-1, self.n_players).bool()
        self.n_evals += present.shape[0]
        self.n_rows += present.shape[0] * len(self.games)
        return self.example_offset + self.games.values(present) @ self.example_weights

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:
        """u_e(S) of R (coalition, example) pairs: (R, N) bool, (R,) long -> (R,) float64."""
        present = torch.as_tensor(present).reshape(-1, self.n_players).bool()
        examples = torch.as_tensor(examples)
        if examples.shape != (present.shape[0],) or examples.dtype.is_floating_point:
            raise ValueError(f"examples must be integer indices of shape ({present.shape[0]},), one per row.")
        if len(examples) and (int(examples.min()) < 0 or int(examples.max()) >= len(self.games)):
            raise ValueError(f"example indices must lie in [0, {len(self.games) - 1}].")
        self.n_rows += len(examples)
        return self.games.example_values(present, examples.long())

    def shapley(self) -> Tensor:
        """Exact Shapley values, Σ_e w_e φ(u_e), shape (N,)."""
        return self.example_weights @ self.games.shapley()

    def semivalue(self, semivalue: str | Semivalue = "shapley") -> Tensor:
        """Exact values of any semivalue, Σ_e w_e ψ(u_e) (semivalues are linear), shape (N,)."""
        return self.example_weights @ self.games.semivalue(semivalue)

    def example_game(self, example: int) -> ExampleMixture:
        """Example ``example``'s own game u_e (weight 1, offset 0), a game with exact values."""
        if isinstance(self.games, CountTermGames):
            return ExampleMixture(self.games.select([example]), [1.0])
        return ExampleMixture([self.games.games[example]], [1.0])


EXAMPLE_SHAPES = ("rare", "band", "voting")


def network_examples_game(n_players: int, n_examples: int, shape: str = "rare", seed: int = 0) -> ExampleMixture:
    """A mean over ``n_examples`` per-example games shaped like a CNN's per-image correctness, with exact values.

    Shapes:
        ``rare``: each example is correct while its 1–3 key players (from a pool of up to 20, some keys far more
            common than others) are present and the network has not collapsed (at least a threshold of the other
            players present; collapse after 3–12 % of a removal scan). 6 % of the examples are always wrong; 10 %
            are right again once the network has collapsed (the class an empty network predicts), so their
            values are negative. Most per-example marginals are exactly 0; a key's is a rare flip to 1.
        ``band``: ``rare`` plus one band player h: on 20 % of the examples the value is 1 only while h is present
            and the number of other players present lies in a narrow band (3.5 % of the sizes) in the middle of
            a scan, far from where the other players' marginals live. h's marginal is 1 there and 0 elsewhere.
        ``voting``: each example is a weighted majority vote of a random 60–90 % of the players (weight 1) and
            one heavy player (weight 2–5 % of the voters, the same player on every example), with a quota of
            50–70 % of the total weight; the heavy player is pivotal only in a narrow band of counts.

    Every example's exact values come in closed form (:class:`CountTerm`), so ``shapley()`` costs O(E·N) for
    N up to thousands. ``seed`` draws a new instance of the family.
    """
    if shape not in EXAMPLE_SHAPES:
        raise ValueError(f"shape={shape!r} is not known; use one of {EXAMPLE_SHAPES}.")
    if not isinstance(n_players, int) or isinstance(n_players, bool) or n_players < 3:
        raise ValueError(f"n_players={n_players!r} is not accepted; use an int ≥ 3.")
    if not isinstance(n_examples, int) or isinstance(n_examples, bool) or n_examples < 1:
        raise ValueError(f"n_examples={n_examples!r} is not accepted; use an int ≥ 1.")
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))

    players = torch.randperm(n_players, generator=generator).tolist()
    everyone = set(range(n_players))
    terms: list[list[CountTerm]] = []
    if shape == "voting":
        heavy, voters = players[0], torch.tensor(players[1:])
        for _ in range(n_examples):
            share = uniform(0.6, 0.9)
            chosen = voters[torch.rand(len(voters), generator=generator) < share]
            if len(chosen) == 0:
                chosen = voters[:1]
            counted, a = tuple(sorted(chosen.tolist())), len(chosen)
            weight = max(1, round(uniform(0.02, 0.05) * a))
            quota = min(a + weight, max(1, math.ceil(uniform(0.5, 0.7) * (a + weight))))
            # [w·1_h + |S ∩ V| ≥ q] = [|S ∩ V| ≥ q] + [h ∈ S]·[q − w ≤ |S ∩ V| ≤ q − 1]
            terms.append([
                CountTerm(1.0, (), counted, quota, a),
                CountTerm(1.0, (heavy,), counted, max(0, quota - weight), min(a, quota - 1)),
            ])
        return ExampleMixture(CountTermGames(n_players, terms), torch.full((n_examples,), 1.0 / n_examples))

    n_keys = min(20, max(2, n_players // 5))
    keys, band_player = players[:n_keys], players[n_keys]
    popularity = 1.0 / torch.arange(1, n_keys + 1, dtype=torch.float64) ** 0.8
    band_examples = set()
    if shape == "band":
        n_band = max(1, round(0.2 * n_examples))
        band_examples = set(torch.randperm(n_examples, generator=generator)[:n_band].tolist())
    width = max(1, round(0.035 * n_players))
    band_lo = max(0, (n_players - 1) // 2 - (width - 1) // 2)
    for e in range(n_examples):
        if e in band_examples:
            others = tuple(sorted(everyone - {band_player}))
            terms.append([CountTerm(1.0, (band_player,), others, band_lo, band_lo + width - 1)])
            continue
        kind = float(torch.rand(1, generator=generator))
        if kind < 0.06:  # always wrong
            terms.append([])
            continue
        n_example_keys = min(n_keys, 1 + int(torch.multinomial(torch.tensor([0.5, 0.35, 0.15]), 1,
                                                               generator=generator)))
        picked = torch.multinomial(popularity, n_example_keys, replacement=False, generator=generator)
        example_keys = tuple(sorted(keys[i] for i in picked.tolist()))
        counted = tuple(sorted(everyone - set(example_keys)))
        a = len(counted)
        threshold = max(1, a - math.floor(uniform(0.03, 0.12) * a))  # collapse once more than a − t are gone
        example = [CountTerm(1.0, example_keys, counted, threshold, a)]
        if kind < 0.16:  # right again once collapsed: fewer than t' ≤ t of the others present
            rescue = max(1, round(uniform(0.05, 0.3) * threshold))
            example.append(CountTerm(1.0, (), counted, 0, rescue - 1))
        terms.append(example)
    return ExampleMixture(CountTermGames(n_players, terms), torch.full((n_examples,), 1.0 / n_examples))
