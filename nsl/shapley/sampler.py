"""What the sampling estimators share: the sampler base, the statistics they keep, budgets and the sampling loop.

A sampler draws marginals of the players the estimator still needs and adds them to a :class:`SampleState`.
The base sets up what every sampler needs in the same way: the evaluation meter, v(N) and v(∅) (rank 0's,
under DDP), the seed of each rank, statistics to resume from and the value scale that tolerances refer to.
One loop (:func:`sample`) drives any sampler until its estimator is satisfied or the budget runs out, with a
progress bar and Ctrl-C keeping the partial result; with several ranks it runs in rounds whose statistics
are gathered and merged, so every rank holds the same state and takes the same decisions.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from nsl.games.base import Game, decomposes
from nsl.games.counting import CountingGame
from nsl.shapley._common import check_positive_int, default_batch_size
from nsl.shapley.distributed import (
    Collective,
    InterruptFlag,
    as_collective,
    check_same,
    deferred_interrupt,
    rank_seed,
)
from nsl.shapley.result import RunningStats, ShapleyResult, merge_moments


class SampleState:
    """Everything a sampler learns: per-player statistics of its samples, per-player second moments of the
    marginals in each scan-position bin (for samplers that stratify by position), statistics of the
    differences between the samples of tracked pairs of players taken at the same coalitions, and the lowest
    and highest coalition value seen (the game's observed value scale).

    Tensors only (float64/int64), so it survives ``torch.load(weights_only=True)``; :meth:`merge` folds in a
    state gathered from another rank.
    """

    def __init__(self, n_players: int, n_bins: int = 0, n_slots: int = 0) -> None:
        self.players = RunningStats(n_players)
        self.bin_square = torch.zeros(n_players, n_bins, dtype=torch.float64)
        self.bin_count = torch.zeros(n_players, n_bins, dtype=torch.float64)
        # Per player and bin, the sum over its samples of the chance its position was drawn from that bin (the
        # proposal q_b, or the bin's share for a uniform position): how well a rare event in the bin was looked for.
        self.bin_exposure = torch.zeros(n_players, n_bins, dtype=torch.float64)
        # Pairs: player -> slot (-1: not tracked); per pair of slots (a, b) the moments of X_a − X_b.
        self.pair_slot = torch.full((n_players if n_slots else 0,), -1, dtype=torch.long)
        self.pair_count = torch.zeros(n_slots, n_slots, dtype=torch.float64)
        self.pair_mean = torch.zeros(n_slots, n_slots, dtype=torch.float64)
        self.pair_m2 = torch.zeros(n_slots, n_slots, dtype=torch.float64)
        self.value_low = torch.tensor(float("inf"), dtype=torch.float64)
        self.value_high = torch.tensor(float("-inf"), dtype=torch.float64)
        # The rare-event floor's range: the largest |marginal| seen anywhere in the game (before importance
        # weights) and the largest importance weight any position could have carried so far.
        self.marginal_high = torch.tensor(0.0, dtype=torch.float64)
        self.weight_high = torch.tensor(1.0, dtype=torch.float64)

    def see_marginals(self, marginals: Tensor, max_weight: float = 1.0) -> None:
        """Widen the rare-event range by raw marginals and the largest importance weight of the proposal."""
        if len(marginals):
            self.marginal_high = torch.maximum(self.marginal_high, marginals.abs().max().double())
        self.weight_high = torch.maximum(self.weight_high, torch.tensor(float(max_weight), dtype=torch.float64))

    @property
    def sample_bound(self) -> float:
        """What one sample could reach: the largest |marginal| seen times the largest importance weight."""
        return float(self.marginal_high * self.weight_high)

    @property
    def n_players(self) -> int:
        return self.players.n_players

    @property
    def n_bins(self) -> int:
        return self.bin_square.shape[1]

    @property
    def n_slots(self) -> int:
        return self.pair_count.shape[0]

    def add_pairs(self, slots: Tensor, samples: Tensor) -> None:
        """Add the differences of a block of samples taken together: ``samples[c, j]`` of the player in slot
        ``slots[j]`` at coalition c."""
        if len(slots) < 2 or len(samples) == 0:
            return
        diff = samples.unsqueeze(2) - samples.unsqueeze(1)  # (c, s, s): X_a − X_b
        index = (slots.unsqueeze(1), slots.unsqueeze(0))
        batch_mean = diff.mean(dim=0)
        batch_m2 = ((diff - batch_mean) ** 2).sum(dim=0)
        count, mean, m2 = merge_moments(
            self.pair_count[index], self.pair_mean[index], self.pair_m2[index],
            torch.full_like(batch_mean, float(len(samples))), batch_mean, batch_m2,
        )
        self.pair_count[index], self.pair_mean[index], self.pair_m2[index] = count, mean, m2

    def see_values(self, values: Tensor) -> None:
        """Widen the observed value range by some coalition values."""
        if len(values):
            self.value_low = torch.minimum(self.value_low, values.min().double())
            self.value_high = torch.maximum(self.value_high, values.max().double())

    @property
    def value_range(self) -> float:
        """Highest minus lowest coalition value seen (0 before two values)."""
        spread = float(self.value_high - self.value_low)
        return spread if spread == spread and spread > 0 else 0.0  # NaN/−inf before anything was seen

    def merge(self, other: SampleState) -> None:
        """Fold in the state of disjoint samples (another rank's round)."""
        self.players.merge(other.players)
        self.bin_square += other.bin_square
        self.bin_count += other.bin_count
        self.bin_exposure += other.bin_exposure
        if self.n_slots:
            self.pair_slot = torch.maximum(self.pair_slot, other.pair_slot)  # ranks assign the same slots
            self.pair_count, self.pair_mean, self.pair_m2 = merge_moments(
                self.pair_count, self.pair_mean, self.pair_m2, other.pair_count, other.pair_mean, other.pair_m2
            )
        self.value_low = torch.minimum(self.value_low, other.value_low)
        self.value_high = torch.maximum(self.value_high, other.value_high)
        self.marginal_high = torch.maximum(self.marginal_high, other.marginal_high)
        self.weight_high = torch.maximum(self.weight_high, other.weight_high)

    def discounted(self, weight: float) -> SampleState:
        """This state counting as ``weight`` of its samples (see :meth:`RunningStats.discounted`): bin and pair
        counts scaled by ``weight`` with their means and variances kept; the observed value range is kept."""
        out = SampleState(self.n_players, self.n_bins, self.n_slots)
        out.load_state_dict(self.state_dict())
        out.players = self.players.discounted(weight)
        if weight == 1:
            return out
        out.bin_count = self.bin_count * weight
        out.bin_square = self.bin_square * weight  # mean square per bin kept
        out.bin_exposure = self.bin_exposure * weight
        kept = self.pair_count * weight
        out.pair_count = kept
        out.pair_m2 = torch.where(
            kept > 1, self.pair_m2 * (kept - 1) / (self.pair_count - 1).clamp(min=1e-12), torch.zeros_like(kept)
        )
        return out

    @classmethod
    def of_dict(cls, state: dict[str, Tensor]) -> SampleState:
        """A state from :meth:`state_dict` (its sizes read from the tensors)."""
        n_players = len(state["mean"])
        square = state.get("bin_square")
        pairs = state.get("pair_count")
        out = cls(n_players, 0 if square is None else square.shape[1], 0 if pairs is None else pairs.shape[0])
        out.load_state_dict(state)
        return out

    def to_tensor(self) -> Tensor:
        """One float64 vector (for gathering): the player statistics, the bin moments, the value range."""
        return torch.cat([
            self.players.to_tensor(), self.bin_square.reshape(-1), self.bin_count.reshape(-1),
            self.bin_exposure.reshape(-1),
            self.pair_slot.double(), self.pair_count.reshape(-1), self.pair_mean.reshape(-1), self.pair_m2.reshape(-1),
            self.value_low.reshape(1), self.value_high.reshape(1),
            self.marginal_high.reshape(1), self.weight_high.reshape(1),
        ])

    @classmethod
    def from_tensor(cls, flat: Tensor, n_players: int, n_bins: int, n_slots: int = 0) -> SampleState:
        """The inverse of :meth:`to_tensor`."""
        state = cls(n_players, n_bins, n_slots)
        parts = [5 * n_players, *[n_players * n_bins] * 3, len(state.pair_slot), *[n_slots**2] * 3]
        players, square, count, exposure, slot, pair_count, pair_mean, pair_m2, _ = flat.split([*parts, 4])
        state.players = RunningStats.from_tensor(players)
        state.bin_square = square.reshape(n_players, n_bins).clone()
        state.bin_count = count.reshape(n_players, n_bins).clone()
        state.bin_exposure = exposure.reshape(n_players, n_bins).clone()
        state.pair_slot = slot.long()
        state.pair_count = pair_count.reshape(n_slots, n_slots).clone()
        state.pair_mean = pair_mean.reshape(n_slots, n_slots).clone()
        state.pair_m2 = pair_m2.reshape(n_slots, n_slots).clone()
        state.value_low, state.value_high = flat[-4].clone(), flat[-3].clone()
        state.marginal_high, state.weight_high = flat[-2].clone(), flat[-1].clone()
        return state

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **self.players.state_dict(),
            "bin_square": self.bin_square.clone(),
            "bin_count": self.bin_count.clone(),
            "bin_exposure": self.bin_exposure.clone(),
            "pair_slot": self.pair_slot.clone(),
            "pair_count": self.pair_count.clone(),
            "pair_mean": self.pair_mean.clone(),
            "pair_m2": self.pair_m2.clone(),
            "value_low": self.value_low.clone(),
            "value_high": self.value_high.clone(),
            "marginal_high": self.marginal_high.clone(),
            "weight_high": self.weight_high.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load saved statistics; bin moments of another binning (or none) are dropped, not misread."""
        self.players.load_state_dict(state)
        square = state.get("bin_square")
        if square is not None and tuple(square.shape) == tuple(self.bin_square.shape):
            self.bin_square = square.clone()
            self.bin_count = state["bin_count"].clone()
            if "bin_exposure" in state:
                self.bin_exposure = state["bin_exposure"].clone()
        pairs = state.get("pair_count")
        if pairs is not None and tuple(pairs.shape) == tuple(self.pair_count.shape):
            for key in ("pair_slot", "pair_count", "pair_mean", "pair_m2"):
                setattr(self, key, state[key].clone())
        if "value_low" in state:
            self.value_low = state["value_low"].clone()
            self.value_high = state["value_high"].clone()
        if "marginal_high" in state:
            self.marginal_high = state["marginal_high"].clone()
            self.weight_high = state["weight_high"].clone()


class StoppableMeter(CountingGame):
    """The sampler's meter (a :class:`CountingGame`) that Ctrl-C stops between calls, so no sample is lost.

    While sampling, :func:`sample` sets ``stop`` to its interrupt flag. Once the flag is raised (SIGINT on the main
    thread) or a KeyboardInterrupt flies out of the game, each call returns NaN, "not evaluated", without
    evaluating, which the steps already drop like coalitions a deadline cut off: the step in progress ends
    within one call and keeps the samples of every coalition (and row) it completed; :func:`sample` then reports
    the interrupt.
    """

    stop: InterruptFlag | None = None

    def __call__(self, present: Tensor) -> Tensor:
        return self._unless_stopped(super().__call__, present)

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:
        return self._unless_stopped(super().example_values, present, examples)

    def _unless_stopped(self, evaluate: Callable[..., Tensor], present: Tensor, *args: Tensor) -> Tensor:
        if self.stop is None:
            return evaluate(present, *args)
        if not self.stop.raised:
            try:
                return evaluate(present, *args)
            except KeyboardInterrupt:
                self.stop.set()
        present = torch.as_tensor(present)
        rows = present.shape[0] if present.dim() == 2 else 1
        return torch.full((rows,), float("nan"), dtype=torch.float64)


class Sampler(ABC):
    """The base of the samplers: the meter, v(N) and v(∅), per-rank seeds, resumed statistics, the value scale.

    Subclasses implement :meth:`step`, which adds samples of the active players to a :class:`SampleState`, and
    may set ``n_bins``. With a ``collective`` of several ranks, rank r draws from ``rank_seed(seed, r)``, rank 0
    evaluates v(N) and v(∅) and broadcasts them, and a resumed state is rank 0's.

    With ``per_example`` (a game that decomposes over examples, see :class:`~nsl.games.ExampleGame`) a sampler
    that supports it draws (coalition, example) pairs: every model row carries its own coalition, and a sample
    is ``W · sign(w_e) · (u_e(S ∪ i) − u_e(S))`` for an example e drawn with probability |w_e| / W, an unbiased
    marginal of the game itself (φ_i(v) = Σ_e w_e φ_i(u_e)). Budgets and counts are in rows in both modes.
    """

    name = "sampler"
    n_bins = 0
    n_slots = 0  # pairs of players whose sample differences are tracked (samplers with shared coalitions)
    truncation_free = True  # every sample is an unbiased marginal of the game itself
    supports_examples = False  # can sample (coalition, example) pairs

    def __init__(
        self,
        game: Game,
        *,
        batch_size: int | None,
        seed: int,
        resume: ShapleyResult | None = None,
        collective: Collective | object | None = None,
        per_example: bool | None = False,
    ) -> None:
        check_positive_int("batch_size", batch_size, allow_none=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} must be an int.")
        self.game = StoppableMeter(game)
        self.n_players = self.game.n_players
        self.per_example = resolve_per_example(game, per_example, self.supports_examples)
        self.rows_per_eval = int(getattr(game, "rows_per_eval", 1) or 1)
        self.state = self.new_state()
        if resume is not None:
            if resume.stats is None:
                raise ValueError("resume= needs a result of a sampling estimator (one that kept its stats).")
            self.state.load_state_dict(resume.stats)
        if self.per_example:
            weights = torch.as_tensor(game.example_weights, dtype=torch.float64).reshape(-1)  # type: ignore[attr-defined]
            self.example_offset = float(getattr(game, "example_offset", 0.0))
            self.examples = torch.nonzero(weights != 0).squeeze(1)  # examples that count
            w = weights[self.examples]
            self.example_weights = w  # the game's value is example_offset + Σ w_e u_e over these examples
            self.example_scale = float(w.abs().sum())  # W
            self.example_probs = w.abs() / self.example_scale
            self.example_sign = torch.sign(w)
            default_rows = int(getattr(game, "max_rows", 1024) or 1024)
            self.batch_size = batch_size or default_rows
        else:
            self.batch_size = batch_size or default_batch_size(game)
        self.collective = as_collective(collective)
        self.rank = 0 if self.collective is None else self.collective.rank
        self.world_size = 1 if self.collective is None else self.collective.world_size
        self.generator = torch.Generator().manual_seed(seed if self.collective is None else rank_seed(seed, self.rank))
        if self.collective is None:
            self._start()
            self.total_evals = self.game.n_evals
            self.total_rows = self.local_rows
        else:
            check_same(
                self.collective, n_players=self.n_players, seed=seed, resumed=resume is not None,
                per_example=self.per_example,
            )
            self._share_start()
        self.state.see_values(torch.tensor([self.v_full, self.v_empty], dtype=torch.float64))
        self.span = abs(self.v_full - self.v_empty)
        self.steps = 0  # over all ranks
        self.local_steps = 0

    def _start(self) -> None:
        """v(N) and v(∅); per example, also each example's u_e(N) and u_e(∅) (the same rows, 2 per example)."""
        if not self.per_example:
            self.v_full, self.v_empty = self.game.full_and_empty()
            return
        e = len(self.examples)
        present = torch.ones(2 * e, self.n_players, dtype=torch.bool)
        present[e:] = False
        u = self.game.example_values(present, self.examples.repeat(2))
        self.example_full, self.example_empty = u[:e].clone(), u[e:].clone()
        self.v_full = self.example_offset + float((self.example_weights * self.example_full).sum())
        self.v_empty = self.example_offset + float((self.example_weights * self.example_empty).sum())

    @property
    def stats(self) -> RunningStats:
        """The per-player statistics of the samples so far."""
        return self.state.players

    @property
    def scale(self) -> float:
        """The game's value scale that tolerances refer to: |v(N) − v(∅)|, or the spread of the values seen
        when that is larger (a game whose value dips between N and ∅, where v(N) may equal v(∅))."""
        return max(self.span, self.state.value_range)

    def new_state(self) -> SampleState:
        state = SampleState(self.n_players, self.n_bins, self.n_slots)
        if self.n_slots and hasattr(self, "state"):
            state.pair_slot = self.state.pair_slot.clone()
        return state

    def _share_start(self) -> None:
        """Rank 0's v(N), v(∅) (per example: u_e(N), u_e(∅)) and resumed statistics on every rank, so all ranks
        start bitwise equal."""
        assert self.collective is not None
        e = len(self.examples) if self.per_example else 0
        if self.rank == 0:
            self._start()
            parts = [torch.tensor([self.v_full, self.v_empty], dtype=torch.float64)]
            if self.per_example:
                parts += [self.example_full, self.example_empty]
            start = torch.cat([*parts, self.state.to_tensor()])
        else:
            start = torch.zeros(2 + 2 * e + len(self.state.to_tensor()), dtype=torch.float64)
        start = self.collective.broadcast(start, src=0)
        self.v_full, self.v_empty = float(start[0]), float(start[1])
        if self.per_example:
            self.example_full, self.example_empty = start[2 : 2 + e].clone(), start[2 + e : 2 + 2 * e].clone()
        self.state = SampleState.from_tensor(start[2 + 2 * e :], self.n_players, self.n_bins, self.n_slots)
        self.total_evals = 2  # rank 0's v(N) and v(∅)
        self.total_rows = 2 * (e if self.per_example else self.rows_per_eval)

    @property
    def local_evals(self) -> int:
        """Coalitions this process evaluated on the whole evaluation set (per example: the full-set equivalent)."""
        if self.per_example:
            return round(self.local_rows / max(1, self.rows_per_eval))
        return self.game.n_evals

    @property
    def local_rows(self) -> int:
        """Rows this process put through the model: (coalition, example) pairs."""
        rows = getattr(self.game, "n_rows", None)
        return int(rows) if rows is not None else self.game.n_evals * self.rows_per_eval

    @property
    def evals_equivalent(self) -> int:
        """The rows over all ranks as full-set evaluations (rows / evaluation-set size)."""
        if not self.per_example:
            return self.total_evals
        return round(self.total_rows / max(1, self.rows_per_eval))

    def run_step(
        self, active: Tensor, into: SampleState | None = None, *, rows_left: int | None = None,
        deadline: float | None = None,
    ) -> int:
        """One :meth:`step` into ``into`` (default: the sampler's state), with the bookkeeping of steps, rows and
        evaluations; ``rows_left`` bounds the rows (a full-set sampler gets it as whole evaluations). Returns the
        budget units used (rows per example, coalitions otherwise)."""
        left = rows_left
        if rows_left is not None and not self.per_example:
            left = rows_left // self.rows_per_eval
        evaluated = self.step(active, self.state if into is None else into, evals_left=left, deadline=deadline)
        self.local_steps += 1
        if self.collective is None:
            self.steps += 1
            self.total_evals = self.game.n_evals
            self.total_rows = self.local_rows
        return evaluated

    def exposure(self) -> Tensor:
        """Per player, how well its samples looked for a rare event (see :func:`~nsl.shapley.bounds.rare_event_radius`):
        its sample count, for samplers whose positions are uniform."""
        return self.stats.count.double()

    @abstractmethod
    def step(self, active: Tensor, into: SampleState, *, evals_left: int | None, deadline: float | None) -> int:
        """Add samples of the active players to ``into``; use at most ``evals_left`` budget units (rows in
        per-example mode, coalitions otherwise) and stop early once ``time.perf_counter()`` passes ``deadline``;
        return the units used."""


def resolve_per_example(game: Game, per_example: bool | None, supported: bool) -> bool:
    """Whether to sample (coalition, example) pairs: ``None`` = wherever the game decomposes and the sampler can."""
    if per_example is None:
        return supported and decomposes(game)
    if not isinstance(per_example, bool):
        raise ValueError(f"per_example={per_example!r} is not accepted; use None (auto), True or False.")
    if per_example and not supported:
        raise ValueError(
            "per_example=True needs a sampler that draws (coalition, example) pairs (sampler='positions')."
        )
    if per_example and not decomposes(game):
        why = getattr(game, "why_not_decomposable", "") or "it declares no example_weights / example_values"
        raise ValueError(f"per_example=True, but {type(game).__name__} does not decompose over examples: {why}.")
    return per_example


class Progress:
    """A tqdm bar over rows through the model (the bar Lightning's default progress bar uses); a no-op when disabled.

    Shows rows done against the budget, the players still sampled and the seconds left, so a long run
    says what it is doing; Ctrl-C ends it with the partial result (see ``interrupted`` on the result).
    """

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="row", unit_scale=True, leave=False, dynamic_ncols=True)

    def update(self, n_rows: int, active: int | None = None, seconds_left: float | None = None) -> None:
        if self.bar is None:
            return
        postfix = {}
        if active is not None:
            postfix["active"] = active
        if seconds_left is not None:
            postfix["s_left"] = f"{seconds_left:.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n_rows - self.bar.n)  # redraws at most every tqdm ``mininterval``

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Budget:
    """Stops sampling after ``max_rows`` rows through the model or ``max_seconds`` of wall time.

    Rows are (coalition, example) pairs: the unit that does not depend on the machine. A full-set evaluation of
    M examples costs M rows; :func:`rows_budget` converts a budget given in evaluations.
    """

    def __init__(self, max_rows: int | None, max_seconds: float | None) -> None:
        check_positive_int("max_rows", max_rows, allow_none=True)
        if max_seconds is not None and (isinstance(max_seconds, bool) or not max_seconds > 0):
            raise ValueError(f"max_seconds={max_seconds!r} is not accepted; use None or a number > 0.")
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` value at which the seconds run out (None without ``max_seconds``)."""
        return None if self.max_seconds is None else self.start + self.max_seconds

    def rows_left(self, n_rows: int, share: int = 1) -> int | None:
        """Rows left after ``n_rows`` (over all ranks), split over ``share`` ranks (rounded up)."""
        if self.max_rows is None:
            return None
        return max(0, -(-(self.max_rows - n_rows) // share))

    @property
    def seconds_left(self) -> float | None:
        return None if self.max_seconds is None else max(0.0, self.max_seconds - self.seconds)

    def exhausted(self, n_rows: int, seconds: float | None = None) -> bool:
        """Whether ``n_rows`` rows or ``seconds`` (default: this process's clock) used the budget up."""
        if self.max_rows is not None and n_rows >= self.max_rows:
            return True
        seconds = self.seconds if seconds is None else seconds
        return self.max_seconds is not None and seconds >= self.max_seconds


def rows_budget(game: Game, max_rows: int | None, max_evals: int | None) -> int | None:
    """The budget in rows: ``max_rows``, and ``max_evals`` full-set evaluations times the evaluation-set size M,
    whichever runs out first. ``max_evals=-1`` with no ``max_rows`` is the default budget, per player the more of
    200 full-set evaluations (200·M rows) and 20,000 rows (what certifying a real network with per-example samples
    took: about 11,000 per filter on the digits CNN); ``None`` when nothing limits it."""
    n = int(getattr(game, "n_players", 0) or 0)
    rows_per_eval = int(getattr(game, "rows_per_eval", 1) or 1)
    check_positive_int("max_rows", max_rows, allow_none=True)
    if max_evals == -1:
        if max_rows is not None:
            return max_rows
        return n * max(200 * rows_per_eval, 20_000) if n > 0 else None
    check_positive_int("max_evals", max_evals, allow_none=True)
    limits = [limit for limit in (max_rows, None if max_evals is None else max_evals * rows_per_eval) if limit]
    return min(limits) if limits else None


def sample(
    sampler: Sampler,
    budget: Budget,
    next_active: Callable[[], Tensor | None],
    *,
    progress: bool,
    desc: str,
    max_steps: int | None = None,
) -> bool:
    """Step while ``next_active()`` names players to sample and the budget lasts; True if Ctrl-C stopped it.

    The one sampling loop of the estimators: it keeps the progress bar (in rows) and turns a KeyboardInterrupt
    into a partial result (the statistics of the finished steps). With several ranks it runs in rounds (see
    :func:`sample_distributed`); ``max_steps`` then caps the steps over all ranks.
    """
    if sampler.collective is not None:
        return sample_distributed(sampler, budget, next_active, progress=progress, desc=desc, max_steps=max_steps)
    bar = Progress(progress, budget.max_rows, desc)
    try:
        # Ctrl-C raises a flag that stops the meter (see StoppableMeter): the step in progress keeps its samples.
        with deferred_interrupt() as flag:
            sampler.game.stop = flag
            while not flag.raised and (active := next_active()) is not None and not budget.exhausted(
                sampler.local_rows
            ):
                left = budget.rows_left(sampler.local_rows)
                if sampler.run_step(active, rows_left=left, deadline=budget.deadline) == 0 and left is not None:
                    break  # what is left of the budget is too little for one more sample
                bar.update(sampler.local_rows, int(active.sum()), budget.seconds_left)
    except KeyboardInterrupt:  # off the main thread, outside a game call: the step in progress is dropped
        return True
    finally:
        sampler.game.stop = None
        bar.close()
    return flag.raised


def sample_distributed(
    sampler: Sampler,
    budget: Budget,
    next_active: Callable[[], Tensor | None],
    *,
    progress: bool,
    desc: str,
    max_steps: int | None = None,
) -> bool:
    """The sampling loop on several ranks; True if Ctrl-C on any rank stopped it.

    Each round every rank takes one step over the shared active set into a fresh state; one gather then brings
    every rank's round state, row and evaluation counts, clock and interrupt flag, and each rank merges the round
    states in rank order (Chan's formula for the player statistics). All ranks so hold bitwise the same state and
    take the same decisions: the budget counts rows over all ranks and the slowest rank's seconds. With
    ``max_steps``, rank r steps in a round only while ``steps + r < max_steps``.
    """
    collective = sampler.collective
    assert collective is not None
    bar = Progress(progress and sampler.rank == 0, budget.max_rows, desc)
    seconds = 0.0
    interrupted = False
    size = len(sampler.new_state().to_tensor())
    stalled = False
    start_evals, start_rows = sampler.total_evals, sampler.total_rows  # rank 0's v(N) and v(∅), counted once
    try:
        with deferred_interrupt() as flag:
            sampler.game.stop = flag  # Ctrl-C ends this rank's step early, keeping its samples (StoppableMeter)
            while (active := next_active()) is not None and not interrupted:
                if budget.exhausted(sampler.total_rows, seconds) or stalled:
                    break
                fresh = sampler.new_state()
                if (max_steps is None or sampler.steps + sampler.rank < max_steps) and not flag.raised:
                    try:
                        left = budget.rows_left(sampler.total_rows, sampler.world_size)
                        sampler.run_step(active, into=fresh, rows_left=left, deadline=budget.deadline)
                    except KeyboardInterrupt:  # off the main thread: the unfinished step is dropped
                        flag.set()
                        fresh = sampler.new_state()
                before = sampler.total_rows
                own_evals = sampler.game.n_evals - (2 if sampler.rank == 0 and not sampler.per_example else 0)
                own_rows = sampler.local_rows - (start_rows if sampler.rank == 0 else 0)
                meta = torch.tensor(
                    [own_evals, budget.seconds, float(flag.raised), sampler.local_steps, own_rows], dtype=torch.float64
                )
                gathered = collective.all_gather(torch.cat([fresh.to_tensor(), meta]))
                for rank_state in gathered[:, :size]:
                    sampler.state.merge(
                        SampleState.from_tensor(rank_state, sampler.n_players, sampler.n_bins, sampler.n_slots)
                    )
                meta_all = gathered[:, size:]
                sampler.total_evals = start_evals + int(meta_all[:, 0].sum())
                seconds = float(meta_all[:, 1].max())
                interrupted = bool(meta_all[:, 2].any())
                sampler.steps = int(meta_all[:, 3].sum())
                sampler.total_rows = start_rows + int(meta_all[:, 4].sum())
                # No rank could evaluate anything with what is left of the budget: stop (same on every rank).
                stalled = budget.max_rows is not None and sampler.total_rows == before
                bar.update(sampler.total_rows, int(active.sum()), budget.seconds_left)
    finally:
        sampler.game.stop = None
        bar.close()
    return interrupted



def discounted(result: ShapleyResult, weight: float) -> ShapleyResult:
    """``result`` with its sampling statistics counting as ``weight`` of their samples (see
    :meth:`SampleState.discounted`), to resume from when the game changed since (a model trained further):
    intervals widen again and the estimator re-samples players it had resolved. ``weight=1`` resumes as is."""
    if result.stats is None:
        raise ValueError("discounted() needs a result of a sampling estimator (one that kept its stats).")
    state = SampleState.of_dict(result.stats).discounted(weight)
    stats = state.players
    return dataclasses.replace(
        result, values=stats.mean.clone(), stderr=stats.stderr, counts=stats.count.clone(), stats=state.state_dict()
    )


def result_from_state(sampler: Sampler, **kwargs: object) -> ShapleyResult:
    """A :class:`ShapleyResult` holding the sampler's means, standard errors, counts and state."""
    stats = sampler.stats
    return ShapleyResult(
        values=stats.mean.clone(),
        stderr=stats.stderr,
        counts=stats.count.clone(),
        stats=sampler.state.state_dict(),
        n_evals=sampler.evals_equivalent,
        n_rows=sampler.total_rows,
        sampling="examples" if sampler.per_example else "coalitions",
        local_evals=sampler.local_evals,
        world_size=sampler.world_size,
        full_value=sampler.v_full,
        empty_value=sampler.v_empty,
        **kwargs,  # type: ignore[arg-type]
    )
