"""Neuron-importance scores that Neuron Shapley is compared against, on the same players, behind one interface.

Every score is a function returning a float64 tensor of shape (N,) on the CPU, one entry per player of a
:class:`~nsl.players.FilterPlayers`, higher meaning more important:

- ``weight_l1``, ``weight_l2``: norm of each filter's weights (Li et al. 2017), by default as folded into the
  BatchNorm that normalises the filter (the weights that reach the next layer in eval mode);
- ``activation``: mean |activation| of the channel at the mask point over the evaluation data;
- ``taylor``: |mean over the data of gradient × activation| of the channel (Molchanov et al. 2017), i.e. the
  first-order estimate of the loss change when the filter is removed;
- ``leave_one_out``: v(N) − v(N∖{i}) of a game (Occlusion-1), in batched calls to the game;
- ``integrated_gradients``: Integrated Gradients (Captum) over a gate in [0, 1] on every channel, from all
  filters off to all on, attributing the correct-class probability;
- ``random``: a seeded random ranking.

Removed filters are silenced as the players silence them (their ``ablation``): the activation, the Taylor
product and the gates all measure a channel's deviation from the value a removed channel takes (0 by default).
Every function leaves the model exactly as it was: parameters, buffers, hooks, train/eval modes and
``.grad`` are untouched, and the global random number generator is never drawn from.

Every score is registered by name in :data:`BASELINES` with the data it needs, so the benchmarks pick them
by name and a new score is one function plus one registration:

    >>> import torch
    >>> from nsl import FilterPlayers
    >>> from nsl.baselines import BASELINES, baseline_result
    >>> from nsl.models import SmallCNN
    >>> model = SmallCNN(channels=(2, 3, 4)).eval()
    >>> players = FilterPlayers(model)
    >>> BASELINES.names()
    ('weight_l1', 'weight_l2', 'activation', 'taylor', 'leave_one_out', 'integrated_gradients', 'random')
    >>> BASELINES["taylor"].data
    'labelled'
    >>> x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    >>> result = baseline_result("taylor", model, players, x, y, k=3)   # a ShapleyResult: prune, plot, log
    >>> result.values.shape, len(result.top_k)
    (torch.Size([9]), 3)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsl.games.accuracy import AccuracyGame
from nsl.games.base import Game, check_game, model_device
from nsl.players import FilterPlayers, PlayerLayer, preserve_mode
from nsl.registry import Registry
from nsl.shapley import ShapleyResult
from nsl.shapley.exact import leave_one_out_values
from nsl.validation import check_choice, check_int

IG_OUTPUTS = ("prob", "logit", "log_prob")


# ---------------------------------------------------------------------------------------------- helpers


def _check_players(model: nn.Module, players: FilterPlayers) -> None:
    if not isinstance(players, FilterPlayers):
        raise TypeError(f"players must be a FilterPlayers, got {type(players).__name__}.")
    if players.model is not model:
        raise ValueError("players were built for a different model than the one given.")


def _check_data(inputs: Tensor | None, targets: Tensor | None, need_targets: bool, name: str) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() < 1 or len(inputs) == 0:
        raise ValueError(f"{name} needs evaluation inputs (a non-empty tensor), got {type(inputs).__name__}.")
    if need_targets:
        if not isinstance(targets, Tensor) or targets.shape != (len(inputs),):
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"{name} needs targets of shape ({len(inputs)},), got {shape}.")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise TypeError(f"targets must hold integer class labels, got dtype {targets.dtype}.")


def _check_batch_size(batch_size: int) -> None:
    check_int("batch_size", batch_size, low=1)


def _fills(players: FilterPlayers, inputs: Tensor) -> list[Tensor]:
    """Per-layer value a removed channel takes (0 for the default ablation), calibrating ``"mean"`` if needed.

    Fresh copies, so that they are ordinary tensors when made inside the analysis block, even if the caller
    runs under ``torch.inference_mode``.
    """
    if players.needs_calibration:
        players.calibrate(inputs)
    return players.fill_values()


def _channel_view(values: Tensor, out: Tensor, channel_dim: int) -> Tensor:
    """Reshape per-(row, channel) ``values`` (R, C), R = 1 or rows, to broadcast against ``out``."""
    cdim = channel_dim % out.dim()
    shape = [values.shape[0]] + [1] * (out.dim() - 1)
    shape[cdim] = values.shape[-1]
    return values.reshape(shape)


def _per_channel(t: Tensor, channel_dim: int) -> Tensor:
    """Sum ``t`` over every dim but the batch (0) and the channel dim: (B, ..., C, ...) -> (B, C)."""
    cdim = channel_dim % t.dim()
    dims = [d for d in range(1, t.dim()) if d != cdim]
    return t.sum(dim=dims) if dims else t


def _positions(out: Tensor, channel_dim: int) -> int:
    """Entries per channel per row (spatial positions of a feature map, 1 for a Linear output)."""
    return out[0].numel() // out.shape[channel_dim % out.dim()]


@contextlib.contextmanager
def _analysis(model: nn.Module, grad: bool) -> Iterator[None]:
    """Eval mode for the block, every module's mode restored after; autograd on (also under inference mode)."""
    with preserve_mode(model), contextlib.ExitStack() as stack:
        model.eval()
        if grad:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
        else:
            stack.enter_context(torch.no_grad())
        yield


