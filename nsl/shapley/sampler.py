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

from nsl.games.base import Game
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
        # Pairs: player -> slot (-1: not tracked); per pair of slots (a, b) the moments of X_a − X_b.
        self.pair_slot = torch.full((n_players if n_slots else 0,), -1, dtype=torch.long)
        self.pair_count = torch.zeros(n_slots, n_slots, dtype=torch.float64)
        self.pair_mean = torch.zeros(n_slots, n_slots, dtype=torch.float64)
        self.pair_m2 = torch.zeros(n_slots, n_slots, dtype=torch.float64)
        self.value_low = torch.tensor(float("inf"), dtype=torch.float64)
        self.value_high = torch.tensor(float("-inf"), dtype=torch.float64)

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
        if self.n_slots:
            self.pair_slot = torch.maximum(self.pair_slot, other.pair_slot)  # ranks assign the same slots
            self.pair_count, self.pair_mean, self.pair_m2 = merge_moments(
                self.pair_count, self.pair_mean, self.pair_m2, other.pair_count, other.pair_mean, other.pair_m2
            )
        self.value_low = torch.minimum(self.value_low, other.value_low)
        self.value_high = torch.maximum(self.value_high, other.value_high)

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
            self.pair_slot.double(), self.pair_count.reshape(-1), self.pair_mean.reshape(-1), self.pair_m2.reshape(-1),
            self.value_low.reshape(1), self.value_high.reshape(1),
        ])

    @classmethod
    def from_tensor(cls, flat: Tensor, n_players: int, n_bins: int, n_slots: int = 0) -> SampleState:
        """The inverse of :meth:`to_tensor`."""
        state = cls(n_players, n_bins, n_slots)
        parts = [5 * n_players, n_players * n_bins, n_players * n_bins, len(state.pair_slot), *[n_slots**2] * 3]
        players, square, count, slot, pair_count, pair_mean, pair_m2, _ = flat.split([*parts, 2])
        state.players = RunningStats.from_tensor(players)
        state.bin_square = square.reshape(n_players, n_bins).clone()
        state.bin_count = count.reshape(n_players, n_bins).clone()
        state.pair_slot = slot.long()
        state.pair_count = pair_count.reshape(n_slots, n_slots).clone()
        state.pair_mean = pair_mean.reshape(n_slots, n_slots).clone()
        state.pair_m2 = pair_m2.reshape(n_slots, n_slots).clone()
        state.value_low, state.value_high = flat[-2].clone(), flat[-1].clone()
        return state

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **self.players.state_dict(),
            "bin_square": self.bin_square.clone(),
            "bin_count": self.bin_count.clone(),
            "pair_slot": self.pair_slot.clone(),
            "pair_count": self.pair_count.clone(),
            "pair_mean": self.pair_mean.clone(),
            "pair_m2": self.pair_m2.clone(),
            "value_low": self.value_low.clone(),
            "value_high": self.value_high.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load saved statistics; bin moments of another binning (or none) are dropped, not misread."""
        self.players.load_state_dict(state)
        square = state.get("bin_square")
        if square is not None and tuple(square.shape) == tuple(self.bin_square.shape):
            self.bin_square = square.clone()
            self.bin_count = state["bin_count"].clone()
        pairs = state.get("pair_count")
        if pairs is not None and tuple(pairs.shape) == tuple(self.pair_count.shape):
            for key in ("pair_slot", "pair_count", "pair_mean", "pair_m2"):
                setattr(self, key, state[key].clone())
        if "value_low" in state:
            self.value_low = state["value_low"].clone()
            self.value_high = state["value_high"].clone()


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
    """

    name = "sampler"
    n_bins = 0
    n_slots = 0  # pairs of players whose sample differences are tracked (samplers with shared coalitions)
    truncation_free = True  # every sample is an unbiased marginal of the game itself

    def __init__(
        self,
        game: Game,
        *,
        batch_size: int | None,
        seed: int,
        resume: ShapleyResult | None = None,
        collective: Collective | object | None = None,
    ) -> None:
        check_positive_int("batch_size", batch_size, allow_none=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} must be an int.")
        self.game = StoppableMeter(game)
        self.n_players = self.game.n_players
        self.state = self.new_state()
        if resume is not None:
            if resume.stats is None:
                raise ValueError("resume= needs a result of a sampling estimator (one that kept its stats).")
            self.state.load_state_dict(resume.stats)
        self.batch_size = batch_size or default_batch_size(game)
        self.collective = as_collective(collective)
        self.rank = 0 if self.collective is None else self.collective.rank
        self.world_size = 1 if self.collective is None else self.collective.world_size
        self.generator = torch.Generator().manual_seed(seed if self.collective is None else rank_seed(seed, self.rank))
        if self.collective is None:
            self.v_full, self.v_empty = self.game.full_and_empty()
            self.total_evals = self.game.n_evals
        else:
            check_same(self.collective, n_players=self.n_players, seed=seed, resumed=resume is not None)
            self._share_start()
        self.state.see_values(torch.tensor([self.v_full, self.v_empty], dtype=torch.float64))
        self.span = abs(self.v_full - self.v_empty)
        self.steps = 0  # over all ranks
        self.local_steps = 0

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
        """Rank 0's v(N), v(∅) and resumed statistics on every rank, so all ranks start bitwise equal."""
        assert self.collective is not None
        if self.rank == 0:
            self.v_full, self.v_empty = self.game.full_and_empty()
            start = torch.cat([torch.tensor([self.v_full, self.v_empty], dtype=torch.float64), self.state.to_tensor()])
        else:
            start = torch.zeros(2 + len(self.state.to_tensor()), dtype=torch.float64)
        start = self.collective.broadcast(start, src=0)
        self.v_full, self.v_empty = float(start[0]), float(start[1])
        self.state = SampleState.from_tensor(start[2:], self.n_players, self.n_bins, self.n_slots)
        self.total_evals = 2  # rank 0's v(N) and v(∅)

    @property
    def local_evals(self) -> int:
        """Coalitions this process evaluated."""
        return self.game.n_evals

    def run_step(
        self, active: Tensor, into: SampleState | None = None, *, evals_left: int | None = None,
        deadline: float | None = None,
    ) -> int:
        """One :meth:`step` into ``into`` (default: the sampler's state), with the bookkeeping of steps and
        evaluations; returns the coalitions evaluated."""
        evaluated = self.step(active, self.state if into is None else into, evals_left=evals_left, deadline=deadline)
        self.local_steps += 1
        if self.collective is None:
            self.steps += 1
            self.total_evals = self.game.n_evals
        return evaluated

    @abstractmethod
    def step(self, active: Tensor, into: SampleState, *, evals_left: int | None, deadline: float | None) -> int:
        """Add samples of the ``active`` players to ``into``; evaluate at most ``evals_left`` coalitions and
        stop early once ``time.perf_counter()`` passes ``deadline``; return the coalitions evaluated."""


