"""The callback's fixed evaluation set: the first ``size`` examples of the trainer's validation data."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from nsl.games import EvalData

_INPUT_KEYS = ("x", "input", "inputs", "image", "images")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")
_GROUP_KEYS = ("group", "groups", "sensitive")


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


def _split_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    if isinstance(batch, Mapping):
        def pick(keys: Sequence[str]) -> Tensor | None:
            return next((batch[k] for k in keys if k in batch), None)

        x, y, g = pick(_INPUT_KEYS), pick(_TARGET_KEYS), pick(_GROUP_KEYS)
    elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, y = batch[0], batch[1]
        g = batch[2] if len(batch) == 3 else None
    else:
        x = y = g = None
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(
            "evaluation batches must be (inputs, targets), (inputs, targets, groups) or a mapping with "
            f"keys like {_INPUT_KEYS[:2]} and {_TARGET_KEYS[:2]}; got {type(batch).__name__}."
        )
    return x, y, g if isinstance(g, Tensor) else None


def collect(batches: Iterable[Any], size: int | None, groups: Any = None) -> EvalData:
    """The first ``size`` examples (all when ``None``) of ``batches``, detached, on the CPU.

    When the batches carry no groups, ``groups`` (a tensor aligned with the batches, e.g. a datamodule's
    ``val_groups``) gives them.
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
        raise ValueError("the evaluation data is empty: the validation dataloader yielded no batches.")
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
    """Evaluation data given directly as ``(inputs, targets)`` or ``(inputs, targets, groups)``."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3) or not all(isinstance(t, Tensor) for t in data):
        raise ValueError("data= must be a tuple (inputs, targets) or (inputs, targets, groups) of tensors.")
    return collect([tuple(data)], size)
