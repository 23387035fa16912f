"""The game protocol and the machinery shared by games played by a network's filters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from nsl.players import FilterPlayers, preserve_mode
from nsl.validation import check_int

Share = Callable[[Any], Any]  # under DDP: an object -> rank 0's copy of it (a broadcast)
MAX_INPUT_VALUES = 1 << 22  # bound on K·B·(values per input) per pass: ~7 coalitions of 2 Inception images
# The block-boundary prefix cache holds one activation per evaluation example for the whole game's life; a
# candidate module whose cached input would exceed this is skipped (a deeper or shallower one may still fit),
# so the cache never costs more memory than about one large evaluation batch.
MAX_PREFIX_BYTES = 1 << 30
VERIFY_ROWS = 4  # rows of the fixed random mask each prefix candidate is checked on against plain evaluation


class _StopForward(Exception):
    """Raised by the capture hook once the prefix output is taken: the rest of the forward pass is not needed."""


@runtime_checkable
class Game(Protocol):
    """A cooperative game: ``n_players`` and the value of each coalition in a (K, N) bool matrix."""

    n_players: int

    def __call__(self, present: Tensor) -> Tensor:  # (K, N) bool -> (K,) float
        ...


@runtime_checkable
class ExampleGame(Game, Protocol):
    """A game whose value decomposes over E examples: ``v(S) = example_offset + Σ_e w_e · u_e(S)``.

    ``example_weights`` (E,) holds the signed weights w_e (float64, CPU); ``example_values(present, examples)``
    scores row r's coalition ``present[r]`` on example ``examples[r]`` alone, giving u_e(S) for (R,) pairs. By
    linearity φ_i(v) = Σ_e w_e φ_i(u_e), so an estimator may sample (coalition, example) pairs: one model row each.
    """

    example_weights: Tensor | None
    example_offset: float

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:  # (R, N) bool, (R,) long -> (R,)
        ...


def decomposes(game: object) -> bool:
    """Whether ``game`` declares a decomposition over examples (see :class:`ExampleGame`)."""
    return getattr(game, "example_weights", None) is not None and callable(getattr(game, "example_values", None))


def check_game(game: object) -> int:
    """Validate that ``game`` follows the protocol and return its number of players."""
    n = getattr(game, "n_players", None)
    if not callable(game) or not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(
            f"{type(game).__name__} is not a game: it needs an int attribute n_players and "
            "__call__(present: BoolTensor[K, N]) -> FloatTensor[K]."
        )
    if n < 1:
        raise ValueError(f"the game has n_players={n}; at least 1 player is needed.")
    return n


@dataclass(frozen=True)
class EvalData:
    """A fixed evaluation set: inputs, integer targets and, for games that need them, a group per example."""

    inputs: Tensor
    targets: Tensor
    groups: Tensor | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device | str) -> EvalData:
        groups = None if self.groups is None else self.groups.to(device)
        return EvalData(self.inputs.to(device), self.targets.to(device), groups)

    def has(self, fields: Iterable[str]) -> bool:
        """Whether every named optional field (e.g. ``"groups"``) is present."""
        return all(getattr(self, name) is not None for name in fields)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class ModelGame:
    """Base class of games whose value is a metric of ``model`` with a coalition of ``players`` on.

    Subclasses implement :meth:`score`, a pure function from logits of K coalitions (K, B, C) to K values.
    This class holds the evaluation data on the model's device, checks the inputs at the door, tiles the
    evaluation batch so that ``chunk_size`` coalitions run in one forward pass, and counts evaluations.

    A subclass declares what the callback needs to know about it as class attributes (see the registry,
    :data:`nsl.games.GAMES`): which end of the ranking holds its culprits, which tail an estimator should
    resolve, which optional evaluation data it needs, and whether it measures a defect a repair removes.
    :meth:`from_data` builds it from an :class:`EvalData`; a game that chooses something from the data (a
    class, attack examples) does it in :meth:`data_options` / :meth:`share_with_ranks`, so every DDP rank
    plays the same game.

    Args:
        model: the trained network (left exactly as it was after every call).
        players: the filters that play.
        inputs: evaluation inputs, one fixed batch used for every coalition.
        targets: integer class labels, shape (B,).
        chunk_size: coalitions per forward pass; ``None`` picks as many as fit ``max_rows`` rows.
        max_rows: bound on rows per forward pass (K·B) when ``chunk_size`` is None, to bound memory; about
            a thousand rows keeps a CPU in cache (measured by experiments/benchmarks/throughput.py), raise it on a GPU.
            Large inputs are also capped at 4M input values per pass (activations grow with the image).
        device: where to evaluate; defaults to the model's device.
        share_prefix: skip work that cannot change: the layers below the first layer where a chunk's
            coalitions differ run once for the chunk instead of once per coalition, and the activations below
            the first layer with a removed filter are cached and reused across calls (invalidated when the
            weights change). Checked once per layer against plain tiled evaluation and switched off for layers
            where it does not hold (a skip connection around them); ``False`` always tiles. Per-row evaluation
            (:meth:`example_values`) and full-set evaluation where the layer cache does not hold also cache at a
            block boundary: the input of the first player layer's module or of its nearest ancestor for which
            this is exact (see :attr:`prefix_module`); ``False`` turns that off too.
    """

    #: Culprits are the most negative values (True: the value is good, e.g. accuracy; removing a filter with a
    #: negative value raises it) or the most positive ones (False: the value is harm, e.g. attack success).
    negative_culprits: ClassVar[bool] = True
    #: The tail an estimator resolves by default: "top", "bottom" or "both" (top-k and the culprits).
    default_tail: ClassVar[str] = "both"
    #: Optional fields of :class:`EvalData` the game needs, with what they hold (e.g. ``{"groups": ...}``);
    #: :meth:`from_data` passes them to the constructor after the targets, in this order.
    required_data: ClassVar[Mapping[str, str]] = {}
    #: The game measures a defect (unfairness, adversarial weakness) whose culprits a repair removes by default,
    #: rather than plain performance.
    measures_defect: ClassVar[bool] = False
    #: The constant of the decomposition over examples, v(S) = offset + Σ_e w_e u_e(S) (see :class:`ExampleGame`).
    example_offset: float = 0.0

    @classmethod
    def default_name(cls, kind: str, options: dict[str, Any]) -> str:
        """The result name of a game played under registry name ``kind`` with these options."""
        return kind

    @classmethod
    def from_data(
        cls, model: nn.Module, players: FilterPlayers, data: EvalData, *, seed: int = 0, share: Share | None = None,
        **options: Any,
    ) -> ModelGame:
        """The game on ``data``. ``seed`` seeds any randomness of the game; ``share`` (under DDP: broadcast from
        rank 0) makes every rank play the same game when the game chooses something from the data."""
        for name, what in cls.required_data.items():
            if getattr(data, name) is None:
                raise ValueError(
                    f"{cls.__name__} needs {name} ({what}) in its evaluation data: give evaluation batches as "
                    f"(inputs, targets, {name}), or a datamodule with a `val_{name}` tensor, or "
                    f"data=(x, y, {name})."
                )
        extra = [getattr(data, name) for name in cls.required_data]
        options = cls.data_options(model, data, dict(options), seed=seed, share=share)
        game = cls(model, players, data.inputs, data.targets, *extra, **options)
        if share is not None:
            game.share_with_ranks(share)
        return game

    @classmethod
    def data_options(
        cls, model: nn.Module, data: EvalData, options: dict[str, Any], *, seed: int, share: Share | None
    ) -> dict[str, Any]:
        """The constructor options for ``data``: ``options`` completed with what the game chooses from it."""
        return options

    @classmethod
    def unsupported(cls, data: EvalData, options: Mapping[str, Any]) -> str | None:
        """Why ``data`` cannot support this game with these options (``None`` when it can): checked before
        training, so that an optional game is skipped and a required one fails with this reason."""
        missing = [f"{name} ({what})" for name, what in cls.required_data.items() if getattr(data, name) is None]
        if missing:
            return (
                f"the evaluation data has no {', '.join(missing)}: give evaluation batches with them, e.g. "
                f"(inputs, targets, {', '.join(cls.required_data)}), or a datamodule with "
                f"`val_{next(iter(cls.required_data))}`, or NeuronShapley(data=(inputs, targets, groups))"
            )
        return None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options of the game a repair measures before and after itself, from the analysed game's options
        (the same game by default; a game whose analysed form fixes something the repair may change says so)."""
        return dict(options)

    def share_with_ranks(self, share: Share) -> None:
        """Under DDP, replace what this rank computed differently (e.g. attack examples) by rank 0's."""

    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        *,
        chunk_size: int | None = None,
        max_rows: int = 1024,
        device: torch.device | str | None = None,
        share_prefix: bool = True,
    ) -> None:
        if not isinstance(players, FilterPlayers):
            raise TypeError(f"players must be a FilterPlayers, got {type(players).__name__}.")
        if players.model is not model:
            raise ValueError("players were built for a different model than the one given to the game.")
        if not isinstance(inputs, Tensor) or inputs.dim() < 1 or len(inputs) == 0:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"the evaluation data is empty or not a tensor (inputs: {shape}).")
        if not isinstance(targets, Tensor) or targets.shape != (len(inputs),):
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must be a tensor of shape ({len(inputs)},), got {shape}.")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise TypeError(f"targets must hold integer class labels, got dtype {targets.dtype}.")
        check_int("chunk_size", chunk_size, low=1, optional=True)
        check_int("max_rows", max_rows, low=1)
        self.model = model
        self.players = players
        self.n_players = len(players)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.inputs = inputs.detach().to(self.device)
        self.targets = targets.detach().to(self.device, torch.long)
        self.max_rows = max_rows
        self._chunk_size = chunk_size
        self.n_evals = 0
        self.n_rows = 0  # rows through the model: K·B per full-set call, R per per-example call
        self.share_prefix = bool(share_prefix)
        self._verified: dict[tuple[str, int | str], bool] = {}  # ("expand"|"replace", layer) / ("prefix", module)
        self._activations: dict[int, Tensor] = {}  # layer -> its masked module's output with nothing removed
        self._prefix_name: str | None = None  # block-boundary module whose input is cached (see prefix_module)
        self._prefix_chosen = False  # candidates were tried (once per game: the structure does not change)
        self._prefix_cache: Tensor | None = None  # that module's input for every evaluation example
        self._below_input: set[str] = set()  # candidates whose input is the model's input (nothing to cache)
        self._weights_version: tuple[int, ...] | None = None
        logits = self._forward(self.inputs)
        if logits.dim() != 2:
            raise ValueError(f"the model must return logits of shape (B, C); got {tuple(logits.shape)}.")
        if not torch.isfinite(logits).all():
            bad = (~torch.isfinite(logits)).sum().item()
            raise ValueError(f"the model produces NaN or inf on the evaluation data ({bad} non-finite logits).")
        self.num_classes = logits.shape[1]
        lo, hi = int(self.targets.min()), int(self.targets.max())
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"target {bad} is out of range for a model with {self.num_classes} classes "
                f"(targets must lie in [0, {self.num_classes - 1}])."
            )
        if players.needs_calibration:
            players.calibrate(self.inputs)

    @property
    def chunk_size(self) -> int:
        """Coalitions evaluated per forward pass: ``max_rows`` rows, and at most 4M input values (16 MiB)."""
        if self._chunk_size is not None:
            return self._chunk_size
        by_rows = self.max_rows // len(self.inputs)
        by_size = MAX_INPUT_VALUES // max(1, self.inputs.numel())  # large images: activations dominate memory
        return max(1, min(by_rows, by_size))

    @contextlib.contextmanager
    def _evaluation(self) -> Iterator[None]:
        """Eval mode, no autograd; every module's mode is restored afterwards."""
        with preserve_mode(self.model), torch.inference_mode():
            self.model.eval()
            yield

    def _forward(self, x: Tensor) -> Tensor:
        with self._evaluation():
            return self.model(x)

    def score(self, logits: Tensor) -> Tensor:
        """Value of each coalition from its logits, shape (K, B, C) -> (K,)."""
        raise NotImplementedError

    def __call__(self, present: Tensor) -> Tensor:
        """Values of the coalitions in ``present`` ((N,) or (K, N) bool), shape (K,), float64 on CPU."""
        present = self.players.check_present(present)
        values = []
        b = len(self.inputs)
        with self._evaluation():
            self._check_weights()
            for start in range(0, present.shape[0], self.chunk_size):
                chunk = present[start : start + self.chunk_size]
                k = chunk.shape[0]
                logits = self._shared(chunk) if self.share_prefix else None
                if logits is None and self.share_prefix:
                    logits = self._block_shared(chunk)
                if logits is None:
                    logits = self._tiled(chunk)
                values.append(self.score(logits.reshape(k, b, -1)).double().cpu())
                self.n_evals += k
                self.n_rows += k * b
        return torch.cat(values)

    # ----------------------------------------------------------------------------- per-example evaluation
    @property
    def rows_per_eval(self) -> int:
        """Rows one full-set evaluation puts through the model (the evaluation set's size)."""
        return len(self.inputs)

    @property
    def example_weights(self) -> Tensor | None:
        """The signed weight of each example in the game's value (see :class:`ExampleGame`); ``None`` when the
        game does not decompose over examples (then :attr:`why_not_decomposable` says why)."""
        return None

    @property
    def why_not_decomposable(self) -> str:
        """Why the value is not a weighted sum over examples ("" when it is)."""
        return "" if self.example_weights is not None else f"{type(self).__name__} declares no per-example value"

    def example_score(self, logits: Tensor, examples: Tensor) -> Tensor:
        """u_e of each row from its logits: (R, C) logits of examples ``examples`` (R,) -> (R,) values."""
        raise NotImplementedError(f"{type(self).__name__} does not decompose over examples")

    def example_values(self, present: Tensor, examples: Tensor) -> Tensor:
        """u_e(S) for R (coalition, example) pairs: row r plays coalition ``present[r]`` on example
        ``examples[r]``; one forward pass of R rows, each with its own mask. (R,) float64 on the CPU."""
        present = self.players.check_present(present)
        if not isinstance(examples, Tensor) or examples.shape != (present.shape[0],):
            raise ValueError(f"examples must be a tensor of shape ({present.shape[0]},), one index per row.")
        examples = examples.long()
        if len(examples) and (int(examples.min()) < 0 or int(examples.max()) >= len(self.inputs)):
            raise ValueError(f"example indices must lie in [0, {len(self.inputs) - 1}].")
        values = []
        with self._evaluation():
            self._check_weights()
            for start in range(0, len(examples), self.max_rows):
                rows = examples[start : start + self.max_rows]
                mask = present[start : start + self.max_rows]
                logits = self._rows_forward(mask, rows.to(self.device))
                values.append(self.example_score(logits, rows.to(self.device)).double().cpu())
                self.n_rows += len(rows)
        return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)

    def _rows_forward(self, present: Tensor, examples: Tensor) -> Tensor:
        """Logits (R, C) of R rows, row r with coalition ``present[r]`` (per-row masks: K = R coalitions of 1 row).

        Reads the input of :attr:`prefix_module` from its cache where one is verified, so the layers below it
        cost nothing per row; otherwise runs the whole model on the rows' inputs.
        """
        source = self._prefix_source()
        if source is None:
            return self._plain_rows(present, examples)
        return self._prefixed_forward(present, self._prefix_name, source[examples])

    def _plain_rows(self, present: Tensor, examples: Tensor) -> Tensor:
        """Per-row logits from the whole model (the reference every cached path is checked against)."""
        with self.players.mask(present):
            return self.model(self.inputs[examples])

    # ------------------------------------------------------------------------ prefix cache at block boundaries
    @property
    def prefix_module(self) -> str | None:
        """Name of the module whose input per-row evaluation reads from a cache of the whole evaluation set, or
        ``None`` when no candidate is exact (or ``share_prefix=False``). Chosen at the first per-row evaluation
        (reading it before chooses it then): the first player layer's module, then its ancestors, deepest first;
        the first one whose cached evaluation equals plain evaluation on a fixed random mask is kept."""
        if not self._prefix_chosen:
            with self._evaluation():
                self._check_weights()
                self._prefix_source()
        return self._prefix_name

    def _prefix_candidates(self) -> list[str]:
        """The first player layer's module and its ancestors up to, not including, the root; deepest first."""
        if not self.players.layers:
            return []
        parts = self.players.layers[0].name.split(".")
        return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]

    def _prefix_source(self) -> Tensor | None:
        """The cached input of :attr:`prefix_module` for every example (choosing it on first use), or None."""
        if not self.share_prefix:
            return None
        if not self._prefix_chosen:
            self._choose_prefix()
        elif self._prefix_name is not None and self._prefix_cache is None:  # weights changed: take it again
            self._prefix_cache = self._capture_input(self._prefix_name)
            if self._prefix_cache is None:
                self._prefix_name = None
        return self._prefix_cache

    def _choose_prefix(self) -> None:
        """Try each candidate once against plain per-row evaluation; keep the first that matches. An error of the
        model itself propagates and leaves the choice to the next call."""
        self._prefix_name, self._prefix_cache = self._first_exact_prefix()
        self._prefix_chosen = True

    def _first_exact_prefix(self) -> tuple[str | None, Tensor | None]:
        candidates = self._prefix_candidates()
        r = min(VERIFY_ROWS, len(self.inputs))
        gen = torch.Generator().manual_seed(0)
        present = torch.rand(r, self.n_players, generator=gen) > 0.5
        for layer in self.players.layers:  # a removal in every player layer, in every row
            present[torch.arange(r), layer.offset + torch.randint(layer.size, (r,), generator=gen)] = False
        examples = torch.linspace(0, len(self.inputs) - 1, r).long().to(self.device)
        reference = None
        for name in candidates:
            cache = self._capture_input(name)
            if cache is None:
                if name in self._below_input:  # the model's own input: there is no prefix to skip at all
                    break
                continue
            if reference is None:
                reference = self._plain_rows(present, examples).float()
            try:
                logits = self._prefixed_forward(present, name, cache[examples])
                ok = logits.shape == reference.shape
            except Exception:  # plain evaluation of these rows just worked: the substitution is what failed
                ok = False  # (typically a branch around the module met the empty batch fed below it)
            if ok:
                scale = float(reference.abs().max()) + 1.0
                ok = torch.allclose(logits.float(), reference, rtol=1e-4, atol=1e-5 * scale)
            if ok:
                return name, cache
        return None, None

    def _capture_input(self, name: str) -> Tensor | None:
        """Input of module ``name`` for every evaluation example, nothing masked; None where it cannot be cached:
        not one positional tensor with a row per example, larger than ``MAX_PREFIX_BYTES``, or the model's own
        input (then ``name`` is recorded in ``_below_input``: nothing below it to skip)."""
        module = self.model.get_submodule(name)
        taken: list[Tensor] = []

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
                taken.append(args[0])
            raise _StopForward  # the layers above the module are not needed to take its input

        parts: list[Tensor] = []
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for start in range(0, len(self.inputs), self.max_rows):
                x = self.inputs[start : start + self.max_rows]
                taken.clear()
                with contextlib.suppress(_StopForward):
                    self.model(x)
                if len(taken) != 1 or taken[0].dim() == 0 or taken[0].shape[0] != len(x):
                    return None
                if start == 0:
                    if taken[0].untyped_storage().data_ptr() == self.inputs.untyped_storage().data_ptr():
                        self._below_input.add(name)
                        return None
                    if taken[0][:1].nbytes * len(self.inputs) > MAX_PREFIX_BYTES:
                        return None
                parts.append(taken[0].detach().clone())  # the forward might have changed it in place
        finally:
            handle.remove()
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _prefixed_forward(self, present: Tensor, name: str, source: Tensor) -> Tensor:
        """Logits of ``present``'s coalitions with module ``name``'s input replaced by ``source`` (one row per
        row of the result) and an empty batch fed below it, so the layers below cost nothing per row."""
        module = self.model.get_submodule(name)
        calls = 0

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            nonlocal calls
            calls += 1
            if calls > 1:  # a module called twice would read the cache twice: not a prefix
                raise ValueError(f"module {name!r} runs more than once per forward pass; its input is not a prefix")
            return (source,), kwargs

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with self.players.mask(present):
                logits = self.model(self.inputs[:0])
        finally:
            handle.remove()
        if calls != 1:
            raise ValueError(f"module {name!r} did not run in the forward pass; its input is not a prefix")
        return logits

    def _block_shared(self, chunk: Tensor) -> Tensor | None:
        """Full-set logits of K coalitions from the block-boundary cache (tiled K times), or None where there is
        none. Checked once against tiled evaluation before it is trusted."""
        source = self._prefix_source()
        if source is None:
            return None
        key = ("prefix", self._prefix_name)
        if self._verified.get(key) is False:
            return None
        k = chunk.shape[0]
        tiled = source if k == 1 else source.repeat(k, *([1] * (source.dim() - 1)))
        if self._verified.get(key):  # checked: an error now is the model's own, not a failed substitution
            return self._prefixed_forward(chunk, self._prefix_name, tiled)
        try:
            logits = self._prefixed_forward(chunk, self._prefix_name, tiled)
        except Exception:  # not yet checked: blamed on the substitution; a model error recurs in tiled evaluation
            self._verified[key] = False
            return None
        reference = self._tiled(chunk)
        scale = float(reference.abs().max()) + 1.0
        ok = logits.shape == reference.shape and torch.allclose(
            logits.float(), reference.float(), rtol=1e-4, atol=1e-5 * scale
        )
        self._verified[key] = ok
        return logits if ok else reference

    def _tiled(self, chunk: Tensor, capture: tuple[int, dict[int, Tensor]] | None = None) -> Tensor:
        """Logits of K coalitions from the evaluation batch tiled K times (always valid)."""
        k = chunk.shape[0]
        x = self.inputs if k == 1 else self.inputs.repeat(k, *([1] * (self.inputs.dim() - 1)))
        with self.players.mask(chunk, capture=capture):
            return self.model(x)

    def _check_weights(self) -> None:
        """Drop cached activations when any parameter or buffer changed since they were taken."""
        version = tuple(t._version for t in (*self.model.parameters(), *self.model.buffers()))
        if version != self._weights_version:
            self._activations.clear()
            self._prefix_cache = None  # retaken at the next use; the chosen module stays (the structure is the same)
            self._weights_version = version

    def _shared(self, chunk: Tensor) -> Tensor | None:
        """Logits computed with the shared prefix (see ``share_prefix``), or None where it does not apply."""
        k, b = chunk.shape[0], len(self.inputs)
        first = self.players.first_removal(chunk)
        if first is None:
            return None
        split = self.players.first_difference(chunk) if k > 1 else None
        replace_state = self._verified.get(("replace", first))  # True, False or None (not yet checked)
        replace_ok = replace_state is not False
        can_expand = split is not None and self._verified.get(("expand", split)) is not False
        expand_unverified = can_expand and ("expand", split) not in self._verified
        replace_verified = replace_state is True
        # never try two unverified substitutions in one call, so a failure is blamed on the right one
        can_replace = (
            replace_ok and first in self._activations and (k == 1 or can_expand)
            and (replace_verified or not expand_unverified)
        )
        capture = replace_ok and first not in self._activations
        if not (can_expand or can_replace):
            if not capture:
                return None
            logits = self._tiled(chunk, capture=(first, self._activations))
            self._activations[first] = self._activations[first][:b].clone()
            return logits
        kwargs: dict = {}
        checks = []
        if can_expand:
            kwargs["expand_at"] = split
            checks.append(("expand", split))
        if can_replace:
            kwargs["replace"] = (first, self._activations[first])
            checks.append(("replace", first))
        elif capture:
            kwargs["capture"] = (first, self._activations)
        x = self.inputs[:0] if can_replace else self.inputs  # below `first` is cached: feed no rows
        try:
            with self.players.mask(chunk, **kwargs):
                logits = self.model(x)
            ok = logits.shape[0] == k * b
        except (RuntimeError, ValueError):  # a branch around the split met a differently sized batch
            ok, logits = False, None
        unverified = [c for c in checks if c not in self._verified]
        if ok and unverified:
            reference = self._tiled(chunk)
            scale = float(reference.abs().max()) + 1.0
            ok = torch.allclose(logits.float(), reference.float(), rtol=1e-4, atol=1e-5 * scale)
        if not ok:
            if capture:
                self._activations.pop(first, None)
            for c in unverified or checks:
                self._verified[c] = False
            return None
        for c in unverified:
            self._verified[c] = True
        return logits

    def full_value(self) -> float:
        """Value with every filter on."""
        return float(self(torch.ones(self.n_players, dtype=torch.bool))[0])

    def empty_value(self) -> float:
        """Value with every filter off."""
        return float(self(torch.zeros(self.n_players, dtype=torch.bool))[0])
