"""The callback's fixed evaluation set: the first ``size`` examples of the trainer's validation data."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from nsl.games import EvalData

_INPUT_KEYS = ("x", "input", "inputs", "image", "images")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")
_GROUP_KEYS = ("group", "groups", "sensitive")
DATA_HINT = "pass the evaluation data directly: NeuronShapley(data=(inputs, targets[, groups]))"


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave torch's (CPU and CUDA), Python's and NumPy's global RNGs exactly as they were.

    Iterating a DataLoader draws its base seed from the global generator; an analysis must not shift the
    random stream of the training around it.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _describe(value: Any) -> str:
    """A short description of a batch or one of its elements: shape and dtype of tensors, keys of mappings."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, Mapping):
        return f"mapping with keys {list(value)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: [{', '.join(_describe(v) for v in value)}]"
    return type(value).__name__


def _is_labels(t: Any) -> bool:
    return isinstance(t, Tensor) and t.dim() == 1 and not t.dtype.is_floating_point and t.dtype != torch.bool


def _split_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """Inputs, targets and groups of one batch: a tuple ``(inputs, targets[, groups])`` or a mapping with
    known keys; anything else fails naming what it received and the ``data=`` alternative."""
    if isinstance(batch, Mapping):
        def pick(keys: Sequence[str]) -> Any:
            return next((batch[k] for k in keys if k in batch), None)

        x, y, g = pick(_INPUT_KEYS), pick(_TARGET_KEYS), pick(_GROUP_KEYS)
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            missing = [what for what, v in (("inputs", x), ("targets", y)) if not isinstance(v, Tensor)]
            raise ValueError(
                f"NeuronShapley cannot find the {' and '.join(missing)} in an evaluation batch that is a "
                f"mapping with keys {list(batch)}: inputs are read from the first of {list(_INPUT_KEYS)}, targets "
                f"from {list(_TARGET_KEYS)}, groups from {list(_GROUP_KEYS)}. Rename the keys, or {DATA_HINT}."
            )
    elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3) and all(isinstance(t, Tensor) for t in batch[:2]):
        x, y = batch[0], batch[1]
        g = batch[2] if len(batch) == 3 and isinstance(batch[2], Tensor) else None
    else:
        raise ValueError(
            "NeuronShapley reads evaluation batches as (inputs, targets), (inputs, targets, groups) or a mapping "
            f"with keys such as {list(_INPUT_KEYS[:2])} and {list(_TARGET_KEYS[:2])}; got a {_describe(batch)}. "
            f"Give batches in one of these forms, or {DATA_HINT}."
        )
    if not _is_labels(y):
        order = ""
        if _is_labels(x) and isinstance(y, Tensor) and y.dim() > 1:
            order = " The batch looks like (targets, inputs): NeuronShapley expects the inputs first."
        raise ValueError(
            f"the targets of an evaluation batch are a {_describe(y)}; NeuronShapley needs integer class labels "
            f"of shape (B,) (the batch is a {_describe(batch)}).{order} Give batches as (inputs, targets[, groups]), "
            f"or {DATA_HINT}."
        )
    if x.dim() < 1 or len(x) != len(y):
        raise ValueError(
            f"the inputs of an evaluation batch are a {_describe(x)} for {len(y)} targets; NeuronShapley needs one "
            f"input per target (the batch is a {_describe(batch)}). Give batches as (inputs, targets[, groups]), "
            f"or {DATA_HINT}."
        )
    if g is not None and not (_is_labels(g) and len(g) == len(y)):
        raise ValueError(
            f"the groups of an evaluation batch are a {_describe(g)}; NeuronShapley needs one integer group code "
            f"per target, shape ({len(y)},). Give batches as (inputs, targets, groups), or {DATA_HINT}."
        )
    return x, y, g