@contextlib.contextmanager
def _hooks(model: nn.Module, players: FilterPlayers, make: Callable[[int, PlayerLayer], Callable]) -> Iterator[None]:
    """Forward hooks ``make(i, layer)`` on each layer's mask point, always removed again."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for i, layer in enumerate(players.layers):
            handles.append(modules[layer.mask_at].register_forward_hook(make(i, layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _split(players: FilterPlayers, per_layer: Sequence[Tensor]) -> Tensor:
    out = torch.cat([t.detach().double().cpu() for t in per_layer])
    if out.shape != (players.n_players,):
        raise RuntimeError(f"expected {players.n_players} scores, got shape {tuple(out.shape)}.")
    return out


# ------------------------------------------------------------------------------------------------ scores


def _weight_norm(model: nn.Module, players: FilterPlayers, p: int, bn_scale: bool) -> Tensor:
    _check_players(model, players)
    modules = dict(model.named_modules())
    per_layer = []
    with torch.no_grad():
        for layer in players.layers:
            weight = modules[layer.name].weight.detach().double()
            norms = torch.linalg.vector_norm(weight.flatten(1), ord=p, dim=1)
            bn = modules[layer.mask_at]
            if bn_scale and layer.mask_at != layer.name:
                gamma = bn.weight.detach().double().abs() if bn.weight is not None else torch.ones_like(norms)
                if bn.running_var is not None:
                    gamma = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
                norms = norms * gamma.to(norms.device)
            per_layer.append(norms)
    return _split(players, per_layer)


def weight_l1(model: nn.Module, players: FilterPlayers, *, bn_scale: bool = True) -> Tensor:
    """L1 norm of each filter's weights (Li et al. 2017's magnitude criterion), shape (N,).

    With ``bn_scale`` (the default) a filter followed by a BatchNorm is scored as folded into it, times
    |γ| / sqrt(running_var + eps): BatchNorm cancels any rescaling of the raw weights, so only the folded norm
    says how strongly the filter reaches the next layer. ``bn_scale=False`` gives the raw norm.
    """
    return _weight_norm(model, players, 1, bn_scale)


def weight_l2(model: nn.Module, players: FilterPlayers, *, bn_scale: bool = True) -> Tensor:
    """L2 norm of each filter's weights, folded into its BatchNorm by default (see :func:`weight_l1`)."""
    return _weight_norm(model, players, 2, bn_scale)


