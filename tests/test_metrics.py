"""Measures of an estimate against exact values: ε-correctness of a top-k, ε-precision, normalised error."""

from __future__ import annotations

import pytest
import torch

from nsl.shapley.metrics import eps_correct, eps_precision, normalized_squared_error


def test_eps_correct_hand_made() -> None:
    exact = torch.tensor([5.0, 4.0, 3.0, 2.75, 1.0, 0.0])
    # a tie within ε: returning player 3 (2.75) instead of player 2 (3.0) is ε-correct for ε ≥ 0.25
    swapped = torch.tensor([5.0, 4.0, 2.0, 3.0, 1.0, 0.0])
    assert eps_correct(swapped, exact, 3, 0.25)
    assert not eps_correct(swapped, exact, 3, 0.125)
    # a wrong player just outside ε: player 4 (1.0) instead of player 2 (3.0), 2.0 below the k-th value
    wrong = torch.tensor([5.0, 4.0, 0.5, 0.625, 3.5, 0.0])
    assert not eps_correct(wrong, exact, 3, 1.875)
    assert eps_correct(wrong, exact, 3, 2.0)
    # missing the best player is wrong even when every returned one is within ε of the k-th value
    best = torch.tensor([10.0, 4.0, 3.75, 0.0])
    assert not eps_correct(torch.tensor([0.0, 4.0, 3.75, 0.0]), best, 2, 0.25)
    assert eps_correct(torch.tensor([0.0, 4.0, 3.75, 0.0]), best, 2, 6.0)
    # ties in the values go to the lower index
    assert eps_correct(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), exact, 2, 0.0)
    assert not eps_correct(torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]), exact, 2, 0.0)
    # bottom tail: the two lowest are players 5 and 4
    assert eps_correct(exact, exact, 2, 0.0, tail="bottom")
    low_wrong = torch.tensor([5.0, 4.0, 3.0, -1.0, 1.0, 0.0])  # returns players 3 (2.75) and 5; k-th lowest is 1.0
    assert not eps_correct(low_wrong, exact, 2, 1.5, tail="bottom")
    assert eps_correct(low_wrong, exact, 2, 1.75, tail="bottom")
    assert eps_correct(low_wrong, exact, 2, 0.0, tail="top")
    assert not eps_correct(low_wrong, exact, 2, 0.0, tail="both")
    assert eps_correct(exact, exact, 2, 0.0, tail="both")
    with pytest.raises(ValueError, match="tail"):
        eps_correct(exact, exact, 2, 0.0, tail="middle")


def test_normalized_squared_error() -> None:
    exact = torch.tensor([3.0, 4.0])
    assert normalized_squared_error(torch.tensor([3.0, 2.0]), exact) == pytest.approx(4 / 25)
    assert normalized_squared_error(exact, exact) == 0.0
    with pytest.raises(ValueError, match="undefined"):
        normalized_squared_error(exact, torch.zeros(2))


def test_eps_precision_counts_the_returned_players_within_eps() -> None:
    exact = torch.tensor([5.0, 4.0, 3.0, 2.75, 1.0, 0.0])
    assert eps_precision(exact, exact, 3, 0.0) == 1.0
    wrong = torch.tensor([5.0, 4.0, 0.5, 0.625, 3.5, 0.0])  # returns 0, 1 and player 4 (1.0, 2.0 below the 3rd)
    assert eps_precision(wrong, exact, 3, 1.0) == pytest.approx(2 / 3)
    assert eps_precision(wrong, exact, 3, 2.0) == 1.0
