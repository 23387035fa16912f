"""What an analysis will cost, measured before training: the players, the time per evaluation and per example
row, and what the budget buys, so a user hears before epoch 0 whether the analysis can rank its filters.

The dry run times the real game on random coalitions: a few full-set evaluations and, for a game that
decomposes over examples, one call of a few hundred random (coalition, example) rows. From these and the budget it
works out the rows the estimate can afford and the samples per filter they buy. Two thresholds are rules of
thumb, not guarantees:

- **ranking** needs about :data:`RANK_SAMPLES` samples per filter: ``tmab`` sets no filter aside before its
  ``min_samples`` (10), and fewer samples cannot tell a filter's value from noise;
- **certifying** a top-k took, on the project's own digits CNN (104 filters), about
  :data:`CERTIFY_ROWS_PER_FILTER` rows per filter when (coalition, example) pairs are sampled (the figure behind
  ``tmab``'s default budget), and was estimated at 70,000–100,000 full-set evaluations, about
  :data:`CERTIFY_EVALS_PER_FILTER` per filter, when each coalition is scored on the whole set (docs/results.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nsl.games import ModelGame
from nsl.players import FilterPlayers
from nsl.shapley.sampler import rows_budget

#: Samples per filter below which an analysis cannot rank its filters (rule of thumb: tmab's ``min_samples``).
RANK_SAMPLES = 10
#: Full-set evaluations per filter that certification needed on the project's digits CNN (rule of thumb).
CERTIFY_EVALS_PER_FILTER = 700
#: Rows per filter that certification took there with (coalition, example) sampling (rule of thumb).
CERTIFY_ROWS_PER_FILTER = 11_000
#: (coalition, example) rows timed in the dry run: a quarter of the estimator's default batch (larger batches run a
#: little faster per row, so the estimate errs on the safe side).
TIMED_ROWS = 256
#: Full-set evaluations timed in the dry run, after two that warm up the game's caches.
TIMED_EVALS = 4


@dataclass
class CostEstimate:
    """One game's cost estimate (see the module docstring); :meth:`as_dict` is ``callback.cost_estimates[name]``.

    ``rows`` is what the estimate's budget buys ((coalition, example) pairs through the model; ``None``: no
    limit), ``evals`` its full-set equivalent (rows / ``examples``), ``samples_per_filter`` the samples each
    filter gets on average; ``limited_by`` names the budget that binds.
    """

    game: str
    players: int
    layers: dict[str, int]
    device: str
    examples: int
    sampling: str  # "examples": (coalition, example) pairs; "coalitions": each coalition on the whole set
    seconds_per_eval: float
    seconds_per_row: float
    build_seconds: float
    estimate_seconds: float | None  # the estimator's share of max_seconds, after building the game
    limited_by: str
    rows: int | None
    evals: float | None
    samples_per_filter: float | None
    can_rank: bool | None  # None: no budget limits the estimator (exact, or nothing set): its own rule decides
    likely_certify: bool | None
    seconds_to_rank: float
    rankable_filters: int | None
    world_size: int = 1
    levers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def seconds_per_sample(self) -> float:
        """Seconds one filter sample costs: a row per sample per example, an evaluation per sample per coalition."""
        return self.seconds_per_row if self.sampling == "examples" else self.seconds_per_eval

    def lines(self) -> list[str]:
        """The printed estimate, one line per topic."""
        layers = ", ".join(f"{name} ({size:,})" for name, size in self.layers.items())
        unit = "per-row coalitions" if self.sampling == "examples" else "each coalition on the whole set"
        out = [
            f"players: {self.players:,} filters in {len(self.layers)} layer(s): {layers}",
            f"time on {self.device}: {_seconds(self.seconds_per_eval)} per evaluation of the {self.examples:,} "
            f"evaluation examples, {_seconds(self.seconds_per_row)} per example row ({unit}); building the game "
            f"{_seconds(self.build_seconds)}",
        ]
        if self.can_rank is None or self.rows is None:
            out.append(f"budget: {self.limited_by}")
            return out
        ranks = f"{self.world_size} ranks: " if self.world_size > 1 else ""
        out.append(
            f"budget: {self.limited_by} buys {ranks}about {self.rows:,} rows = {_count(self.evals)} full-set "
            f"evaluations = {_count(self.samples_per_filter)} samples per filter"
        )
        verdict = "can rank" if self.can_rank else "cannot rank"
        certify = "likely to certify" if self.likely_certify else "unlikely to certify"
        if self.sampling == "examples":
            have = f"{_count(self.rows / self.players)} rows per filter, where certifying took about "
            have += f"{CERTIFY_ROWS_PER_FILTER:,}"
        else:
            have = f"{_count(self.evals / self.players)} full-set evaluations per filter, where certifying took about "
            have += f"{CERTIFY_EVALS_PER_FILTER:,}"
        out.append(
            f"verdict (rules of thumb): {verdict} these filters (about {RANK_SAMPLES} samples per filter needed: "
            f"{_seconds(self.seconds_to_rank)} of sampling here); {certify}: {have} on the project's digits CNN"
        )
        if self.levers:
            out.append("levers: " + "; ".join(self.levers))
        return out

    def warning(self) -> str | None:
        """The warning when the budget cannot rank the filters (``None`` when it can)."""
        if self.can_rank is not False:
            return None
        return (
            f"NeuronShapley: game {self.game!r}: the budget ({self.limited_by}) buys about "
            f"{_count(self.samples_per_filter)} samples per filter for {self.players:,} filters, too few to rank them "
            f"(rule of thumb: {RANK_SAMPLES}). Levers: " + "; ".join(self.levers) + "."
        )


def time_evals(game: ModelGame, evals: int = TIMED_EVALS, seed: int = 0) -> float:
    """Seconds per full-set evaluation of random half coalitions, timed on one call of ``evals`` coalitions (at most
    the game's chunk size) after a call of two that warms the game's activation caches up (own generator)."""
    g = torch.Generator().manual_seed(seed)
    evals = max(1, min(evals, game.chunk_size))
    game(torch.rand(2, game.n_players, generator=g) < 0.5)
    present = torch.rand(evals, game.n_players, generator=g) < 0.5
    start = time.perf_counter()
    game(present)
    return (time.perf_counter() - start) / evals


def time_rows(game: ModelGame, rows: int = TIMED_ROWS, seed: int = 0) -> float:
    """Seconds per (coalition, example) row of ``game.example_values`` on random half coalitions, timed on one call
    of ``rows`` rows (an own generator: the global RNGs are untouched)."""
    g = torch.Generator().manual_seed(seed)
    rows = max(1, min(rows, int(getattr(game, "max_rows", rows) or rows)))
    present = torch.rand(rows, game.n_players, generator=g) < 0.5
    examples = torch.randint(0, game.rows_per_eval, (rows,), generator=g)
    start = time.perf_counter()
    game.example_values(present, examples)
    return (time.perf_counter() - start) / rows


def estimate_cost(
    name: str,
    game: ModelGame,
    players: FilterPlayers,
    *,
    seconds_per_eval: float,
    seconds_per_row: float,
    build_seconds: float,
    sampling: str,
    budgeted: bool,
    max_rows: int | None,
    max_evals: int | None,
    max_seconds: float | None,
    estimate_share: float,
    world_size: int = 1,
) -> CostEstimate:
    """What the budget buys on ``game``: ``max_rows`` and ``max_evals`` (already resolved to the estimator's own
    default when unset; ``-1``: the estimators' default budget) and ``max_seconds``, of which the estimate gets
    ``estimate_share`` less the time to build the game. ``budgeted=False``: the estimator takes no budget."""
    n, m = game.n_players, game.rows_per_eval
    per_sample = seconds_per_row if sampling == "examples" else seconds_per_eval
    rows_per_sample = 1 if sampling == "examples" else m  # rows one filter sample costs (see the module docstring)
    seconds_to_rank = RANK_SAMPLES * n * per_sample / world_size
    estimate_seconds = None if max_seconds is None else max(0.0, max_seconds * estimate_share - build_seconds)
    common = {
        "game": name, "players": n, "layers": {layer.name: layer.size for layer in players.layers},
        "device": str(game.device), "examples": m, "sampling": sampling, "seconds_per_eval": seconds_per_eval,
        "seconds_per_row": seconds_per_row, "build_seconds": build_seconds, "estimate_seconds": estimate_seconds,
        "seconds_to_rank": seconds_to_rank, "world_size": world_size,
    }
    if not budgeted:
        return CostEstimate(
            **common, limited_by="the estimator takes no budget (it evaluates what it needs)", rows=None, evals=None,
            samples_per_filter=None, can_rank=None, likely_certify=None, rankable_filters=None,
        )
    limits: dict[str, float] = {}
    counted = rows_budget(game, max_rows, max_evals)  # as the estimators resolve it
    if counted is not None:
        label = f"max_rows={max_rows:,}" if max_rows is not None else f"max_evals={max_evals:,}"
        limits["the estimator's default budget" if max_rows is None and max_evals == -1 else label] = counted
    if estimate_seconds is not None:
        share = f", {estimate_seconds:,.0f} s of it for the estimate" if estimate_share < 1 or build_seconds else ""
        rows_per_second = world_size * rows_per_sample / max(per_sample, 1e-12)
        limits[f"max_seconds={max_seconds:g}{share}"] = estimate_seconds * rows_per_second
    if not limits:  # the estimator's own stopping rule decides (tmab: certification; monte_carlo: its scans)
        return CostEstimate(
            **common, limited_by="no budget: the estimator stops by its own rule", rows=None, evals=None,
            samples_per_filter=None, can_rank=None, likely_certify=None, rankable_filters=None,
        )
    limited_by, rows = min(limits.items(), key=lambda item: item[1])
    rows = int(rows)
    samples = rows / rows_per_sample
    evals = rows / m
    estimate = CostEstimate(
        **common, limited_by=limited_by, rows=rows, evals=evals, samples_per_filter=samples / n,
        can_rank=samples / n >= RANK_SAMPLES,
        likely_certify=evals / n >= CERTIFY_EVALS_PER_FILTER if sampling == "coalitions"
        else rows / n >= CERTIFY_ROWS_PER_FILTER,
        rankable_filters=int(samples // RANK_SAMPLES),
    )
    if not estimate.can_rank:
        estimate.levers = _levers(estimate, max_seconds, estimate_share, limited_by.startswith("max_seconds"))
    return estimate


def _levers(estimate: CostEstimate, max_seconds: float | None, estimate_share: float, by_time: bool) -> list[str]:
    """What would let the analysis rank its filters: fewer layers, a longer budget, a GPU, a smaller eval set."""
    n, m = estimate.players, estimate.examples
    levers = [f"fewer layers (`layers=`): this budget ranks about {estimate.rankable_filters:,} filters"]
    if by_time:
        needed = estimate.seconds_to_rank / estimate_share + estimate.build_seconds
        levers.append(f"a longer budget: max_seconds≈{math.ceil(needed):,}")
    elif estimate.sampling == "examples":
        levers.append(f"a longer budget: max_rows≈{RANK_SAMPLES * n:,}")
    else:
        levers.append(f"a longer budget: max_evals≈{RANK_SAMPLES * n:,}")
    if not estimate.device.startswith("cuda"):
        levers.append(f"a GPU (the model runs on {estimate.device})")
    if estimate.sampling == "coalitions" and by_time and estimate.estimate_seconds:
        # An evaluation's time grows with the examples it scores: fewer examples, more evaluations.
        smaller = int(m * estimate.estimate_seconds * estimate.world_size / max(estimate.seconds_to_rank, 1e-12))
        levers.append(
            f"a smaller evaluation set: eval_size≈{smaller:,}" if smaller >= 1
            else "a smaller evaluation set (not enough alone here)"
        )
    return levers


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