def check_data(data: EvalData) -> None:
    """Fail on evaluation data no game can use: empty, or inputs holding NaN or inf values."""
    if len(data) == 0:
        raise ValueError(
            f"the evaluation data is empty (inputs of shape {tuple(data.inputs.shape)}): give the Trainer "
            f"validation data with at least one batch, or {DATA_HINT}."
        )
    if data.inputs.is_floating_point():
        finite = torch.isfinite(data.inputs.reshape(len(data), -1)).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().squeeze(1)
            nan = int(torch.isnan(data.inputs).sum())
            raise ValueError(
                f"{len(bad)} of the {len(data)} evaluation inputs hold NaN or inf values ({nan} NaN values; first "
                f"at example {int(bad[0])}): every input must be finite."
            )


def collect(batches: Iterable[Any], size: int | None, groups: Any = None, option: str | None = "eval_size") -> EvalData:
    """The first ``size`` examples (all when ``None``) of ``batches``, detached, on the CPU.

    When the batches carry no groups, ``groups`` (a tensor aligned with the batches, e.g. a datamodule's
    ``val_groups``) gives them. When the batches run out before ``size`` examples, a warning names ``option``
    (the argument that asked for ``size``) and how many examples there were; ``option=None``: no warning.
    """
    xs, ys, gs = [], [], []
    seen = 0
    with torch.inference_mode(False):
        for batch in batches:
            x, y, g = _split_batch(batch)
            xs.append(x.detach().cpu().clone())
            ys.append(y.detach().cpu().clone())
            if g is not None:
                gs.append(g.detach().cpu().clone())
            seen += len(y)
            if size is not None and seen >= size:
                break
    if not xs:
        raise ValueError(
            f"the evaluation data is empty: the validation dataloader yielded no batches. Give the Trainer "
            f"validation data with at least one batch, or {DATA_HINT}."
        )
    if option is not None and size is not None and seen < size:
        rank_zero_warn(
            f"NeuronShapley: {option}={size} but the validation data holds only {seen} examples, so the analysis "
            f"uses all {seen}. Set {option}={seen} (or less) to silence this warning, or give more validation data."
        )
    inputs, targets = torch.cat(xs)[:size], torch.cat(ys)[:size]
    if len(gs) == len(xs):
        groups = torch.cat(gs)[:size]
    elif isinstance(groups, Tensor):
        groups = groups[: len(targets)].clone()
    else:
        groups = None
    return EvalData(inputs, targets, groups)


def unsharded(loader: Any) -> Any:
    """The loader over its whole dataset, in order, when a DistributedSampler shards it (DDP); else the loader.

    Under DDP Lightning gives every rank a different shard of the validation data, but every rank must analyse
    the same examples (and the datamodule's ``val_groups`` are aligned with the whole dataset). Iterable
    datasets cannot be unsharded and are returned as they are.
    """
    if not isinstance(loader, DataLoader):
        return loader
    batch_sampler = getattr(loader, "batch_sampler", None)
    sharded = isinstance(loader.sampler, DistributedSampler) or isinstance(
        getattr(batch_sampler, "sampler", None), DistributedSampler
    )
    dataset = loader.dataset
    if not sharded or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return loader
    return DataLoader(dataset, batch_size=loader.batch_size or 64, shuffle=False, collate_fn=loader.collate_fn)


def from_tensors(data: Sequence[Tensor], size: int | None) -> EvalData:
    """Evaluation data given directly as ``(inputs, targets)`` or ``(inputs, targets, groups)``, checked."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3) or not all(isinstance(t, Tensor) for t in data):
        raise ValueError(
            f"data= must be a tuple (inputs, targets) or (inputs, targets, groups) of tensors; got a {_describe(data)}."
        )
    if data[1].numel() == 0:
        raise ValueError(f"data= is empty: it holds a {_describe(data)}; give at least one example.")
    result = collect([tuple(data)], size, option=None)  # the user chose these examples: eval_size only caps them
    check_data(result)
    return result
