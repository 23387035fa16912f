"""What every estimator returns, and the running statistics the sampling estimators keep."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nsl.validation import check_number

#: The fewest marginal samples behind an estimate that a ranking may use: two give a standard error.
MIN_RANK_SAMPLES = 2
#: A player's sample status (:meth:`ShapleyResult.sample_status`): its value can be ranked; it has fewer than
#: ``min_rank_samples`` samples; it has none at all.
RANKED, TOO_FEW_SAMPLES, NOT_SAMPLED = "ranked", "too few samples", "not sampled"


def merge_moments(
    count: Tensor, mean: Tensor, m2: Tensor, other_count: Tensor, other_mean: Tensor, other_m2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Count, mean and sum of squared deviations of two disjoint sample sets together (Chan's formula)."""
    total = count + other_count
    safe = total.clamp(min=1).double()
    delta = other_mean - mean
    return total, mean + delta * other_count / safe, m2 + other_m2 + delta * delta * count * other_count / safe


class RunningStats:
    """Per-player count, mean, sum of squared deviations (Welford), minimum and maximum of marginals.

    Float64/int64 tensors only, so the state survives ``torch.load(weights_only=True)``; :meth:`merge`
    combines statistics gathered elsewhere (Chan's parallel formula).
    """

    def __init__(self, n_players: int) -> None:
        self.n_players = n_players
        self.count = torch.zeros(n_players, dtype=torch.int64)
        self.mean = torch.zeros(n_players, dtype=torch.float64)
        self.m2 = torch.zeros(n_players, dtype=torch.float64)
        self.low = torch.full((n_players,), float("inf"), dtype=torch.float64)
        self.high = torch.full((n_players,), float("-inf"), dtype=torch.float64)

    def update(self, players: Tensor, marginals: Tensor) -> None:
        """Add one sample ``marginals[j]`` for each ``players[j]`` (players are distinct)."""
        if len(players) == 0:
            return
        x = marginals.double()
        n = self.count[players] + 1
        delta = x - self.mean[players]
        mean = self.mean[players] + delta / n
        self.m2[players] += delta * (x - mean)
        self.mean[players] = mean
        self.count[players] = n
        self.low[players] = torch.minimum(self.low[players], x)
        self.high[players] = torch.maximum(self.high[players], x)

    @classmethod
    def of_samples(cls, players: Tensor, samples: Tensor, n_players: int) -> RunningStats:
        """Statistics of a block of samples: ``samples[j, i]`` is the j-th sample of ``players[i]``."""
        stats = cls(n_players)
        x = samples.double()
        count = x.shape[0]
        mean = x.mean(dim=0)
        stats.count[players] = count
        stats.mean[players] = mean
        stats.m2[players] = ((x - mean) ** 2).sum(dim=0)
        stats.low[players] = x.min(dim=0).values
        stats.high[players] = x.max(dim=0).values
        return stats

    def merge(self, other: RunningStats) -> None:
        """Fold in statistics of disjoint samples of the same players."""
        self.count, self.mean, self.m2 = merge_moments(
            self.count, self.mean, self.m2, other.count, other.mean, other.m2
        )
        self.low = torch.minimum(self.low, other.low)
        self.high = torch.maximum(self.high, other.high)

    def discounted(self, weight: float) -> RunningStats:
        """These statistics counting as ``weight`` of their samples (rounded, half up): the means are kept, the
        sums of squared deviations scaled so each variance is kept, so confidence intervals widen as if fewer
        samples had been drawn. A player left with 0 samples starts afresh. ``weight=1`` is an exact copy."""
        check_number("weight", weight, low=0, high=1, low_open=True)  # the share of old samples kept
        out = RunningStats(self.n_players)
        if weight == 1:
            out.load_state_dict(self.state_dict())
            return out
        n = self.count.double()
        kept = torch.floor(n * weight + 0.5)
        out.count = kept.long()
        alive = kept > 0
        out.mean = torch.where(alive, self.mean, torch.zeros_like(self.mean))
        out.m2 = torch.where(kept >= 2, self.m2 * (kept - 1) / (n - 1).clamp(min=1), torch.zeros_like(self.m2))
        out.low = torch.where(alive, self.low, out.low)
        out.high = torch.where(alive, self.high, out.high)
        return out

    @property
    def var(self) -> Tensor:
        """Unbiased sample variance (0 where fewer than 2 samples)."""
        return self.m2.clamp(min=0) / (self.count - 1).clamp(min=1)

    @property
    def stderr(self) -> Tensor:
        """Standard error of each mean; NaN below 2 samples, where it cannot be estimated (it is not 0)."""
        se = (self.var / self.count.clamp(min=1)).sqrt()
        return torch.where(self.count >= 2, se, torch.full_like(se, float("nan")))

    @property
    def value_range(self) -> Tensor:
        """Empirical range of each player's marginals so far (0 before its first sample)."""
        return torch.where(self.count > 0, self.high - self.low, torch.zeros_like(self.high))

    def to_tensor(self) -> Tensor:
        """All statistics as one float64 vector of length 5·N (counts are exact below 2⁵³), for gathering."""
        return torch.cat([self.count.double(), self.mean, self.m2, self.low, self.high])

    @classmethod
    def from_tensor(cls, flat: Tensor) -> RunningStats:
        """The inverse of :meth:`to_tensor`."""
        n = len(flat) // 5
        stats = cls(n)
        count, stats.mean, stats.m2, stats.low, stats.high = flat.double().reshape(5, n).clone().unbind(0)
        stats.count = count.long()
        return stats

    def state_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).clone() for k in ("count", "mean", "m2", "low", "high")}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["mean"].shape != (self.n_players,):
            raise ValueError(f"saved statistics are for {state['mean'].shape[0]} players, not {self.n_players}.")
        for key in ("count", "mean", "m2", "low", "high"):
            setattr(self, key, state[key].clone())


