"""Reloading a physically pruned model: the pruning plan, saved beside the weights and replayed on a fresh module.

Physical pruning (``prune_filters(..., physical=True)``) changes tensor shapes, so the pruned ``state_dict`` does
not fit a freshly constructed module ("size mismatch"). Every physical pruning therefore leaves a record on the
model: Torch-Pruning's own pruning history (``[module, out_channels?, channels]`` per pruned layer, the format of
``DependencyGraph.pruning_history()``), the removed filters by player name, and a zero batch shaped like the
example inputs (no data is kept) to trace the dependency graph again. :func:`pruning_plan` collects those
records; :func:`apply_pruning_plan` replays them on a fresh module, which then has the pruned shapes and takes
the pruned weights.

- :func:`save_pruned` / :func:`load_pruned`: the weights file (a plain ``state_dict``) and its plan beside it
  (``<name>.plan.pt``); ``load_pruned`` also reads a Lightning checkpoint that holds the plan.
- :func:`load_pruned_checkpoint`: ``cls.load_from_checkpoint`` for a checkpoint written after physical pruning
  (``ShapleyRepair`` puts the plan into every checkpoint saved after it pruned).

    >>> import torch
    >>> from nsl import FilterPlayers, prune_filters
    >>> from nsl.models import SmallCNN
    >>> from nsl.repair import load_pruned, save_pruned
    >>> model = SmallCNN(channels=(4, 6, 8)).eval()
    >>> _ = prune_filters(model, FilterPlayers(model), [1, 5], physical=True, example_inputs=torch.zeros(2, 1, 8, 8))
    >>> import tempfile, pathlib; path = pathlib.Path(tempfile.mkdtemp()) / "pruned.pt"
    >>> _ = save_pruned(model, path)                       # pruned.pt (weights) and pruned.plan.pt (plan)
    >>> fresh = load_pruned(SmallCNN(channels=(4, 6, 8)).eval(), path)
    >>> fresh.features[0].out_channels, fresh.features[3].out_channels
    (3, 5)
    >>> x = torch.randn(3, 1, 8, 8)
    >>> torch.equal(fresh(x), model(x))
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from nsl.players import preserve_mode

#: Where a physical pruning leaves its record on the module it pruned (a list of plain-data dicts).
PLAN_ATTR = "_nsl_pruning_plan"
#: The key of the plan in a Lightning checkpoint (and in a checkpoint-like dict given to :func:`load_pruned`).
PLAN_KEY = "nsl_pruning_plan"
PLAN_VERSION = 1
PLAN_SUFFIX = ".plan.pt"

_order = itertools.count()  # orders prunings made on different submodules of one model
M = TypeVar("M", bound=nn.Module)
LM = TypeVar("LM", bound=L.LightningModule)


def plan_path(weights: str | Path) -> Path:
    """Where the plan of the weights at ``weights`` goes: ``repaired_model.pt`` → ``repaired_model.plan.pt``."""
    path = Path(weights)
    return path.with_name(path.name.removesuffix(".pt") + PLAN_SUFFIX)


def _zeros_like(inputs: Any) -> Any:
    """A batch shaped like ``inputs`` with every tensor zeroed and on the CPU: enough to trace, keeps no data."""
    if isinstance(inputs, Tensor):
        return torch.zeros(inputs.shape, dtype=inputs.dtype)
    if isinstance(inputs, Mapping):
        return {k: _zeros_like(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        zeros = [_zeros_like(v) for v in inputs]
        return tuple(zeros) if isinstance(inputs, tuple) else zeros  # plain containers load with weights_only
    return inputs


def record_pruning(model: nn.Module, history: list[list[Any]], players: list[str], example_inputs: Any) -> None:
    """Append one physical pruning to ``model``'s record (called by ``prune_filters``; names relative to ``model``)."""
    entry = {
        "order": next(_order),
        "history": [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in history],
        "players": list(players),
        "example_inputs": _zeros_like(example_inputs),
    }
    records = list(getattr(model, PLAN_ATTR, None) or [])
    records.append(entry)
    # object.__setattr__: a plain attribute, never a submodule, parameter or buffer, so state_dict is unchanged.
    object.__setattr__(model, PLAN_ATTR, records)


