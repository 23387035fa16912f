"""TMAB-Shapley: a multi-armed bandit over the players that samples until the top-k is certified.

The bandit of Ghorbani & Zou (2020) keeps a confidence interval per player and samples only the players whose
interval still straddles the top-k boundary. nsl keeps that idea and changes what it rests on, because the
original rule neither converges on real networks nor, once made to converge, keeps its promise:

- **the certificate** (:mod:`nsl.shapley.bounds`): anytime-valid intervals (an asymptotic confidence
  sequence, or an empirical Bernstein bound with a union over sample counts), a pooled prior on each player's
  variance so that a few identical samples cannot certify, a union bound over the players, and LUCB's stopping
  rule with a tolerance ε. ``converged=True`` then means: with probability ≥ 1 − δ the returned top-k (and
  bottom-k with ``tail="bottom"|"both"``) is ε-correct. A game that looks constant, or whose intervals cannot
  account for v(N) − v(∅), is never certified;
- **the sampler** (:mod:`nsl.shapley.positions`): marginals at scan positions drawn from a proposal learned
  from the collapse curve, importance-weighted and taken for all sampled players at one shared coalition, so
  the rare early-removal marginals of a network game become common, with no truncation bias. The original
  truncated permutation scans remain as ``sampler="scan"`` (their promise is then about the truncated game).

:data:`ORIGINAL_TMAB` is the original rule as a configuration of this one loop (for benchmarks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.games.counting import CountingGame
from nsl.shapley._common import check_positive_int, check_tail, player_names
from nsl.shapley.bounds import (
    BOUNDS,
    bernstein_radius,
    clt_radius,
    prior_variance,
    rare_event_radius,
    shrunk_variance,
    top_k_certificate,
)
from nsl.shapley.distributed import Collective, check_same
from nsl.shapley.exact import leave_one_out_values
from nsl.shapley.positions import PositionSampler
from nsl.shapley.registry import ESTIMATORS
from nsl.shapley.result import ShapleyResult
from nsl.shapley.sampler import Budget, Sampler, SampleState, result_from_state, rows_budget, sample
from nsl.shapley.scan import PermutationSampler, check_fraction
from nsl.shapley.semivalues import KINDS, Semivalue, parse_semivalue
from nsl.validation import renamed_argument, resolve_top_k

SAMPLERS = ("positions", "scan")

#: The original TMAB-Shapley rule (Ghorbani & Zou 2020) as options of :func:`tmab`: truncated permutation
#: scans, an empirical Bernstein bound with R = 1 at fixed sample sizes, δ = 0.2 without a union bound, no
#: tolerance and no prior. Its truncation (0.25 of |v(N) − v(∅)|) is the original "0.2 above chance" on a
#: 10-class accuracy.
ORIGINAL_TMAB: dict[str, object] = {
    "sampler": "scan",
    "bound": "bernstein",
    "value_range": 1.0,
    "anytime": False,
    "delta": 0.2,
    "union_bound": False,
    "epsilon_fraction": 0.0,
    "prior_samples": 0.0,
    "min_samples": 2,
    "truncation": 0.25,
    "patience": 5,
}


def confidence_radius(
    stats: object,
    delta: float,
    bound: str = "clt",
    *,
    anytime: bool = True,
    prior_samples: float = 5.0,
    prior_k: int = 10,
    value_range: float | None = None,
    min_samples: int = 2,
    exposure: Tensor | None = None,
    marginal_bound: float = 0.0,
) -> Tensor:
    """Each player's interval half-width at level 1 − ``delta`` (see :mod:`nsl.shapley.bounds`); inf below
    ``min_samples`` samples. ``stats`` is a :class:`~nsl.shapley.result.RunningStats`; with an ``exposure`` per
    player and ``marginal_bound`` > 0 the rare-event floor (:func:`~nsl.shapley.bounds.rare_event_radius`) is added
    to the CLT half-width."""
    prior = prior_variance(stats, prior_k) if prior_samples > 0 else 0.0  # type: ignore[arg-type]
    var = shrunk_variance(stats, prior, prior_samples) if prior_samples > 0 else stats.var  # type: ignore[attr-defined]
    count = stats.count  # type: ignore[attr-defined]
    if bound == "clt":
        radius = clt_radius(var, count, delta, anytime=anytime)
        if exposure is not None and marginal_bound > 0:
            radius = radius + rare_event_radius(exposure, delta, marginal_bound)
    else:
        observed = stats.value_range  # type: ignore[attr-defined]
        width = observed.max() if value_range is None else value_range
        radius = bernstein_radius(var, count, delta, width, anytime=anytime)
    return torch.where(count >= min_samples, radius, torch.full_like(radius, float("inf")))


def pair_bounds(
    state: SampleState, delta: float, prior_samples: float, min_samples: int, anytime: bool = True,
    sample_bound: float = 0.0,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Lower confidence bounds on φ_a − φ_b from the tracked pairs' sample differences (−inf where untracked).

    The same construction as for single players: an asymptotic confidence sequence with each pair's variance
    shrunk toward a pooled prior (the median variance of the tracked pairs), at least ``min_samples`` samples.
    """
    sampled = (state.pair_count >= 2) & ~torch.eye(state.n_slots, dtype=torch.bool)
    var = state.pair_m2 / (state.pair_count - 1).clamp(min=1)
    prior = float(var[sampled].median()) if bool(sampled.any()) else 0.0
    n = state.pair_count
    shrunk = (n * var + prior_samples * prior) / (n + prior_samples).clamp(min=1e-12)
    radius = clt_radius(shrunk, n, delta, anytime=anytime)
    if sample_bound > 0:  # a difference of two samples reaches twice what one (importance-weighted) sample can
        radius = radius + rare_event_radius(n, delta, 2 * sample_bound)
    table = torch.where(n >= min_samples, state.pair_mean - radius, torch.full_like(radius, -math.inf))

    def lower(a: Tensor, b: Tensor) -> Tensor:
        sa, sb = state.pair_slot[a], state.pair_slot[b]
        out = torch.full((len(a), len(b)), -math.inf, dtype=torch.float64)
        known = (sa >= 0).unsqueeze(1) & (sb >= 0).unsqueeze(0)
        if bool(known.any()):
            values = table[sa.clamp(min=0).unsqueeze(1), sb.clamp(min=0).unsqueeze(0)]
            out = torch.where(known, values, out)
        return out

    return lower