def activation(model: nn.Module, players: FilterPlayers, inputs: Tensor, *, batch_size: int = 256) -> Tensor:
    """Mean |activation| of each channel at its mask point (after the BatchNorm) over ``inputs``, shape (N,).

    The mean runs over images and positions; with a ``"mean"``/``"bn_beta"`` ablation it is the mean distance
    from the value a removed channel takes, so a channel that never deviates from it scores 0.
    """
    _check_players(model, players)
    _check_data(inputs, None, False, "activation")
    _check_batch_size(batch_size)
    device = model_device(model)
    fills = _fills(players, inputs.to(device))
    sums = [torch.zeros(layer.size, dtype=torch.float64, device=device) for layer in players.layers]
    counts = [0] * len(players.layers)

    def make(i: int, layer: PlayerLayer) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
            fill = _channel_view(fills[i].to(out.dtype).unsqueeze(0), out, layer.channel_dim)
            sums[i] += _per_channel((out - fill).abs().double(), layer.channel_dim).sum(0)
            counts[i] += out.shape[0] * _positions(out, layer.channel_dim)

        return hook

    with _analysis(model, grad=False), _hooks(model, players, make):
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size].to(device))
    return _split(players, [s / max(c, 1) for s, c in zip(sums, counts, strict=True)])


def taylor(
    model: nn.Module,
    players: FilterPlayers,
    inputs: Tensor,
    targets: Tensor,
    *,
    per_example: bool = False,
    batch_size: int = 256,
) -> Tensor:
    """First-order Taylor criterion (Molchanov et al. 2017): |mean over the data of gradient × activation|.

    For each channel a, the product ∂L/∂a · a of the cross-entropy loss L is summed over the channel's
    positions — the derivative of L along a gate on the channel, i.e. the first-order estimate of the loss
    change when the filter is removed — then averaged over the images before the absolute value. With
    ``per_example=True`` the absolute value is taken per image before averaging (the paper's mini-batch
    variant, which does not let opposite effects on different images cancel). Gradients are taken with
    ``torch.autograd.grad`` with respect to the channel outputs captured by forward hooks, so no parameter's
    ``.grad`` is touched; works under ``torch.inference_mode`` and on frozen models too.
    """
    _check_players(model, players)
    _check_data(inputs, targets, True, "taylor")
    _check_batch_size(batch_size)
    device = model_device(model)
    fills: list[Tensor] = []
    sums: list[Tensor] = []
    captured: list[list[Tensor]] = [[] for _ in players.layers]

    def make(i: int, _layer: PlayerLayer) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
            captured[i].append(out)

        return hook

    with _analysis(model, grad=True), _hooks(model, players, make):
        fills += _fills(players, inputs.to(device))
        sums += [torch.zeros(layer.size, dtype=torch.float64, device=device) for layer in players.layers]
        for start in range(0, len(inputs), batch_size):
            for seen in captured:
                seen.clear()
            # a fresh (non-inference) leaf that requires grad, so channel outputs are differentiable even when
            # every parameter is frozen; only the channel outputs are differentiated
            x = inputs[start : start + batch_size].to(device).detach().clone().requires_grad_(True)
            y = targets[start : start + batch_size].to(device, torch.long).clone()
            loss = F.cross_entropy(model(x), y, reduction="sum")
            flat = [t for seen in captured for t in seen]
            grads = iter(torch.autograd.grad(loss, flat, allow_unused=True))
            for i, layer in enumerate(players.layers):
                for out in captured[i]:
                    grad = next(grads)
                    if grad is None:  # this channel output does not reach the loss
                        continue
                    fill = _channel_view(fills[i].to(out.dtype).unsqueeze(0), out, layer.channel_dim)
                    per_image = _per_channel((grad * (out.detach() - fill)).double(), layer.channel_dim)  # (B, C)
                    sums[i] += per_image.abs().sum(0) if per_example else per_image.sum(0)
            del loss, flat, grads
        for seen in captured:
            seen.clear()
    return _split(players, [s.abs() / len(inputs) for s in sums])


def game_leave_one_out(game: Game, batch_size: int | None = None) -> Tensor:
    """v(N) − v(N∖{i}) for each player i of any game, in N + 1 coalitions evaluated in batched calls."""
    check_game(game)
    return leave_one_out_values(game, batch_size)[0]