def pruning_plan(model: nn.Module) -> dict[str, Any] | None:
    """The plan of every physical pruning made on ``model`` or its submodules, in the order they were made.

    ``None`` when ``model`` was never physically pruned. Plain data and tensors only, so it loads with
    ``torch.load(..., weights_only=True)``: ``{"version", "prunings": [{"root", "history", "players",
    "example_inputs"}, ...], "shapes": {state_dict key: shape}}``. ``root`` is the submodule the pruning was
    traced on (``""``: ``model`` itself); ``history`` is Torch-Pruning's pruning history relative to it.
    """
    prunings = []
    for name, module in model.named_modules():
        for entry in getattr(module, PLAN_ATTR, None) or []:
            prunings.append({**entry, "root": name})
    if not prunings:
        return None
    prunings.sort(key=lambda e: e["order"])
    return {
        "version": PLAN_VERSION,
        "prunings": [{k: v for k, v in e.items() if k != "order"} for e in prunings],
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


def _check_plan(plan: Any) -> dict[str, Any]:
    """The plan, after checking it is one :func:`pruning_plan` wrote; ValueError naming what is wrong."""
    if not isinstance(plan, Mapping) or not {"version", "prunings", "shapes"} <= set(plan):
        keys = sorted(plan) if isinstance(plan, Mapping) else type(plan).__name__
        raise ValueError(
            f"not a pruning plan ({keys}); expected the dict of nsl.repair.pruning_plan(model) with keys "
            "'version', 'prunings', 'shapes'."
        )
    if plan["version"] != PLAN_VERSION:
        raise ValueError(f"pruning plan version {plan['version']!r} is not supported; this nsl reads {PLAN_VERSION}.")
    return dict(plan)


def _shape_mismatches(shapes: Mapping[str, Any], state: Mapping[str, Tensor]) -> list[str]:
    return [
        f"{k}: {list(state[k].shape)} vs {list(shapes[k])}" for k in shapes if k in state
        and list(state[k].shape) != list(shapes[k])
    ]


def apply_pruning_plan(model: M, plan: Mapping[str, Any], example_inputs: Any = None) -> M:
    """Replay ``plan`` (from :func:`pruning_plan`) on a freshly constructed ``model``, so it has the pruned shapes.

    Each pruning's dependency graph is traced again on its zero batch (or on ``example_inputs``, a batch the
    model accepts, when given) and Torch-Pruning's history is replayed on it, in the order the prunings were
    made. The result is checked against the plan's shapes. On any error the model is left as it was. The model
    keeps the plan, so it can be saved and reloaded again. Returns ``model``.
    """
    from nsl.repair.snapshot import ModuleSnapshot  # snapshot knows PLAN_ATTR: import here, not at module level

    plan = _check_plan(plan)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if pruning_plan(model) is not None:
        raise ValueError(
            f"this {type(model).__name__} was already physically pruned; replay a plan on a freshly constructed "
            "module (the one you would build for training)."
        )
    modules = dict(model.named_modules())
    for pruning in plan["prunings"]:
        root = pruning["root"]
        missing = [n for n, _, _ in pruning["history"] if (f"{root}.{n}" if root else n) not in modules]
        if root not in modules or missing:
            raise ValueError(
                f"the plan prunes {missing or [root]}, which this {type(model).__name__} does not have: replay it "
                "on the kind of module it was recorded on (the same class, built with the same arguments)."
            )
    import torch_pruning as tp

    snapshot = ModuleSnapshot(model)
    try:
        with preserve_mode(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()  # tracing must not update BatchNorm statistics
            for pruning in plan["prunings"]:
                root = model.get_submodule(pruning["root"])
                inputs = pruning["example_inputs"] if example_inputs is None else example_inputs
                device = next(iter(root.parameters()), torch.empty(0)).device
                inputs = move_data_to_device(inputs, device)
                graph = tp.DependencyGraph().build_dependency(root, example_inputs=inputs, verbose=False)
                graph.load_pruning_history([list(step) for step in pruning["history"]])
                record_pruning(root, pruning["history"], pruning["players"], pruning["example_inputs"])
        wrong = _shape_mismatches(plan["shapes"], model.state_dict())
        if wrong:
            raise ValueError(
                f"after replaying the plan, {len(wrong)} tensors do not have the planned shapes ({wrong[:3]}): the "
                "module is not the kind the plan was recorded on (same class, same constructor arguments)."
            )
    except BaseException:
        snapshot.restore()
        raise
    return model


def save_pruned(model: nn.Module, path: str | Path) -> list[Path]:
    """Write ``model``'s ``state_dict`` to ``path`` and, if it was physically pruned, its plan beside it.

    The plan goes to :func:`plan_path` (``model.pt`` → ``model.plan.pt``); a stale plan from an earlier model is
    removed when this one was not pruned, so the two files always belong together. Returns the files written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    plan = pruning_plan(model)
    if plan is None:
        plan_path(path).unlink(missing_ok=True)
        return [path]
    torch.save(plan, plan_path(path))
    return [path, plan_path(path)]


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None, str]:
    """The weights and plan at ``path``: a Lightning checkpoint (plan inside) or a state_dict (plan beside)."""
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a file; expected a state_dict file or a Lightning checkpoint.")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(data).__name__}, not a state_dict or a checkpoint.")
    if "state_dict" in data and isinstance(data["state_dict"], Mapping):
        return dict(data["state_dict"]), data.get(PLAN_KEY), f"the checkpoint's {PLAN_KEY!r} entry"
    beside = plan_path(path)
    plan = torch.load(beside, map_location="cpu", weights_only=True) if beside.is_file() else None
    return dict(data), plan, str(beside)


def load_pruned(
    module: M,
    path: str | Path,
    *,
    plan: Mapping[str, Any] | str | Path | None = None,
    example_inputs: Any = None,
    strict: bool = True,
) -> M:
    """Load the weights at ``path`` into a freshly constructed ``module``, replaying their pruning plan first.

    ``path``: a ``state_dict`` file (e.g. ``repaired_model.pt``, with its plan in ``repaired_model.plan.pt``) or a
    Lightning checkpoint saved after physical pruning (the plan inside). ``plan``: the plan itself or its file,
    when it is kept elsewhere (e.g. ``torch.save(pruning_plan(model), ...)``). Weights of a model that was not
    physically pruned load as they are. ``example_inputs``: a batch to trace the model with instead of the
    plan's zero batch. Returns ``module``.
    """
    path = Path(path)
    state, found, where = _read(path)
    if plan is None:
        plan = found
    elif isinstance(plan, (str, Path)):
        where = str(plan)
        plan = torch.load(plan, map_location="cpu", weights_only=True)
    else:
        where = "the plan given"
    if plan is None:
        wrong = _shape_mismatches({k: v.shape for k, v in module.state_dict().items()}, state)
        if wrong:
            raise ValueError(
                f"the weights in {str(path)!r} have other shapes than this {type(module).__name__} ({wrong[:3]}) "
                f"and no pruning plan was found ({where}): they come from a physically pruned model whose plan "
                "was not saved. Save with nsl.repair.save_pruned(model, path) (or a ShapleyRepair callback in "
                "the Trainer for checkpoints), or rebuild the pruned architecture yourself."
            )
    else:
        plan = _check_plan(plan)
        wrong = _shape_mismatches(plan["shapes"], state)
        if wrong:
            raise ValueError(
                f"the pruning plan ({where}) does not belong to the weights in {str(path)!r}: shapes differ "
                f"({wrong[:3]}); it is from another model."
            )
        apply_pruning_plan(module, plan, example_inputs)
    module.load_state_dict(state, strict=strict)
    return module


def load_pruned_checkpoint(cls: type[LM], checkpoint_path: str | Path, **kwargs: Any) -> LM:
    """``cls.load_from_checkpoint(checkpoint_path, **kwargs)`` for a checkpoint saved after physical pruning.

    Lightning builds the module from its saved hyper-parameters (``kwargs`` win), calls its
    ``on_load_checkpoint`` and then loads the weights; here the plan stored in the checkpoint is replayed just
    before the module's own ``on_load_checkpoint``, so the weights find the pruned shapes. A checkpoint without
    a plan loads as ``load_from_checkpoint`` would load it. Returns an instance of ``cls`` itself.
    """
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise TypeError(f"cls must be a LightningModule class, got {cls!r}.")

    class _Replaying(cls):  # type: ignore[valid-type, misc]
        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            if checkpoint.get(PLAN_KEY) is not None:
                apply_pruning_plan(self, checkpoint[PLAN_KEY])
            super().on_load_checkpoint(checkpoint)

    _Replaying.__name__, _Replaying.__qualname__ = cls.__name__, cls.__qualname__
    _Replaying.__module__ = cls.__module__
    model = _Replaying.load_from_checkpoint(checkpoint_path, **kwargs)
    model.__class__ = cls  # the user's own class again; the subclass only hooked the load
    return model


__all__ = [
    "PLAN_ATTR",
    "PLAN_KEY",
    "apply_pruning_plan",
    "load_pruned",
    "load_pruned_checkpoint",
    "plan_path",
    "pruning_plan",
    "record_pruning",
    "save_pruned",
]
