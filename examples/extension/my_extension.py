"""Extending nsl from outside the package: a game and an estimator, each one class or function plus one line.

``import my_extension`` registers both; ``conf/experiment/my_extension.yaml`` chooses them for ``nsl-train``:

    PYTHONPATH=examples/extension nsl-train --config-dir examples/extension/conf experiment=my_extension

The game is played by the NeuronShapley callback like the built-in ones (name, options, culprits, DDP sharing
all come from the class), and the estimator is called like the built-in ones (``top_k``, ``tail``, ``seed``,
``names``, and whatever of the budget and resume arguments it declares).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nsl import ESTIMATORS, GAMES, Game, ModelGame, ShapleyResult


@GAMES.register("confidence")
class ConfidenceGame(ModelGame):
    """Value of a coalition = the model's mean softmax probability of the true class (a smooth accuracy)."""

    negative_culprits = True  # filters with negative values lower the confidence: they are the culprits
    default_tail = "top"

    def score(self, logits: Tensor) -> Tensor:  # (K, B, C) -> (K,)
        probs = logits.float().softmax(dim=-1)
        return probs.gather(-1, self.targets.expand(len(logits), -1).unsqueeze(-1)).squeeze(-1).mean(dim=1)


@ESTIMATORS.register("leave_one_out")
def leave_one_out(
    game: Game, top_k: int | None = None, *, tail: str = "top", seed: int = 0, names: list[str] | None = None
) -> ShapleyResult:
    """Each player's drop in value when it alone is removed: N + 1 coalitions, in one call to the game."""
    n = game.n_players
    present = torch.ones(n + 1, n, dtype=torch.bool)
    present[1:] &= ~torch.eye(n, dtype=torch.bool)
    values = torch.as_tensor(game(present)).double()
    drops = values[0] - values[1:]
    return ShapleyResult(
        values=drops,
        stderr=torch.zeros(n, dtype=torch.float64),
        counts=torch.ones(n, dtype=torch.int64),
        n_evals=n + 1,
        converged=True,
        k=top_k if top_k is not None else min(10, n - 1),
        names=names,
        method="leave_one_out",
        full_value=float(values[0]),
    )