def leave_one_out(
    model: nn.Module,
    players: FilterPlayers,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    *,
    game: Game | None = None,
    metric: str = "accuracy",
    **game_kwargs: Any,
) -> Tensor:
    """Value drop when the filter alone is removed, v(N) − v(N∖{i}), shape (N,).

    Uses ``game`` when given (any game on these players: class, fairness, adversarial ...), otherwise an
    :class:`~nsl.games.AccuracyGame` on ``inputs``/``targets`` with ``metric`` and ``game_kwargs``.
    """
    _check_players(model, players)
    if game is None:
        _check_data(inputs, targets, True, "leave_one_out")
        game = AccuracyGame(model, players, inputs, targets, metric=metric, **game_kwargs)
    if check_game(game) != players.n_players:
        raise ValueError(f"the game has {game.n_players} players, the players {players.n_players}.")
    return game_leave_one_out(game)


def integrated_gradients(
    model: nn.Module,
    players: FilterPlayers,
    inputs: Tensor,
    targets: Tensor,
    *,
    steps: int = 32,
    output: str = "prob",
    method: str = "gausslegendre",
    batch_size: int = 64,
) -> Tensor:
    """Integrated Gradients over channel gates, averaged over the data, shape (N,).

    Every player's channel is multiplied by a gate g_i in [0, 1] with a forward hook at its mask point
    (``fill + g·(a − fill)`` for other ablations); Captum's ``IntegratedGradients`` integrates the gradient of
    the correct-class ``output`` (``"prob"``, ``"logit"`` or ``"log_prob"``) along the straight path from
    g = 0 (every filter off, the game's empty coalition) to g = 1 (the trained model), jointly over all layers.
    The scores sum to about mean output(all on) − mean output(all off) (completeness; exact up to the
    ``steps``-point quadrature). The gate is per image, so averaging per-image attributions is the IG of
    the mean output over a shared gate.
    """
    from captum.attr import IntegratedGradients  # optional dependency, imported when used

    _check_players(model, players)
    _check_data(inputs, targets, True, "integrated_gradients")
    _check_batch_size(batch_size)
    check_choice("output", output, IG_OUTPUTS)
    check_int("steps", steps, low=1)
    device = model_device(model)
    fills: list[Tensor] = []
    state: dict[str, Tensor] = {}

    def make(i: int, layer: PlayerLayer) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
            gates = state["gates"][:, layer.offset : layer.offset + layer.size].to(out.dtype)
            if gates.shape[0] != out.shape[0]:
                raise RuntimeError(f"{gates.shape[0]} gate rows for a batch of {out.shape[0]} rows.")
            fill = _channel_view(fills[i].to(out.dtype).unsqueeze(0), out, layer.channel_dim)
            return fill + _channel_view(gates, out, layer.channel_dim) * (out - fill)

        return hook

    def forward(gates: Tensor, x: Tensor) -> Tensor:
        state["gates"] = gates
        logits = model(x)
        if output == "prob":
            return logits.softmax(-1)
        return logits.log_softmax(-1) if output == "log_prob" else logits

    ig = IntegratedGradients(forward)
    dtype = next(model.parameters(), torch.empty(0)).dtype
    with _analysis(model, grad=True), _hooks(model, players, make):
        fills += _fills(players, inputs.to(device))
        total = torch.zeros(players.n_players, dtype=torch.float64, device=device)
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].to(device).detach().clone()
            y = targets[start : start + batch_size].to(device, torch.long).detach().clone()
            ones = torch.ones(len(x), players.n_players, dtype=dtype, device=device)
            attr = ig.attribute(
                ones, baselines=torch.zeros_like(ones), target=y, additional_forward_args=(x,), n_steps=steps,
                method=method,
            )
            total += attr.detach().double().sum(0)
        state.clear()
    return total.cpu() / len(inputs)


def random_scores(players: FilterPlayers | int, *, seed: int = 0) -> Tensor:
    """Uniform random scores from a generator of their own seeded with ``seed`` (the global RNG is untouched)."""
    n = players if isinstance(players, int) else len(players)
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -------------------------------------------------------------------------------------------- one door


