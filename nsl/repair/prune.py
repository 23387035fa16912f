"""Switching culprit filters off for good: zero the parameters that produce them, or cut them out.

``prune_filters`` is the permanent twin of ``FilterPlayers.mask`` with ``ablation="zero"``: a pruned filter's
channel reaches the next layer as exactly 0, and the change lives in ordinary parameters, so it survives
``state_dict`` save/load and Lightning checkpoints without extra keys. With ``physical=True`` the filters are
removed from the tensors instead (Torch-Pruning's dependency graph), which makes the model smaller; the model
then carries its pruning plan, so :func:`~nsl.repair.save_pruned` / :func:`~nsl.repair.load_pruned` can rebuild
the pruned shapes on a freshly constructed module.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from nsl.players import BATCHNORMS, FilterPlayers, PlayerLayer, preserve_mode
from nsl.repair.plan import record_pruning

IndexLike = Tensor | Sequence[int] | Iterable[int] | int


@dataclass(frozen=True)
class SavedRows:
    """Original values of the rows (output channels) of one parameter or buffer that pruning zeroed."""

    module: str  # module name inside ``players.model``
    attr: str  # "weight", "bias" or "running_mean"
    rows: Tensor  # channel indices, int64 on CPU
    values: Tensor  # the original rows, bit for bit


def check_indices(indices: IndexLike, n_players: int) -> Tensor:
    """Player indices as a sorted int64 CPU tensor; ValueError naming the bad value otherwise."""
    accepted = f"integers in [0, {n_players - 1}] without repeats" if n_players else "nothing (no players)"
    if isinstance(indices, Tensor):
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            hint = (
                " (turn a bool mask into indices with mask.nonzero().flatten())"
                if indices.dtype == torch.bool
                else ""
            )
            raise ValueError(
                f"indices have dtype {indices.dtype}; expected an integer tensor of {accepted}{hint}."
            )
        if indices.dim() > 1:
            raise ValueError(
                f"indices have shape {tuple(indices.shape)}; expected a 1-D tensor of {accepted}."
            )
        idx = indices.detach().flatten().to("cpu", torch.int64)
    else:
        items = [indices] if isinstance(indices, numbers.Integral) else indices
        try:
            items = list(items)
        except TypeError:
            raise ValueError(
                f"indices={indices!r} is not a sequence of integers; expected {accepted}."
            ) from None
        for item in items:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                raise ValueError(
                    f"index {item!r} ({type(item).__name__}) is not an integer; expected {accepted}."
                )
        idx = torch.tensor([int(i) for i in items], dtype=torch.int64)
    if idx.numel() == 0:
        raise ValueError(f"indices are empty: name at least one filter ({accepted}).")
    bad = idx[(idx < 0) | (idx >= n_players)]
    if bad.numel():
        raise ValueError(
            f"indices {bad.tolist()[:5]} are out of range for {n_players} players; expected {accepted}."
        )
    unique, counts = torch.unique(idx, return_counts=True)
    if bool((counts > 1).any()):
        raise ValueError(f"indices {unique[counts > 1].tolist()[:5]} are repeated; expected {accepted}.")
    return unique  # sorted


def check_players(model: nn.Module, players: FilterPlayers) -> dict[str, nn.Module]:
    """The modules of ``players.model`` by name, after checking the players still describe ``model``."""
    if not isinstance(players, FilterPlayers):
        raise TypeError(f"players must be a FilterPlayers, got {type(players).__name__}.")
    if not any(m is players.model for m in model.modules()):
        raise ValueError(
            f"players were built on a {type(players.model).__name__} that is neither this "
            f"{type(model).__name__} nor one of its submodules; build FilterPlayers(model, ...) on the model "
            "you prune."
        )
    modules = dict(players.model.named_modules())
    for layer in players.layers:
        for name in dict.fromkeys((layer.name, layer.mask_at)):
            module = modules.get(name)
            width = None
            if isinstance(module, nn.Conv2d):
                width = module.out_channels
            elif isinstance(module, nn.Linear):
                width = module.out_features
            elif isinstance(module, BATCHNORMS):
                width = module.num_features
            if width != layer.size:
                raise ValueError(
                    f"players describe layer {name!r} with {layer.size} channels, but the model has "
                    f"{'no such layer' if module is None else f'{width} there'}; the model changed since the "
                    "players were built (physically pruned?): build new FilterPlayers."
                )
    return modules


def _by_layer(players: FilterPlayers, idx: Tensor) -> list[tuple[PlayerLayer, Tensor]]:
    """The selected players grouped by layer, as channel indices local to that layer."""
    out = []
    for layer in players.layers:
        inside = idx[(idx >= layer.offset) & (idx < layer.offset + layer.size)]
        if inside.numel():
            out.append((layer, inside - layer.offset))
    return out


def _targets(layer: PlayerLayer, modules: dict[str, nn.Module]) -> list[tuple[str, str]]:
    """(module, attribute) pairs whose rows must be 0 for the channel to be exactly 0 where players mask."""
    producer = modules[layer.name]
    targets = [(layer.name, "weight")]
    if producer.bias is not None:
        targets.append((layer.name, "bias"))
    if layer.mask_at != layer.name:
        bn = modules[layer.mask_at]
        if bn.weight is not None:
            # BN output = weight·x̂ + bias: both 0 makes it exactly 0 in train and eval mode alike.
            targets += [(layer.mask_at, "weight"), (layer.mask_at, "bias")]
        elif bn.running_mean is not None:
            # No affine part: a zero input normalises to -mean/std in eval mode, so the mean goes to 0 too.
            targets.append((layer.mask_at, "running_mean"))
    return targets


class PrunedFilters:
    """Filters switched off by :func:`prune_filters`: what changed, how to keep them off, how to undo it.

    Zeroed rows can come back while training (a Linear row or a BatchNorm shift may still get a gradient,
    stale optimizer momentum moves any row), so :meth:`keep_pruned` (or ``with pruned:``) guards them while
    fine-tuning: gradient hooks zero the pruned rows of every gradient (no optimizer sees a gradient, no
    momentum builds up, gradient clipping is unaffected), and forward pre-hooks plus ``state_dict`` pre-hooks
    re-zero the rows, so every forward pass and every checkpoint sees the filters off even if something else
    (stale momentum, a custom optimizer, loaded weights) moved them. :meth:`remove` takes the hooks off;
    the zeros stay.

    Args:
        model: the pruned model.
        indices: the pruned players (sorted).
        names: their names, ``"<module>:<channel>"``.
        saved: original values of every zeroed row (empty for physical pruning).
        physical: whether the filters were cut out of the tensors.
        params_before, params_after: parameter counts before and after.
        root: the module the players were built on (``players.model``), when it is inside ``model``.

    Example::

        >>> import torch
        >>> from nsl import FilterPlayers, prune_filters
        >>> from nsl.models import SmallCNN
        >>> model = SmallCNN(channels=(2, 3, 4)).eval()
        >>> before = {k: v.clone() for k, v in model.state_dict().items()}
        >>> pruned = prune_filters(model, FilterPlayers(model), [0, 4])  # e.g. result.culprits(2)
        >>> model.features[1].weight[0].item(), model.features[4].weight[2].item()   # BatchNorm scale zeroed
        (0.0, 0.0)
        >>> # with pruned: trainer.fit(model, datamodule)   # keeps the filters off while fine-tuning
        >>> pruned.undo()  # bitwise back to the original rows
        >>> all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        True
    """

    def __init__(
        self,
        model: nn.Module,
        indices: Tensor,
        names: list[str],
        saved: list[SavedRows],
        physical: bool,
        params_before: int,
        params_after: int,
        root: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.indices = indices
        self.names = names
        self.saved = saved
        self.physical = physical
        self.params_before = params_before
        self.params_after = params_after
        # players.model: the module names in ``saved`` are relative to it
        self._root = model if root is None else root
        self._handles: list[RemovableHandle] = []
        self._undone = False

    def __repr__(self) -> str:
        return (
            f"PrunedFilters(n={len(self.indices)}, physical={self.physical}, held={self.held}, "
            f"params {self.params_before} -> {self.params_after})"
        )

    @property
    def held(self) -> bool:
        """True while the keep-pruned hooks are installed."""
        return bool(self._handles)

    def _tensor(self, entry: SavedRows) -> Tensor:
        return getattr(self._root.get_submodule(entry.module), entry.attr)

    @torch.no_grad()
    def reapply(self) -> None:
        """Set the pruned rows to zero again (e.g. after loading other weights into the model)."""
        self._check_live("reapply")
        for entry in self.saved:
            tensor = self._tensor(entry)
            # ``.data`` so a graph still waiting for backward is not invalidated by a version bump.
            tensor.data.index_fill_(0, entry.rows.to(tensor.device), 0)

    def keep_pruned(self) -> PrunedFilters:
        """Install the hooks that keep the filters off during later training; returns ``self``."""
        self._check_live("keep_pruned")
        if self.physical or self._handles:
            return self  # physically pruned filters cannot come back; already held
        by_module: dict[str, list[SavedRows]] = {}
        for entry in self.saved:
            by_module.setdefault(entry.module, []).append(entry)
            tensor = self._tensor(entry)
            if isinstance(tensor, nn.Parameter):
                self._handles.append(tensor.register_hook(_ZeroRows(entry.rows)))
        for name, entries in by_module.items():
            module = self._root.get_submodule(name)
            rezero = _Rezero(entries)
            self._handles.append(module.register_forward_pre_hook(rezero))
            self._handles.append(module.register_state_dict_pre_hook(rezero.on_state_dict))
        self.reapply()
        return self

    def remove(self) -> None:
        """Take the keep-pruned hooks off (the zeroed rows stay zero)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def undo(self) -> None:
        """Remove the hooks and write the original rows back, bit for bit; only for non-physical pruning."""
        if self.physical:
            raise RuntimeError(
                "physical pruning changed the model's tensor shapes and cannot be undone; keep a "
                "copy.deepcopy(model) from before pruning if you need the original."
            )
        self._check_live("undo")
        self.remove()
        for entry in self.saved:
            tensor = self._tensor(entry)
            tensor.data[entry.rows.to(tensor.device)] = entry.values.to(tensor.device)
        self._undone = True

    def _check_live(self, what: str) -> None:
        if self._undone:
            raise RuntimeError(f"cannot {what}: this pruning was already undone; prune again instead.")

    def __enter__(self) -> PrunedFilters:
        return self.keep_pruned()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