class Progress:
    """A tqdm bar over evaluations (the bar Lightning's default progress bar uses); a no-op when disabled.

    Shows evaluations done against the budget, the players still sampled and the seconds left, so a long run
    says what it is doing; Ctrl-C ends it with the partial result (see ``interrupted`` on the result).
    """

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="eval", leave=False, dynamic_ncols=True)

    def update(self, n_evals: int, active: int | None = None, seconds_left: float | None = None) -> None:
        if self.bar is None:
            return
        postfix = {}
        if active is not None:
            postfix["active"] = active
        if seconds_left is not None:
            postfix["s_left"] = f"{seconds_left:.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n_evals - self.bar.n)  # redraws at most every tqdm ``mininterval``

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Budget:
    """Stops sampling after ``max_evals`` coalitions or ``max_seconds`` of wall time."""

    def __init__(self, max_evals: int | None, max_seconds: float | None) -> None:
        check_positive_int("max_evals", max_evals, allow_none=True)
        if max_seconds is not None and (isinstance(max_seconds, bool) or not max_seconds > 0):
            raise ValueError(f"max_seconds={max_seconds!r} is not accepted; use None or a number > 0.")
        self.max_evals = max_evals
        self.max_seconds = max_seconds
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` value at which the seconds run out (None without ``max_seconds``)."""
        return None if self.max_seconds is None else self.start + self.max_seconds

    def evals_left(self, n_evals: int, share: int = 1) -> int | None:
        """Evaluations left after ``n_evals`` (over all ranks), split over ``share`` ranks (rounded up)."""
        if self.max_evals is None:
            return None
        return max(0, -(-(self.max_evals - n_evals) // share))

    @property
    def seconds_left(self) -> float | None:
        return None if self.max_seconds is None else max(0.0, self.max_seconds - self.seconds)

    def exhausted(self, n_evals: int, seconds: float | None = None) -> bool:
        """Whether ``n_evals`` evaluations or ``seconds`` (default: this process's clock) used the budget up."""
        if self.max_evals is not None and n_evals >= self.max_evals:
            return True
        seconds = self.seconds if seconds is None else seconds
        return self.max_seconds is not None and seconds >= self.max_seconds


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

    The one sampling loop of the estimators: it keeps the progress bar and turns a KeyboardInterrupt into a
    partial result (the statistics of the finished steps). With several ranks it runs in rounds (see
    :func:`sample_distributed`); ``max_steps`` then caps the steps over all ranks.
    """
    if sampler.collective is not None:
        return sample_distributed(sampler, budget, next_active, progress=progress, desc=desc, max_steps=max_steps)
    bar = Progress(progress, budget.max_evals, desc)
    try:
        # Ctrl-C raises a flag that stops the meter (see StoppableMeter): the step in progress keeps its samples.
        with deferred_interrupt() as flag:
            sampler.game.stop = flag
            while not flag.raised and (active := next_active()) is not None and not budget.exhausted(
                sampler.game.n_evals
            ):
                left = budget.evals_left(sampler.game.n_evals)
                if sampler.run_step(active, evals_left=left, deadline=budget.deadline) == 0 and left is not None:
                    break  # what is left of the budget is too little for one more sample
                bar.update(sampler.game.n_evals, int(active.sum()), budget.seconds_left)
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
    every rank's round state, evaluation count, clock and interrupt flag, and each rank merges the round states
    in rank order (Chan's formula for the player statistics). All ranks so hold bitwise the same state and take
    the same decisions: the budget counts evaluations over all ranks and the slowest rank's seconds. With
    ``max_steps``, rank r steps in a round only while ``steps + r < max_steps``.
    """
    collective = sampler.collective
    assert collective is not None
    bar = Progress(progress and sampler.rank == 0, budget.max_evals, desc)
    seconds = 0.0
    interrupted = False
    size = len(sampler.new_state().to_tensor())
    stalled = False
    try:
        with deferred_interrupt() as flag:
            sampler.game.stop = flag  # Ctrl-C ends this rank's step early, keeping its samples (StoppableMeter)
            while (active := next_active()) is not None and not interrupted:
                if budget.exhausted(sampler.total_evals, seconds) or stalled:
                    break
                fresh = sampler.new_state()
                if (max_steps is None or sampler.steps + sampler.rank < max_steps) and not flag.raised:
                    try:
                        left = budget.evals_left(sampler.total_evals, sampler.world_size)
                        sampler.run_step(active, into=fresh, evals_left=left, deadline=budget.deadline)
                    except KeyboardInterrupt:  # off the main thread: the unfinished step is dropped
                        flag.set()
                        fresh = sampler.new_state()
                before = sampler.total_evals
                meta = torch.tensor(
                    [sampler.local_evals, budget.seconds, float(flag.raised), sampler.local_steps], dtype=torch.float64
                )
                gathered = collective.all_gather(torch.cat([fresh.to_tensor(), meta]))
                for rank_state in gathered[:, :size]:
                    sampler.state.merge(
                        SampleState.from_tensor(rank_state, sampler.n_players, sampler.n_bins, sampler.n_slots)
                    )
                meta_all = gathered[:, size:]
                sampler.total_evals = int(meta_all[:, 0].sum())
                seconds = float(meta_all[:, 1].max())
                interrupted = bool(meta_all[:, 2].any())
                sampler.steps = int(meta_all[:, 3].sum())
                # No rank could evaluate anything with what is left of the budget: stop (same on every rank).
                stalled = budget.max_evals is not None and sampler.total_evals == before
                bar.update(sampler.total_evals, int(active.sum()), budget.seconds_left)
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
        n_evals=sampler.total_evals,
        local_evals=sampler.local_evals,
        world_size=sampler.world_size,
        full_value=sampler.v_full,
        empty_value=sampler.v_empty,
        **kwargs,  # type: ignore[arg-type]
    )