@dataclass(frozen=True)
class Baseline:
    """A registered importance score: its function and the evaluation data it needs besides model and players.

    ``data`` is ``"none"`` (weights only: ``score(model, players)``), ``"inputs"`` (``score(model, players,
    inputs)``), ``"labelled"`` (``score(model, players, inputs, targets)``) or ``"game"`` (``score(model,
    players, inputs, targets, game=...)``: a game, or labelled data to build the accuracy game from).
    ``coalitions(n)`` is how many game coalitions it evaluates for n players.
    """

    score: Callable[..., Tensor]
    data: str = "labelled"
    coalitions: Callable[[int], int] = lambda n: 0


BASELINES: Registry[Baseline] = Registry("baseline score")
BASELINES.register("weight_l1", Baseline(weight_l1, "none"))
BASELINES.register("weight_l2", Baseline(weight_l2, "none"))
BASELINES.register("activation", Baseline(activation, "inputs"))
BASELINES.register("taylor", Baseline(taylor))
BASELINES.register("leave_one_out", Baseline(leave_one_out, "game", coalitions=lambda n: n + 1))
BASELINES.register("integrated_gradients", Baseline(integrated_gradients))
BASELINES.register("random", Baseline(lambda model, players, **kw: random_scores(players, **kw), "none"))


def baseline_scores(
    name: str,
    model: nn.Module,
    players: FilterPlayers,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """The importance score ``name`` (registered in :data:`BASELINES`) of every player, float64 (N,), higher =
    more important; ``kwargs`` go to that score's function (e.g. ``seed`` for ``"random"``, ``game`` for
    ``"leave_one_out"``, ``steps`` for ``"integrated_gradients"``, ``bn_scale`` for the weight norms)."""
    entry = BASELINES[name]
    _check_players(model, players)
    if entry.data == "none":
        return entry.score(model, players, **kwargs)
    if entry.data == "game":  # checks its own data: a game, or labelled data for the accuracy game
        return entry.score(model, players, inputs, targets, **kwargs)
    _check_data(inputs, targets, entry.data == "labelled", name)
    if entry.data == "inputs":
        return entry.score(model, players, inputs, **kwargs)
    return entry.score(model, players, inputs, targets, **kwargs)


def as_result(
    scores: Tensor,
    players: FilterPlayers | Sequence[str] | None = None,
    method: str = "",
    *,
    k: int = 10,
    n_evals: int = 0,
    seconds: float = 0.0,
) -> ShapleyResult:
    """Wrap any per-player scores in a :class:`ShapleyResult` (zero stderr and counts), so a baseline ranking
    can be pruned, plotted and logged like a Shapley result."""
    values = torch.as_tensor(scores).detach().double().cpu()
    if values.dim() != 1 or len(values) == 0:
        raise ValueError(f"scores must have shape (N,), got {tuple(values.shape)}.")
    names = players.names if isinstance(players, FilterPlayers) else (list(players) if players is not None else None)
    if names is not None and len(names) != len(values):
        raise ValueError(f"{len(values)} scores for {len(names)} players.")
    return ShapleyResult(
        values=values.clone(),
        stderr=torch.zeros_like(values),
        counts=torch.zeros(len(values), dtype=torch.int64),
        n_evals=int(n_evals),
        converged=True,
        k=min(k, len(values)),
        names=list(names) if names is not None else None,
        method=method,
        seconds=float(seconds),
    )


def baseline_result(
    name: str,
    model: nn.Module,
    players: FilterPlayers,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    *,
    k: int = 10,
    **kwargs: Any,
) -> ShapleyResult:
    """:func:`baseline_scores` wrapped by :func:`as_result`, with its wall time; ``n_evals`` counts the game
    coalitions evaluated (N + 1 for ``leave_one_out``, 0 for the scores that evaluate no coalition)."""
    start = time.perf_counter()
    scores = baseline_scores(name, model, players, inputs, targets, **kwargs)
    n_evals = BASELINES[name].coalitions(players.n_players)
    return as_result(scores, players, name, k=k, n_evals=n_evals, seconds=time.perf_counter() - start)
