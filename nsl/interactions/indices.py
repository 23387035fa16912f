"""Pairwise Shapley interaction index among chosen players: exact from dividends, or sampled.

``I_ij = Σ_{T ⊆ N∖{i,j}} |T|!(n−|T|−2)!/(n−1)! · [v(T∪ij) − v(T∪i) − v(T∪j) + v(T)]
       = Σ_{S ⊇ {i,j}} I(S)/(|S|−1)``    (Grabisch 1997).

Positive: i and j do more together than apart (synergy, e.g. two filters that only matter as a pair);
negative: they are redundant (either one suffices).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.games.counting import CountingGame
from nsl.interactions.harsanyi import check_interaction_game, harsanyi, pairwise_from_dividends
from nsl.interactions.subgame import check_players, game_names
from nsl.shapley._common import check_positive_int

MAX_EXACT_PAIRWISE = 16
METHODS = ("auto", "exact", "sampled")


@dataclass
class PairwiseInteractions:
    """Shapley interaction indices among ``players`` of a game.

    ``matrix[a, b]`` is the index of the pair (players[a], players[b]) (symmetric); the diagonal holds the
    players' Shapley values. ``stderr`` is zero for exact results.
    """

    matrix: Tensor
    stderr: Tensor
    players: list[int]
    names: list[str]
    method: str
    n_evals: int
    n_samples: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def off_diagonal(self) -> Tensor:
        """The matrix with its diagonal (Shapley values) set to zero."""
        return self.matrix - torch.diag(torch.diagonal(self.matrix))

    def strongest(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The ``k`` pairs of largest |index|, as (name, name, index)."""
        m = self.matrix
        rows, cols = torch.triu_indices(len(m), len(m), offset=1)
        vals = m[rows, cols]
        order = torch.argsort(vals.abs(), descending=True)[:k]
        return [(self.names[int(rows[o])], self.names[int(cols[o])], float(vals[o])) for o in order]

    def format(self, digits: int = 4) -> str:
        """The matrix as a plain-text table with player names (for printing and logs)."""
        width = max(digits + 4, *(len(x) for x in self.names)) + 1
        lines = [" " * width + "".join(f"{x:>{width}}" for x in self.names)]
        for name, row in zip(self.names, self.matrix.tolist(), strict=True):
            lines.append(f"{name:>{width}}" + "".join(f"{v:>{width}.{digits}f}" for v in row))
        return "\n".join(lines)

    def plot(self, **kwargs):
        """Heatmap of the matrix (see :func:`nsl.interactions.plot_interactions`)."""
        from nsl.interactions.plot import plot_interactions

        return plot_interactions(self.matrix, self.names, **kwargs)


def _pair_coalitions(perm_pos: Tensor, size: int, i: Tensor, j: Tensor) -> Tensor:
    """T for each pair: the first ``size`` players of a random order once i and j are taken out, (P, n)."""
    pos = perm_pos.unsqueeze(0)  # (1, n)
    pi, pj = perm_pos[i].unsqueeze(1), perm_pos[j].unsqueeze(1)  # (P, 1)
    rank = pos - (pi < pos).long() - (pj < pos).long()  # rank among the players other than i and j
    members = rank < size
    rows = torch.arange(len(i))
    members[rows, i] = False
    members[rows, j] = False
    return members


