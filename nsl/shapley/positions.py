"""Position-stratified sampling at shared coalitions: the rare event of a network game made common.

A player's Shapley value is the mean of its marginal over the scan positions p = 0..N−1 (p players removed
before it): ``φ_i = (1/N) Σ_p E[v(S ∪ i) − v(S)]``, S a uniformly random set of N−1−p other players. In a
network game that marginal is large only at the few early positions before the collapse, which uniform
permutation sampling rarely visits. This sampler draws the position from a proposal learned from the collapse
curve that all players share, and importance-weights the sample, so each player's samples are i.i.d.-like
and unbiased while the positions where marginals live are visited often:

- positions are grouped into bins, geometric from both ends of the scan (0, 1, 2–3, 4–7, … and the mirror),
  because collapses happen near the full network (accuracy) or near the empty one (a class the empty network
  predicts);
- the proposal over bins is Neyman's allocation for the players still sampled (bin weight × root mean square of
  their marginals in the bin, from all samples so far), mixed with uniform over bins and over positions so
  that every bin keeps being explored;
- one coalition serves every active player at once (shared noise, one extra evaluation per player): for a
  large coalition C (early position) the players in C are removed one at a time, for a small coalition S (late
  position) the players outside S are added one at a time; a player not in C (or in S) gets the sample 0.
  Inside a bin the position is drawn with probability ∝ 1/π(p) (π: the chance to be in C, or outside S), so
  the samples a player receives are uniform over the bin's positions, and every sample of a bin carries the
  same weight ``Z_b / (N·q_b)``;
- two antithetic removal scans first give every player two plain samples and the first picture of the
  collapse curve.

Any semivalue (:mod:`nsl.shapley.semivalues`) is the same construction with its own weight ω(p) per position in place
of Shapley's 1/N: positions inside a bin are drawn ∝ ω(p)/π(p), the uniform share follows ω, and a bin's samples
weigh ``Z_b / (N·q_b)`` with ``Z_b = N Σ_{p∈b} ω(p)/π(p)``.

The sample mean of each player is an unbiased estimate of its Shapley value (or semivalue) (the proposal only depends on
earlier samples), with no truncation bias; the bandit (:func:`nsl.shapley.tmab`) decides who is sampled.
(A control variate on the importance weights, whose mean is known to be 1, was measured: it helps players
whose marginal barely depends on the position but cost 25–35 % more evaluations on the network-shaped games,
so it is not used.)
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.shapley._common import check_positive_int
from nsl.shapley.distributed import Collective
from nsl.shapley.result import RunningStats, ShapleyResult
from nsl.shapley.sampler import Sampler, SampleState
from nsl.shapley.scan import removal_scan
from nsl.shapley.semivalues import Semivalue, parse_semivalue


def position_bins(n_players: int) -> Tensor:
    """Bin edges over scan positions 0..N: 0, 1, 2, 4, 8, … up to N/2, and the same mirrored from N."""
    left = [0]
    step = 1
    while step < n_players / 2:
        left.append(step)
        step *= 2
    return torch.tensor(sorted({*left, *(n_players - e for e in left), n_players}), dtype=torch.long)


class PositionSampler(Sampler):
    """Samples marginals at importance-weighted scan positions, all active players at one shared coalition.

    Args:
        game: the game.
        pilot_scans: antithetic removal scans at the start (plain samples and the first collapse curve).
        group_size: players sampled at one coalition when many are active (they share the coalition's luck, so
            larger rounds are split into groups with independent coalitions).
        track_pairs: how many players (those sampled in rounds of at most this many) get the differences of
            their samples tracked pairwise; shared coalitions make these differences far less noisy than
            the samples themselves (0: none).
        explore: share of the proposal spread evenly over the bins (keeps rare bins visited).
        uniform: share of the proposal spread evenly over positions (keeps importance weights bounded). Half by
            default: the rare-event floor pays for every bin that is looked into less than uniform positions would
            (on the digits CNN 1.13 M rows to certify at 0.5 against 1.30 M at 0.1; on network-shaped full-set
            games about half the evaluations).
        batch_size: coalitions per call to the game.
        seed, resume, collective: as for every sampler.
        semivalue: which semivalue the samples estimate (:mod:`nsl.shapley.semivalues`): its weight per position
            replaces Shapley's 1/N in the draw inside a bin, the bins' uniform share and the importance weights.
    """

    name = "positions"
    supports_examples = True

    def __init__(
        self,
        game: Game,
        *,
        pilot_scans: int = 2,
        group_size: int = 32,
        track_pairs: int = 64,
        explore: float = 0.1,
        uniform: float = 0.5,
        batch_size: int | None = None,
        seed: int = 0,
        resume: ShapleyResult | None = None,
        collective: Collective | object | None = None,
        per_example: bool | None = None,
        semivalue: str | Semivalue = "shapley",
    ) -> None:
        self.semivalue = parse_semivalue(semivalue)
        n = getattr(game, "n_players", 0)
        self.edges = position_bins(n if isinstance(n, int) and n > 0 else 1)
        self.n_bins = len(self.edges) - 1
        if isinstance(pilot_scans, bool) or not isinstance(pilot_scans, int) or pilot_scans < 0:
            raise ValueError(f"pilot_scans={pilot_scans!r} is not accepted; use an int ≥ 0.")
        for name, value in (("explore", explore), ("uniform", uniform)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} is not accepted; use a number in [0, 1].")
        if isinstance(track_pairs, bool) or not isinstance(track_pairs, int) or track_pairs < 0:
            raise ValueError(f"track_pairs={track_pairs!r} is not accepted; use an int ≥ 0.")
        self.n_slots = track_pairs
        check_positive_int("group_size", group_size)
        self.group_size = group_size
        if explore + uniform > 1:
            raise ValueError(f"explore + uniform = {explore + uniform} must be ≤ 1.")
        super().__init__(
            game, batch_size=batch_size, seed=seed, resume=resume, collective=collective, per_example=per_example
        )
        check_positive_int("n_players", self.n_players)
        n = self.n_players
        self.pilot_scans = pilot_scans
        self.explore, self.uniform = float(explore), float(uniform)
        positions = torch.arange(n)
        size = n - 1 - positions  # other players present before the player's removal
        self.removal = size + 1 > n / 2  # large coalitions: remove players; small ones: add them
        self.inclusion = torch.where(self.removal, (size + 1).double() / n, (n - size).double() / n)
        self.bin_of = torch.bucketize(positions, self.edges, right=True) - 1
        # The semivalue's weight of each position (1/N each for Shapley) and of each bin: the proposal's uniform
        # share draws positions as the semivalue weighs them.
        self.position_weight = self.semivalue.position_weights(n)
        self.bin_weight = torch.zeros(self.n_bins, dtype=torch.float64).index_add_(
            0, self.bin_of, self.position_weight
        )
        # Inside a bin a position is drawn ∝ ω(p)/π(p), so the samples a player receives follow the semivalue
        # there; Z_b = N Σ_{p∈b} ω(p)/π(p) (Σ 1/π for Shapley) makes every sample of the bin weigh Z_b / (N q_b).
        self.draw_weight = self.position_weight / self.inclusion
        self.inverse_inclusion = torch.zeros(self.n_bins, dtype=torch.float64).index_add_(
            0, self.bin_of, n * self.draw_weight
        )  # Z_b
        # Bins that carry weight (all of them for Shapley; Banzhaf's outer bins underflow to nothing): exploration
        # is spread over these only.
        self.material = self.bin_weight > 1e-6 / self.n_bins
        self._pilot_left = pilot_scans if resume is None else 0
        self._reverse_next: Tensor | None = None

    # ------------------------------------------------------------------------------------------- proposal
    def proposal(self, active: Tensor) -> Tensor:
        """Probabilities of the bins: Neyman's allocation for the active players, mixed for exploration."""
        state = self.state
        square = state.bin_square[active].sum(0)
        count = state.bin_count[active].sum(0)
        # All players' moments as a prior worth a few samples per bin, so a bin the active players have not
        # visited yet inherits what the collapse curve says about it.
        everyone = state.bin_count.sum(0)
        pooled = state.bin_square.sum(0) / everyone.clamp(min=1)
        prior = torch.where(everyone > 0, torch.full_like(pooled, 5.0), torch.zeros_like(pooled))
        second_moment = (square + prior * pooled) / (count + prior).clamp(min=1e-12)
        neyman = (self.bin_weight * self.n_players * self.inverse_inclusion * second_moment).sqrt()
        total = float(neyman.sum())
        neyman = neyman / total if total > 0 else self.bin_weight
        even = self.material.double() / self.material.sum()
        return (1 - self.explore - self.uniform) * neyman + self.explore * even + self.uniform * self.bin_weight

    # ----------------------------------------------------------------------------------------------- steps
    def step(self, active: Tensor, into: SampleState, *, evals_left: int | None, deadline: float | None) -> int:
        if self._pilot_left > 0:
            self._pilot_left -= 1
            return self._pilot(into, evals_left, deadline)
        players = torch.nonzero(active).squeeze(1)
        self._track(players, into)
        q = self.proposal(players)
        # Many active players are split into groups with a coalition each, so that every bin of positions gets
        # many independent coalitions: the players of one coalition see the same event or miss it together.
        # Rounds small enough to track pairs keep everyone at one coalition (their differences share noise).
        size = len(players) if len(players) <= max(self.group_size, self.n_slots) else self.group_size
        groups = players[torch.randperm(len(players), generator=self.generator)].split(size)
        evaluated = 0
        for group in groups:
            left = None if evals_left is None else evals_left - evaluated
            if left is not None and left < 2:
                break  # a marginal needs two coalitions
            if left is not None and 1 + len(group) > left:
                # Not enough left for the whole group: a random subset of it (chosen before anyone's inclusion
                # is known, so the samples stay unbiased).
                group = group[: left - 1]
            coalitions = max(1, math.ceil(self.batch_size / (1 + len(group))))
            evaluated += self._round(group.sort().values, coalitions, q, into, left, deadline)
            if deadline is not None and time.perf_counter() >= deadline:
                break
        return evaluated

    def _track(self, players: Tensor, into: SampleState) -> None:
        """Give free pair slots to the untracked players of a round small enough to track (same on all ranks)."""
        slots = self.state.pair_slot
        if not self.n_slots or len(players) > self.n_slots:
            return
        new = players[slots[players] < 0]
        start = int((slots >= 0).sum())
        new = new[: self.n_slots - start]
        if len(new):
            slots[new] = torch.arange(start, start + len(new))
            into.pair_slot[new] = slots[new]

    def _pilot(self, into: SampleState, evals_left: int | None, deadline: float | None) -> int:
        first = self._reverse_next is None and self._pilot_left == self.pilot_scans - 1
        if self._reverse_next is not None:
            (order, example), self._reverse_next = self._reverse_next, None
        else:
            order = torch.randperm(self.n_players, generator=self.generator)
            example = self._draw_examples(1)[0] if self.per_example else -1
            self._reverse_next = (order.flip(0), example)
        everyone = torch.ones(self.n_players, dtype=torch.bool)
        evaluated = 0
        if self.per_example:
            # A scan on one example (N rows); its u_e values are no game values, so the value scale comes from
            # a few coalitions of the first scan scored on the whole set instead.
            if first:
                evaluated += self._see_scan_values(order, into, evals_left)
                evals_left = None if evals_left is None else evals_left - evaluated
            index = int(example)
            game = _OneExample(self.game, int(self.examples[index]))
            v_full, v_empty = float(self.example_full[index]), float(self.example_empty[index])
        else:
            game, v_full, v_empty = self.game, self.v_full, self.v_empty
        players, marginals, scanned, values = removal_scan(
            game, order, everyone, v_full=v_full, v_empty=v_empty, truncation=None,
            batch_size=self.batch_size, evals_left=evals_left, deadline=deadline,
        )
        evaluated += scanned
        if self.per_example:
            marginals = marginals * self.example_scale * float(self.example_sign[index])
        else:
            into.see_values(values)
        rank = torch.empty(self.n_players, dtype=torch.long)
        rank[order] = torch.arange(self.n_players)
        into.see_marginals(marginals)
        if self.semivalue.is_shapley:
            into.players.update(players, marginals)  # uniform position, π = 1: weight 1
            # A uniform position looks into bin b as a draw from it with probability Z_b / N would.
            into.bin_exposure[players] += self.inverse_inclusion / self.n_players
        # Another semivalue weighs positions unevenly: a scan's marginals would need weights N·ω(p), up to ~N/8 for
        # Beta(1,16), which would widen every later pair interval; they only shape the proposal (bin moments below).
        bins = self.bin_of[rank[players]]
        into.bin_square.index_put_((players, bins), marginals**2, accumulate=True)
        into.bin_count.index_put_((players, bins), torch.ones_like(marginals), accumulate=True)
        return evaluated

    def _draw_examples(self, count: int) -> Tensor:
        """Indices into ``self.examples``, drawn with probability |w_e| / W."""
        return torch.multinomial(self.example_probs, count, replacement=True, generator=self.generator)

    def _see_scan_values(self, order: Tensor, into: SampleState, rows_left: int | None, points: int = 8) -> int:
        """Score ``points`` coalitions evenly along a scan on the whole evaluation set (per-example mode), so the
        value scale sees where the game dips between N and ∅; returns the rows used."""
        cost = points * len(self.examples)
        if rows_left is not None and cost > rows_left // 2:
            return 0
        rank = torch.empty(self.n_players, dtype=torch.long)
        rank[order] = torch.arange(self.n_players)
        cuts = torch.linspace(0, self.n_players, points + 2)[1:-1].round().long()
        present = rank.unsqueeze(0) >= cuts.unsqueeze(1)  # (points, N)
        e = len(self.examples)
        u = self.game.example_values(present.repeat_interleave(e, dim=0), self.examples.repeat(points))
        into.see_values(self.example_offset + (u.reshape(points, e) * self.example_weights).sum(dim=1))
        return cost

    def exposure(self) -> Tensor:
        """Per player, min_b N · (Σ over its samples of q_b) / Z_b: its samples counted by how much they looked into
        the least explored bin (a uniform position counts 1), for the rare-event floor."""
        ratio = self.n_players * self.state.bin_exposure / self.inverse_inclusion.unsqueeze(0)
        ratio = torch.where(self.inverse_inclusion > 0, ratio, torch.full_like(ratio, math.inf))  # weightless bins
        return ratio.min(dim=1).values

    def max_weight(self, q: Tensor) -> float:
        """The largest importance weight a sample could carry under the proposal ``q``: max_b Z_b / (N q_b)."""
        weight = self.inverse_inclusion / (self.n_players * q.clamp(min=1e-300))
        return float(torch.where(self.inverse_inclusion > 0, weight, torch.zeros_like(weight)).max())

    def _round(
        self, players: Tensor, coalitions: int, q: Tensor, into: SampleState, evals_left: int | None,
        deadline: float | None,
    ) -> int:
        """Draw ``coalitions`` positions (bins from ``q``) and coalitions; evaluate each with every player flipped;
        record the samples."""
        n, g = self.n_players, self.generator
        bins = torch.multinomial(q, coalitions, replacement=True, generator=g)
        examples = self._draw_examples(coalitions) if self.per_example else None
        # Inside a bin, positions ∝ ω/π so that the samples a player receives follow the semivalue over the bin.
        weights = torch.where(self.bin_of.unsqueeze(0) == bins.unsqueeze(1), self.draw_weight, 0.0)
        positions = torch.multinomial(weights, 1, generator=g).squeeze(1)
        sizes = n - 1 - positions
        removal = self.removal[positions]
        members = torch.rand(coalitions, n, generator=g).argsort(dim=1)  # random orders
        rank = torch.empty_like(members)
        rank.scatter_(1, members, torch.arange(n).expand(coalitions, n))
        # Removal form: C = the first size+1 players of the order; addition form: S = the first size players.
        bases = rank < torch.where(removal, sizes + 1, sizes).unsqueeze(1)
        # A player is sampled at a coalition when it is in C (removal) or outside S (addition).
        flipped = bases[:, players] == removal.unsqueeze(1)  # (coalitions, active)
        cost = 1 + flipped.sum(dim=1)
        if evals_left is not None:
            fits = cost.cumsum(0) <= evals_left
            coalitions = max(1, int(fits.sum()))
            bases, flipped, cost, bins, removal = (t[:coalitions] for t in (bases, flipped, cost, bins, removal))
            if examples is not None:
                examples = examples[:coalitions]
        # Rows: each base, then the base with one flipped player per sampled player, coalition by coalition.
        rows_coalition = torch.repeat_interleave(torch.arange(coalitions), cost)
        which, slot = torch.nonzero(flipped, as_tuple=True)
        flips = torch.full((int(cost.sum()),), -1, dtype=torch.long)
        starts = torch.cumsum(cost, 0) - cost
        order_in = torch.cumsum(flipped.long(), dim=1) - 1  # index of each flipped player within its coalition
        flips[starts[which] + 1 + order_in[which, slot]] = players[slot]
        values = torch.full((len(flips),), float("nan"), dtype=torch.float64)
        evaluated = 0
        for chunk in torch.arange(len(flips)).split(self.batch_size):
            present = bases[rows_coalition[chunk]].clone()
            flip = flips[chunk]
            rows = torch.nonzero(flip >= 0).squeeze(1)
            present[rows, flip[rows]] ^= True
            if examples is None:
                values[chunk] = self.game(present)
            else:  # every row its own (coalition, example) pair
                values[chunk] = self.game.example_values(present, self.examples[examples[rows_coalition[chunk]]])
            evaluated += len(chunk)
            if deadline is not None and time.perf_counter() >= deadline:
                break
        done = ~torch.isnan(values)
        missing = torch.zeros(coalitions, dtype=torch.long).index_add_(0, rows_coalition, (~done).long())
        complete = missing == 0  # a deadline may stop a round inside a coalition: drop that one
        sign = torch.where(removal, 1.0, -1.0).double()
        weight = self.inverse_inclusion[bins] / (n * q[bins])  # Z_b / (N q_b): the same for a whole bin
        marginal = torch.zeros(coalitions, len(players), dtype=torch.float64)
        flip_rows = starts[which] + 1 + order_in[which, slot]
        marginal[which, slot] = sign[which] * (values[starts[which]] - values[flip_rows])
        if examples is not None:  # W · sign(w_e): the example's share of the game, drawn with probability |w_e| / W
            marginal *= (self.example_scale * self.example_sign[examples]).unsqueeze(1)
        into.see_marginals(marginal[complete].reshape(-1), self.max_weight(q))
        samples = (marginal * weight.unsqueeze(1))[complete]
        if len(samples):
            into.players.merge(RunningStats.of_samples(players, samples, n))
            into.bin_exposure[players] += len(samples) * q
            if self.n_slots:
                slots = self.state.pair_slot[players]
                tracked = slots >= 0
                into.add_pairs(slots[tracked], samples[:, tracked])
            keep = complete[which]
            into.bin_square.index_put_(
                (players[slot[keep]], bins[which[keep]]), marginal[which[keep], slot[keep]] ** 2, accumulate=True
            )
            into.bin_count.index_put_(
                (players[slot[keep]], bins[which[keep]]), torch.ones(int(keep.sum()), dtype=torch.float64),
                accumulate=True,
            )
        if examples is None:
            into.see_values(values[done])
        return evaluated


class _OneExample:
    """The game restricted to one example: u_e of each coalition (a removal scan on one evaluation row)."""

    def __init__(self, game: object, example: int) -> None:
        self.game = game
        self.example = example
        self.n_players = game.n_players  # type: ignore[attr-defined]

    def __call__(self, present: Tensor) -> Tensor:
        return self.game.example_values(  # type: ignore[attr-defined]
            present, torch.full((present.shape[0],), self.example, dtype=torch.long)
        )