def exact_leave_one_out(
    game: Game, top_k: int | None = None, *, tail: str = "top", names: list[str] | None = None
) -> ShapleyResult:
    """Leave-one-out values ``v(N) − v(N ∖ i)``, exact in N + 1 evaluations: the semivalue with all its weight on
    the full coalition, so no sampling and no interval (``converged=True``, standard errors 0)."""
    counted = CountingGame(game)
    n = counted.n_players
    k = resolve_top_k(top_k, n)
    start = time.perf_counter()
    values, full = leave_one_out_values(counted)
    return ShapleyResult(
        values=values,
        stderr=torch.zeros(n, dtype=torch.float64),
        counts=torch.ones(n, dtype=torch.int64),
        n_evals=counted.n_evals,
        n_rows=counted.n_evals * int(getattr(game, "rows_per_eval", 1) or 1),
        converged=True,
        k=k,
        names=player_names(game, names),
        method="exact",
        seconds=time.perf_counter() - start,
        tail=tail,
        full_value=full,
        semivalue="leave_one_out",
    )


@ESTIMATORS.register("tmab")
def tmab(
    game: Game,
    top_k: int | None = None,
    *,
    tail: str = "top",
    delta: float = 0.05,
    epsilon_fraction: float = 0.01,
    sampler: str = "positions",
    bound: str = "clt",
    union_bound: bool = True,
    anytime: bool = True,
    prior_samples: float = 5.0,
    min_samples: int = 10,
    value_range: float | None = None,
    truncation: float | None = None,
    patience: int = 5,
    antithetic: bool = False,
    pilot_scans: int = 2,
    max_evals: int | None = -1,
    max_rows: int | None = None,
    max_seconds: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    names: list[str] | None = None,
    resume: ShapleyResult | None = None,
    progress: bool = False,
    collective: Collective | object | None = None,
    per_example: bool | None = None,
    rare_event_floor: bool = True,
    epsilon: float | None = None,
    semivalue: str | Semivalue = "shapley",
) -> ShapleyResult:
    """Estimate Shapley values (or another semivalue) until the ``top_k`` players are certified, sampling only the
    undecided ones.

    ``converged=True`` means: with probability ≥ 1 − ``delta`` every returned player's true value is ≥ the
    true k-th value − ε and every player left out is ≤ it + ε, with ε = ``epsilon_fraction`` × the game's value
    scale (|v(N) − v(∅)|, or the spread of the values seen when that is larger); the result carries ε in value
    units (``result.epsilon_value``) and δ, and ``result.guarantee`` says it in a sentence.

    Args:
        game: any game (``n_players`` and ``__call__(present) -> values``).
        top_k: how many players to separate (default ``min(10, N − 1)``).
        tail: which end to certify: the ``"top"`` k (most valuable), the ``"bottom"`` k (most negative: the
            culprits of accuracy or fairness games) or ``"both"``.
        delta: allowed probability that the certificate is wrong.
        epsilon_fraction: the tolerance ε as a fraction of the game's value scale (above), not in value units
            (ε in value units is ``result.epsilon_value``).
        sampler: ``"positions"`` (importance-weighted scan positions at shared coalitions; unbiased) or
            ``"scan"`` (permutation scans, optionally truncated).
        bound: ``"clt"`` (asymptotic confidence sequence with a pooled variance prior) or ``"bernstein"``
            (empirical Bernstein with a known sample range ``value_range``: distribution-free, slow).
        union_bound: split δ over the N players (needed for the promise).
        anytime: intervals valid at every sample size (needed for the promise: the bandit looks every round).
        prior_samples: weight, in samples, of the pooled variance prior (0: each player's own variance only).
        min_samples: samples every player gets before it can be set aside.
        value_range: for ``bound="bernstein"``: the length of the interval the samples lie in (default: the
            widest range seen among all players' samples, an estimate).
        truncation, patience, antithetic: for ``sampler="scan"``: end a scan once the value stays within this
            fraction of the value scale from v(∅) for ``patience`` evaluations; follow each order by its reverse.
        pilot_scans: for ``sampler="positions"``: antithetic removal scans that start the run.
        max_evals, max_rows, max_seconds: budget; when it runs out first, ``converged`` is False. ``max_rows``
            counts rows through the model ((coalition, example) pairs: the honest unit); ``max_evals`` counts
            full-set evaluations (M rows each, M the evaluation-set size) and is used when ``max_rows`` is None.
            The default ``max_evals=-1`` means, per player, the more of 200 full-set evaluations and 20,000 rows;
            ``max_evals=None`` with ``max_rows=None``: no limit.
        batch_size: coalitions per call to the game (default: the game's chunk size); per example, rows per call
            (default: the game's ``max_rows``).
        seed: seeds the sampling (same seed, same result); the global RNG is never used.
        names: player names for the result (default: the game's players' names).
        resume: continue from an earlier result's statistics (give it a different ``seed``).
        progress: show a progress bar. Ctrl-C stops sampling and returns the partial result with
            ``interrupted=True`` and ``converged=False``.
        collective: sample on several processes (DDP ranks) together: a
            :class:`~nsl.shapley.distributed.Collective`, a Lightning ``Trainer`` or ``Strategy``, or ``"auto"``.
            Every rank must call ``tmab`` with the same game and settings; each samples with its own seed, the
            statistics are merged every round, and every rank returns the same result.
        per_example: sample (coalition, example) pairs, one model row each (``None``: wherever the game
            decomposes over examples, see :class:`~nsl.games.ExampleGame`). The target is unchanged (by linearity,
            the Shapley value of the game on its fixed evaluation set); each row is one sample instead of 1/M of
            one, and most of a filter's variance lies between coalitions, not between examples.
        rare_event_floor: add to every interval the mass a rare event could still hide behind a player's samples
            (:func:`~nsl.shapley.bounds.rare_event_radius`): what keeps a player whose samples are all 0 from
            being certified out before its rare event could have shown. Off only for ablations.
        semivalue: which value to estimate and certify: ``"shapley"`` (default), ``"banzhaf"`` or ``"beta(α,β)"``
            (:mod:`nsl.shapley.semivalues`; ``beta(1,4)`` and ``beta(1,16)`` weigh coalitions near the full model,
            where a repair acts). The same certificate holds for the chosen semivalue; it needs
            ``sampler="positions"``. Only Shapley values sum to v(N) − v(∅), so the efficiency check is Shapley's alone.
            ``"leave_one_out"`` (all weight on the full coalition) is computed exactly in N + 1 evaluations instead.
        epsilon: the old name of ``epsilon_fraction`` (same meaning, a fraction; warns). Renamed so that the
            fraction in and the value-unit tolerance out (``result.epsilon_value``) cannot be mixed up.

    Example:
        >>> from nsl.games.synthetic import network_game
        >>> game = network_game(100, "rare", seed=0)
        >>> result = tmab(game, top_k=10, seed=0)
        >>> result.converged, sorted(result.top_k.tolist()) == sorted(game.shapley().topk(10).indices.tolist())
        (True, True)
    """
    n = getattr(game, "n_players", None)
    if isinstance(n, int) and top_k is not None:
        resolve_top_k(top_k, n)
    check_tail(tail)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta={delta!r} is not accepted; use a number in (0, 1).")
    epsilon_fraction = renamed_argument("epsilon", epsilon, "epsilon_fraction", epsilon_fraction, 0.01)
    check_fraction("epsilon_fraction", epsilon_fraction, allow_none=False)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not supported; use one of {SAMPLERS}.")
    if bound not in BOUNDS:
        raise ValueError(f"bound={bound!r} is not supported; use one of {BOUNDS}.")
    if sampler == "positions" and (truncation is not None or antithetic):
        raise ValueError(
            f"truncation={truncation!r} and antithetic={antithetic!r} apply to sampler='scan'; the 'positions' "
            "sampler visits late positions rarely instead of cutting scans (leave them at None and False)."
        )
    value = parse_semivalue(semivalue)
    if sampler != "positions" and not value.is_shapley:
        raise ValueError(
            f"semivalue={value.name!r} needs sampler='positions' (permutation scans sample every coalition size "
            f"alike: Shapley's weights); sampler={sampler!r} estimates Shapley values only."
        )
    if resume is not None and resume.semivalue != value.name:
        raise ValueError(
            f"resume= holds {resume.semivalue} samples; they cannot continue a {value.name} estimate "
            f"(use semivalue={resume.semivalue!r}, or start afresh)."
        )
    check_positive_int("min_samples", min_samples)
    if isinstance(prior_samples, bool) or not isinstance(prior_samples, (int, float)) or prior_samples < 0:
        raise ValueError(f"prior_samples={prior_samples!r} is not accepted; use a number ≥ 0.")
    if value_range is not None and not (isinstance(value_range, (int, float)) and value_range > 0):
        raise ValueError(f"value_range={value_range!r} is not accepted; use None or a number > 0.")
    if value.kind == "leave_one_out":
        return exact_leave_one_out(game, top_k, tail=tail, names=names)
    budget = Budget(rows_budget(game, max_rows, max_evals), max_seconds)
    common = {"batch_size": batch_size, "seed": seed, "resume": resume, "collective": collective}
    engine: Sampler
    if sampler == "positions":
        engine = PositionSampler(game, pilot_scans=pilot_scans, per_example=per_example, semivalue=value, **common)
    else:
        if per_example:
            raise ValueError("per_example=True needs sampler='positions' (permutation scans score whole sets).")
        engine = PermutationSampler(game, truncation=truncation, patience=patience, antithetic=antithetic, **common)
    n = engine.n_players
    top_k = resolve_top_k(top_k, n)
    pairs = engine.n_slots > 0
    # δ is split over the N players' intervals, and with pairs half of it over the N(N−1)/2 pair intervals.
    level = (delta / 2 if pairs else delta) / n if union_bound else delta
    pair_level = delta / max(1, n * (n - 1)) if union_bound else delta
    if engine.collective is not None:
        check_same(
            engine.collective, top_k=top_k, delta=delta, epsilon_fraction=epsilon_fraction, min_samples=min_samples,
            max_rows=budget.max_rows, union_bound=union_bound, bound=BOUNDS.index(bound), tail=("top", "bottom",
            "both").index(tail), sampler=SAMPLERS.index(sampler), prior_samples=prior_samples,
            semivalue=KINDS.index(value.kind), alpha=value.alpha, beta=value.beta,
        )
    everyone = torch.ones(n, dtype=torch.bool)
    verdict = {"certified": False, "note": ""}

    def next_active() -> Tensor | None:
        stats = engine.stats
        tolerance = epsilon_fraction * engine.scale
        if engine.scale == 0 and bool((stats.count >= min_samples).all()) and not bool(stats.var.any()):
            verdict["note"] = "every coalition evaluated had the same value: the game looks constant"
            return None
        marginal_bound = float(engine.state.marginal_high) if rare_event_floor else 0.0
        radius = confidence_radius(
            stats, level, bound, anytime=anytime, prior_samples=prior_samples, prior_k=top_k,
            value_range=value_range, min_samples=min_samples, exposure=engine.exposure(),
            marginal_bound=marginal_bound,
        )
        floor = engine.state.sample_bound if rare_event_floor else 0.0
        lower = pair_bounds(engine.state, pair_level, prior_samples, min_samples, anytime, floor) if pairs else None
        certified, active = top_k_certificate(stats.mean, radius, top_k, tolerance, tail, lower)
        if certified and not bool(stats.var.any()):
            certified, active = False, everyone  # no sample has varied yet: nothing is known about anyone
        if certified and engine.truncation_free and value.is_shapley:
            # The intervals must account for v(N) − v(∅) (efficiency): if they cannot, some player's mass has
            # not been seen yet (a rare event every interval missed) and everyone needs more samples.
            total = engine.v_full - engine.v_empty
            if not float((stats.mean - radius).sum()) <= total + 1e-12 <= float((stats.mean + radius).sum()) + 2e-12:
                certified, active = False, everyone
        verdict["certified"] = certified
        return None if certified else active

    interrupted = sample(engine, budget, next_active, progress=progress, desc="tmab")
    if not interrupted:
        next_active()  # the verdict on the final statistics
    truncated = isinstance(engine, PermutationSampler) and engine.truncation is not None
    return result_from_state(
        engine,
        converged=not interrupted and bool(verdict["certified"]),
        interrupted=interrupted,
        k=top_k,
        names=player_names(game, names),
        method="tmab",
        seconds=budget.seconds,
        tail=tail,
        epsilon_value=epsilon_fraction * engine.scale,
        delta=delta,
        truncated=truncated,
        note=str(verdict["note"]),
        semivalue=value.name,
    )
