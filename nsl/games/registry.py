"""The game registry: every game the callback and ``nsl-train`` can play, by name.

An entry is a :class:`~nsl.games.base.ModelGame` subclass; everything specific to it (which sign marks a
culprit, the tail to resolve, the data it needs, how ranks share it under DDP, its default result name) is
declared on the class, so adding a game is one file, one ``@GAMES.register("name")`` and one YAML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nsl.registry import Registry

if TYPE_CHECKING:
    from nsl.games.base import ModelGame

GAMES: Registry[type[ModelGame]] = Registry("game")