class _ZeroRows:
    """Gradient hook: the pruned rows of a parameter get no gradient."""

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows

    def __call__(self, grad: Tensor) -> Tensor:
        return grad.index_fill(0, self.rows.to(grad.device), 0)


class _Rezero:
    """Forward / state_dict pre-hook: re-zero the pruned rows of one module before it is used or saved."""

    def __init__(self, entries: list[SavedRows]) -> None:
        self.entries = entries

    @torch.no_grad()
    def _rezero(self, module: nn.Module) -> None:
        for entry in self.entries:
            tensor = getattr(module, entry.attr)
            tensor.data.index_fill_(0, entry.rows.to(tensor.device), 0)

    def __call__(self, module: nn.Module, _args: Any) -> None:
        self._rezero(module)

    def on_state_dict(self, module: nn.Module, _prefix: str, _keep_vars: bool) -> None:
        self._rezero(module)


def prune_filters(
    model: nn.Module,
    players: FilterPlayers,
    indices: IndexLike,
    *,
    physical: bool = False,
    example_inputs: Any = None,
) -> PrunedFilters:
    """Switch filters ``indices`` of ``players`` off for good, as ``players.mask`` does with zero ablation.

    By default the parameters producing each channel are zeroed (conv/Linear rows and bias; the BatchNorm
    scale and shift when the players mask after a BatchNorm), so the channel is exactly 0 downstream and the
    change survives ``state_dict`` save/load. ``physical=True`` removes the channels instead, with
    Torch-Pruning's dependency graph traced on ``example_inputs`` (needs gradients on, so call it after
    ``fit``), and the model shrinks; the old ``players`` then no longer describe it. A physical pruning is
    recorded on ``model`` (Torch-Pruning's history and the player names, see :func:`~nsl.repair.pruning_plan`):
    save with :func:`~nsl.repair.save_pruned` and reload into a fresh module with :func:`~nsl.repair.load_pruned`.
    Inputs are checked before anything changes: on ``ValueError`` the model is untouched.

    Args:
        model: the model to prune (``players.model`` or a module containing it).
        players: the players the indices refer to.
        indices: player indices, e.g. ``result.culprits(5)``.
        physical: cut the filters out of the tensors instead of zeroing them.
        example_inputs: a batch the model accepts; required with ``physical=True``.

    Returns:
        A :class:`PrunedFilters` handle (keep-pruned hooks, ``undo``).
    """
    modules = check_players(model, players)
    idx = check_indices(indices, len(players))
    names = [players.names[i] for i in idx.tolist()]
    groups = _by_layer(players, idx)
    params_before = sum(p.numel() for p in model.parameters())
    if physical:
        history = _prune_physically(model, players, modules, groups, example_inputs)
        record_pruning(model, history, names, example_inputs)
        params_after = sum(p.numel() for p in model.parameters())
        return PrunedFilters(model, idx, names, [], True, params_before, params_after, players.model)
    saved = []
    with torch.no_grad():
        for layer, rows in groups:
            for module_name, attr in _targets(layer, modules):
                tensor = getattr(modules[module_name], attr)
                device_rows = rows.to(tensor.device)
                saved.append(SavedRows(module_name, attr, rows.clone(), tensor.detach()[device_rows].clone()))
        for entry in saved:  # zero only after every target was found, so an error leaves the model as it was
            tensor = getattr(modules[entry.module], entry.attr)
            tensor.data.index_fill_(0, entry.rows.to(tensor.device), 0)
    return PrunedFilters(model, idx, names, saved, False, params_before, params_before, players.model)