def _sampled(
    game: CountingGame, players: list[int], n_samples: int, seed: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Monte Carlo estimate of the index for every pair (and φ on the diagonal), with standard errors."""
    n = game.n_players
    k = len(players)
    idx = torch.tensor(players, dtype=torch.long)
    ii, jj = torch.triu_indices(k, k, offset=1)
    pi, pj = idx[ii], idx[jj]
    gen = torch.Generator().manual_seed(seed)
    n_pairs = len(pi)
    pair_sum = torch.zeros(n_pairs, dtype=torch.float64)
    pair_sq = torch.zeros(n_pairs, dtype=torch.float64)
    one_sum = torch.zeros(k, dtype=torch.float64)
    one_sq = torch.zeros(k, dtype=torch.float64)
    rows = torch.arange(max(n_pairs, k))
    per_sample = 4 * n_pairs + 2 * k
    samples_per_call = max(1, batch_size // per_sample)
    done = 0
    while done < n_samples:
        m = min(samples_per_call, n_samples - done)
        blocks = []
        for _ in range(m):
            pos = torch.argsort(torch.randperm(n, generator=gen))  # position of each player in the order
            size = int(torch.randint(0, n - 1, (1,), generator=gen))  # |T| uniform on 0..n-2
            t = _pair_coalitions(pos, size, pi, pj) if n_pairs else torch.zeros(0, n, dtype=torch.bool)
            ti, tj, tij = t.clone(), t.clone(), t.clone()
            ti[rows[:n_pairs], pi] = True
            tj[rows[:n_pairs], pj] = True
            tij[rows[:n_pairs], pi] = True
            tij[rows[:n_pairs], pj] = True
            # singletons: |T| uniform on 0..n-1 among the others, from the same order
            size1 = int(torch.randint(0, n, (1,), generator=gen))
            rank1 = pos.unsqueeze(0) - (pos[idx].unsqueeze(1) < pos.unsqueeze(0)).long()
            s = rank1 < size1
            s[rows[:k], idx] = False
            si = s.clone()
            si[rows[:k], idx] = True
            blocks.append(torch.cat([t, ti, tj, tij, s, si]))
        values = game(torch.cat(blocks)).reshape(m, per_sample)
        p = n_pairs
        delta = values[:, 3 * p : 4 * p] - values[:, p : 2 * p] - values[:, 2 * p : 3 * p] + values[:, :p]
        marg = values[:, 4 * p + k :] - values[:, 4 * p : 4 * p + k]
        pair_sum += delta.sum(0)
        pair_sq += (delta**2).sum(0)
        one_sum += marg.sum(0)
        one_sq += (marg**2).sum(0)
        done += m

    def mean_and_se(total: Tensor, squares: Tensor) -> tuple[Tensor, Tensor]:
        mean = total / n_samples
        var = (squares - n_samples * mean**2).clamp(min=0) / max(n_samples - 1, 1)
        return mean, (var / n_samples).sqrt()

    pair_mean, pair_se = mean_and_se(pair_sum, pair_sq)
    one_mean, one_se = mean_and_se(one_sum, one_sq)
    matrix = torch.diag(one_mean)
    stderr = torch.diag(one_se)
    matrix[ii, jj] = matrix[jj, ii] = pair_mean
    stderr[ii, jj] = stderr[jj, ii] = pair_se
    return matrix, stderr


def pairwise_interactions(
    game: Game,
    players: Sequence[int] | Tensor | None = None,
    *,
    method: str = "auto",
    n_samples: int = 512,
    seed: int = 0,
    batch_size: int = 4096,
    max_exact: int = MAX_EXACT_PAIRWISE,
    names: Sequence[str] | None = None,
) -> PairwiseInteractions:
    """Shapley interaction index of every pair among ``players`` (default: all) of ``game``.

    ``method="exact"`` enumerates all 2ⁿ coalitions of the game and reads the indices off its dividends
    (n ≤ 20; ``"auto"`` picks it for n ≤ ``max_exact``). ``"sampled"`` draws ``n_samples`` coalition sizes and
    random orders (own ``torch.Generator`` seeded by ``seed``) and averages the pair's second difference;
    it costs ``(4·P + 2·k)·n_samples`` evaluations for k players and P pairs and reports standard errors.
    To measure the interactions among a few players with the others held on, pass ``SubGame(game, players)``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; use one of {METHODS}.")
    n = check_interaction_game(game, max_players=2**62)
    chosen = list(range(n)) if players is None else check_players(players, n)
    check_positive_int("n_samples", n_samples)
    check_positive_int("batch_size", batch_size)
    if method == "sampled" and n < 2:
        raise ValueError("the sampled index needs a game of at least 2 players.")
    all_names = game_names(game, n)
    chosen_names = list(names) if names is not None else [all_names[p] for p in chosen]
    if len(chosen_names) != len(chosen):
        raise ValueError(f"names has {len(chosen_names)} entries for {len(chosen)} players.")
    exact = method == "exact" or (method == "auto" and n <= max_exact)
    start = time.perf_counter()
    counted = CountingGame(game)
    if exact:
        check_interaction_game(game)
        full = pairwise_from_dividends(harsanyi(counted, batch_size))
        idx = torch.tensor(chosen, dtype=torch.long)
        matrix = full[idx][:, idx]
        stderr = torch.zeros_like(matrix)
        samples = 0
    else:
        matrix, stderr = _sampled(counted, chosen, n_samples, seed, batch_size)
        samples = n_samples
    return PairwiseInteractions(
        matrix=matrix,
        stderr=stderr,
        players=chosen,
        names=chosen_names,
        method="exact" if exact else "sampled",
        n_evals=counted.n_evals,
        n_samples=samples,
        seconds=time.perf_counter() - start,
    )