@dataclass
class ShapleyResult:
    """Estimated Shapley values of N players.

    Attributes:
        values: estimated Shapley value of each player, (N,) float64.
        stderr: standard error of each estimate (0 for exact values; NaN where it cannot be estimated, below
            two samples), (N,).
        counts: marginal samples behind each estimate, (N,) int64.
        n_evals: coalitions the game evaluated for this result (counted at the game).
        converged: exact, or certified: with probability ≥ 1 − ``delta`` the returned top-k (and bottom-k for
            ``tail="bottom"|"both"``) is ε-correct, ε = ``epsilon_value``: every returned player's true value is
            ≥ the true k-th value − ε and every player left out is ≤ it + ε (see :attr:`guarantee`).
        k: how many players ``top_k`` lists.
        names: player names (``"<module>:<channel>"`` for filters) when known.
        method: the estimator that produced it.
        seconds: wall time.
        full_value, empty_value: value of the grand and the empty coalition, when evaluated.
        stats: the running statistics to resume sampling from (sampling estimators only).
        interrupted: sampling was stopped with Ctrl-C; the values are what the finished scans gathered.
        world_size: processes that sampled together (DDP ranks); all of them hold this same result.
        local_evals: coalitions this process evaluated itself (``n_evals`` is the total over all ranks);
            ``None`` means the same as ``n_evals`` (one process).
        tail: which end of the ranking the certificate covers: ``"top"``, ``"bottom"`` or ``"both"``.
        epsilon_value: the certificate's tolerance ε in value units (None when nothing is certified by an interval);
            the estimator's ``epsilon_fraction`` times the game's value scale. Old name: :attr:`epsilon`.
        delta: the certificate's allowed failure probability.
        truncated: the promise is about the truncated game (scans cut at the collapse), not the game itself.
        note: why the result could not be certified, when the estimator knows (e.g. a game that looks constant).
        n_rows: rows through the model for this result: (coalition, example) pairs, the honest cost unit
            (``n_evals`` is its full-set equivalent, rows / evaluation-set size). ``None`` in older files.
        sampling: ``"examples"`` when (coalition, example) pairs were sampled (a game that decomposes over
            examples), ``"coalitions"`` when every coalition was scored on the whole evaluation set.
        semivalue: which semivalue ``values`` estimate (:mod:`nsl.shapley.semivalues`): ``"shapley"``, ``"banzhaf"``
            or ``"beta(α,β)"``.
        min_rank_samples: the fewest marginal samples behind an estimate that rankings (``top_k``,
            :meth:`culprits`, :meth:`ranking`), tables and repairs use (see :attr:`ranked`).
    """

    values: Tensor
    stderr: Tensor
    counts: Tensor
    n_evals: int
    converged: bool
    k: int = 10
    names: list[str] | None = None
    method: str = ""
    seconds: float = 0.0
    full_value: float | None = None
    empty_value: float | None = None
    stats: dict[str, Tensor] | None = field(default=None, repr=False)
    interrupted: bool = False
    world_size: int = 1
    local_evals: int | None = None
    tail: str = "top"
    epsilon_value: float | None = None
    delta: float | None = None
    truncated: bool = False
    note: str = ""
    n_rows: int | None = None
    sampling: str = "coalitions"
    min_rank_samples: int = MIN_RANK_SAMPLES
    semivalue: str = "shapley"

    @property
    def guarantee(self) -> str:
        """One sentence saying what ``converged`` promises for this result."""
        if self.method == "exact" and self.semivalue == "leave_one_out":
            return "exact leave-one-out values: v(N) and every v(N ∖ i) were evaluated."
        if self.method == "exact":
            return "exact values: every coalition was evaluated."
        if not self.converged or self.epsilon_value is None or self.delta is None:
            return "no guarantee: not certified" + (f" ({self.note})" if self.note else "") + "."
        ends = {"top": f"top-{self.k}", "bottom": f"bottom-{self.k}", "both": f"top-{self.k} and bottom-{self.k}"}
        game = "the truncated game" if self.truncated else "the game"
        if self.semivalue != "shapley":
            game = f"the {self.semivalue} values of {game}"
        return (
            f"with probability ≥ {1 - self.delta:g} the {ends[self.tail]} is ε-correct for {game}: every returned "
            f"player's value is ≥ the k-th value − ε and every other player's ≤ it + ε, ε = {self.epsilon_value:.4g}."
        )

    def __eq__(self, other: object) -> bool:
        """Same values, errors, counts (bitwise, NaN equal to NaN) and the same bookkeeping fields."""
        if not isinstance(other, ShapleyResult):
            return NotImplemented
        mine, theirs = self.to_dict(), other.to_dict()
        for key in ("values", "stderr", "counts"):
            a, b = mine.pop(key), theirs.pop(key)
            if a.shape != b.shape or not torch.equal(torch.nan_to_num(a, nan=0.5), torch.nan_to_num(b, nan=0.5)):
                return False
            if not torch.equal(a.isnan(), b.isnan()):
                return False
        ms, ts = mine.pop("stats"), theirs.pop("stats")
        if (ms is None) != (ts is None) or (ms is not None and ts is not None and (
            ms.keys() != ts.keys() or not all(torch.equal(ms[k], ts[k]) for k in ms)
        )):
            return False
        mine.pop("seconds"), theirs.pop("seconds")  # wall time differs between identical runs
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def allclose(self, other: ShapleyResult, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """Values and standard errors equal within tolerance (NaN matches NaN), same players and top-k."""
        if self.values.shape != other.values.shape:
            return False
        return bool(
            torch.allclose(self.values, other.values, rtol=rtol, atol=atol)
            and torch.allclose(self.stderr, other.stderr, rtol=rtol, atol=atol, equal_nan=True)
            and torch.equal(self.top_k, other.top_k)
        )

    @property
    def n_players(self) -> int:
        return len(self.values)

    @property
    def top_k(self) -> Tensor:
        """Indices of the ``k`` highest values among the ranked players (:attr:`ranked`), best first: fewer than
        ``k`` while fewer players have enough samples, none before any has."""
        return self.culprits(self.k)

    def ranking(self, descending: bool = True) -> Tensor:
        """All player indices: the ranked players (:attr:`ranked`) by value (ties broken by index, so it is
        deterministic), then the players without enough samples in index order, so that an unranked player is
        never ahead of a ranked one, at either end. Exact results rank everyone."""
        order = torch.sort(self.values, descending=descending, stable=True).indices
        ranked = self.ranked[order]
        return torch.cat([order[ranked], order[~ranked].sort().values])

    def culprits(self, k: int | None = None, negative: bool = False) -> Tensor:
        """The ``k`` ranked players with the highest values, or the most negative ones with ``negative=True``.

        A player below ``min_rank_samples`` samples is never a culprit, so this returns fewer than ``k`` (or
        none) while the analysis has not sampled enough players.
        """
        k = self.k if k is None else k
        return self.ranking(descending=not negative)[: max(0, min(k, self.n_ranked))]

    # ------------------------------------------------------------------------------------- sample status
    @property
    def ranked(self) -> Tensor:
        """Bool (N,): the players whose value rankings, tables and repairs may use.

        Exact values and deterministic scores (a standard error of exactly 0, as exact results and baseline
        scores have) always; an estimate once it rests on at least ``min_rank_samples`` marginal samples (below
        two samples a sampling estimator's standard error is NaN, never 0). Any other estimate is no finding:
        see :meth:`sample_status`.
        """
        if self.method == "exact":
            return torch.ones(self.n_players, dtype=torch.bool, device=self.values.device)
        return (self.counts >= self.min_rank_samples) | (self.stderr == 0)

    @property
    def n_ranked(self) -> int:
        """How many players :attr:`ranked` holds."""
        return int(self.ranked.sum())

    def sample_status(self) -> list[str]:
        """Per player: ``"ranked"``, ``"too few samples"`` (below ``min_rank_samples``) or ``"not sampled"``."""
        pairs = zip(self.ranked.tolist(), self.counts.tolist(), strict=True)
        return [RANKED if r else (NOT_SAMPLED if c == 0 else TOO_FEW_SAMPLES) for r, c in pairs]

    def evals_to_rank(self) -> int:
        """About how many evaluations in all give every player ``min_rank_samples`` samples (``n_evals`` once all
        are ranked): the samples still missing at the rate of samples per evaluation this result saw, or at one
        per evaluation (a removal scan's least) when it saw none. A rough guide to the budget, not a promise."""
        missing = float((self.min_rank_samples - self.counts[~self.ranked]).clamp(min=0).sum())
        if missing == 0:
            return int(self.n_evals)
        seen = float(self.counts.sum())
        rate = seen / self.n_evals if self.n_evals > 0 and seen > 0 else 1.0
        return int(self.n_evals + math.ceil(missing / rate))

    def rank_note(self, players: str = "players") -> str:
        """A plain sentence when rankings leave players out for lack of samples, with the budget that would rank
        them all (:meth:`evals_to_rank`); ``""`` when every player is ranked. ``players`` names them
        ("filters")."""
        unranked = ~self.ranked
        if not bool(unranked.any()):
            return ""
        never = int((self.counts[unranked] == 0).sum())
        few = int(unranked.sum()) - never
        why = " and ".join(
            part for part in (f"{never:,} not sampled" if never else "",
                              f"{few:,} with fewer than {self.min_rank_samples} samples" if few else "") if part
        )
        need = self.evals_to_rank()
        n_rows = getattr(self, "n_rows", None)
        rows = f" ({round(need * n_rows / self.n_evals):,} rows)" if n_rows and self.n_evals else ""
        if self.n_ranked == 0:
            return (
                f"{self.n_players:,} {players}, {self.n_evals:,} evaluations: no ranking ({why}; a ranking needs "
                f"{self.min_rank_samples} samples each); needs about {need:,} evaluations{rows}"
            )
        return (
            f"{self.n_ranked:,} of {self.n_players:,} {players} ranked; {why} left out (they need "
            f"{self.min_rank_samples} samples each: about {need:,} evaluations{rows} in all)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and Python values only (loads with ``torch.load(weights_only=True)``)."""
        return {
            "values": self.values,
            "stderr": self.stderr,
            "counts": self.counts,
            "n_evals": int(self.n_evals),
            "converged": bool(self.converged),
            "k": int(self.k),
            "names": list(self.names) if self.names is not None else None,
            "method": self.method,
            "seconds": float(self.seconds),
            "full_value": self.full_value,
            "empty_value": self.empty_value,
            "stats": self.stats,
            "interrupted": bool(self.interrupted),
            "world_size": int(self.world_size),
            "local_evals": None if self.local_evals is None else int(self.local_evals),
            "tail": self.tail,
            "epsilon_value": None if self.epsilon_value is None else float(self.epsilon_value),
            "delta": None if self.delta is None else float(self.delta),
            "truncated": bool(self.truncated),
            "note": self.note,
            "n_rows": None if self.n_rows is None else int(self.n_rows),
            "sampling": self.sampling,
            "min_rank_samples": int(self.min_rank_samples),
            "semivalue": self.semivalue,
        }

    @property
    def epsilon(self) -> float | None:
        """The old name of :attr:`epsilon_value` (value units, not the estimator's fraction); read-only."""
        warnings.warn("ShapleyResult.epsilon is renamed epsilon_value (value units).", DeprecationWarning, stacklevel=2)
        return self.epsilon_value

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapleyResult:
        """The inverse of :meth:`to_dict`; fields missing from an older file keep their defaults, and an older
        file's ``epsilon`` (already in value units) is read as ``epsilon_value``."""
        data = dict(data)
        if "epsilon" in data:
            data.setdefault("epsilon_value", data.pop("epsilon"))
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the result to ``path`` with ``torch.save``; read it back with :meth:`load`."""
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> ShapleyResult:
        return cls.from_dict(torch.load(path, weights_only=True))


def result_from_stats(stats: RunningStats, **kwargs: Any) -> ShapleyResult:
    """A :class:`ShapleyResult` holding the means of ``stats``."""
    return ShapleyResult(
        values=stats.mean.clone(),
        stderr=stats.stderr,
        counts=stats.count.clone(),
        stats=stats.state_dict(),
        **kwargs,
    )
