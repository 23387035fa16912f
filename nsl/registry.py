"""Name → implementation tables: one per extension point (games, estimators, repairs, baseline scores).

A registry is what the callback, the Hydra configs and the benchmarks select from, the way Lightning's
``ModelPruning`` keeps one name → function table. Extending nsl is one file, one registration, one YAML:

    >>> from nsl.registry import Registry
    >>> colours = Registry("colour")
    >>> @colours.register("red")
    ... def red() -> str:
    ...     return "#f00"
    >>> colours["red"]()
    '#f00'
    >>> colours["blue"]
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'blue'; registered: ['red'].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named implementations of one kind; lookups of unknown names list what is registered.

    Args:
        kind: what the entries are, for error messages ("game", "estimator", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: None = None, *, override: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, override: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, override: bool = False) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` (as a decorator when ``obj`` is omitted); returns ``obj``.

        A name can be registered once; ``override=True`` replaces an entry on purpose.
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string without '/'.")

        def add(entry: T) -> T:
            if name in self._entries and not override and self._entries[name] is not entry:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); "
                    "pass override=True to replace it."
                )
            self._entries[name] = entry
            return entry

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (for tests and plugins that clean up after themselves)."""
        return self._entries.pop(self._check(name))

    def _check(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}.")
        return name

    def __getitem__(self, name: str) -> T:
        return self._entries[self._check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