def _prune_physically(
    model: nn.Module,
    players: FilterPlayers,
    modules: dict[str, nn.Module],
    groups: list[tuple[PlayerLayer, Tensor]],
    example_inputs: Any,
) -> list[list[Any]]:
    """Remove the channels with Torch-Pruning, after checking every group so a refusal changes nothing.

    Returns Torch-Pruning's pruning history (``[module name, out_channels?, channels]`` per layer, names relative
    to ``model``): the plan that replays this pruning on a fresh module."""
    if example_inputs is None:
        raise ValueError(
            "physical=True needs example_inputs: a batch the model accepts (e.g. the inputs of one "
            "training batch), used by Torch-Pruning to trace which layers depend on the pruned channels."
        )
    for layer, rows in groups:
        if len(rows) >= layer.size:
            raise ValueError(
                f"cannot physically remove all {layer.size} filters of layer {layer.name!r}: the layer would "
                "vanish. Remove fewer, or zero them with physical=False."
            )
    import torch_pruning as tp

    def group_of(graph: Any, layer: PlayerLayer, rows: Tensor) -> Any:
        module = modules[layer.name]
        handler = (
            tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        )
        return graph.get_pruning_group(module, handler, idxs=rows.tolist())

    with preserve_mode(model), torch.inference_mode(False), torch.enable_grad():
        if isinstance(example_inputs, Tensor) and example_inputs.is_inference():
            example_inputs = example_inputs.clone()  # inference tensors cannot be traced by autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        for layer, rows in groups:
            root = modules[layer.name]
            for dep, _ in group_of(graph, layer, rows):
                target = dep.target.module
                if not graph.is_out_channel_pruning_fn(dep.handler):
                    continue
                if isinstance(target, (nn.Conv2d, nn.Linear)) and target is not root:
                    other = graph._module2name.get(target, type(target).__name__)
                    raise ValueError(
                        f"filters of layer {layer.name!r} are coupled with the outputs of {other!r} (a "
                        "residual add or shared channels): removing them physically would remove channels of "
                        "that layer too, which masking does not do. Use physical=False for this layer."
                    )
                if not dep.target.outputs:
                    raise ValueError(
                        f"layer {layer.name!r} produces the model's output: removing its channels physically "
                        "would change the output's shape. Use physical=False, or leave that layer out of the "
                        "players."
                    )
        for layer, rows in groups:
            group_of(graph, layer, rows).prune()
    return [list(step) for step in graph.pruning_history()]
