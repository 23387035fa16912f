"""A copy of a model's tensors and layer sizes that can be written back in place, also after physical pruning.

Physical pruning (Torch-Pruning) replaces parameters by smaller ones and changes layer attributes such as
``out_channels``, so a saved ``state_dict`` alone cannot be loaded back: :class:`ModuleSnapshot` also keeps
each module's public size attributes (and the record a physical pruning leaves, so a restored model has no
pruning plan) and writes tensors back with their original shapes. It works in place on the same module objects,
so a Trainer or anything else holding the model keeps seeing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nsl.repair.plan import PLAN_ATTR

_SIZE_TYPES = (int, float, bool, str, tuple, type(None))


@dataclass(frozen=True)
class _ModuleState:
    parameters: dict[str, Tensor | None]
    buffers: dict[str, Tensor | None]
    attributes: dict[str, object]  # public plain attributes such as out_channels, num_features, in_features
    plan: list[dict] | None  # the pruning record of this module (nsl.repair.plan), None if it has none


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()


class ModuleSnapshot:
    """Every parameter, buffer and size attribute of ``model``'s modules, restorable bit for bit and in place.

    Example::

        >>> import torch
        >>> from nsl.repair.snapshot import ModuleSnapshot
        >>> layer = torch.nn.Linear(4, 3)
        >>> saved = ModuleSnapshot(layer)
        >>> layer.weight = torch.nn.Parameter(layer.weight[:2].clone()); layer.out_features = 2  # shrunk
        >>> saved.restore()
        >>> layer.weight.shape, layer.out_features
        (torch.Size([3, 4]), 3)
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModuleSnapshot needs an nn.Module, got {type(model).__name__}.")
        self.model = model
        self._states: dict[str, _ModuleState] = {}
        for name, module in model.named_modules():
            attributes = {
                k: v for k, v in vars(module).items()
                if not k.startswith("_") and k != "training" and isinstance(v, _SIZE_TYPES)
            }
            self._states[name] = _ModuleState(
                {k: _clone(p) for k, p in module._parameters.items()},
                {k: _clone(b) for k, b in module._buffers.items()},
                attributes,
                list(getattr(module, PLAN_ATTR, None) or []) or None,
            )

    @torch.no_grad()
    def restore(self) -> None:
        """Write every saved tensor and attribute back into the same module objects (shapes included)."""
        modules = dict(self.model.named_modules())
        missing = sorted(set(self._states) - set(modules))
        if missing:
            raise RuntimeError(
                f"cannot restore: modules {missing[:5]} of the snapshot are no longer in the model; the model's "
                "structure changed in a way a snapshot of tensors cannot undo."
            )
        for name, state in self._states.items():
            module = modules[name]
            for key, saved in state.parameters.items():
                current = module._parameters.get(key)
                if saved is None:
                    module._parameters[key] = None
                elif current is None:
                    module._parameters[key] = nn.Parameter(saved.clone())
                elif current.shape == saved.shape:
                    current.copy_(saved.to(current.device))  # the same Parameter object: optimizers still see it
                else:
                    current.data = saved.to(current.device).clone()
            for key, saved in state.buffers.items():
                current = module._buffers.get(key)
                if saved is None:
                    module._buffers[key] = None
                else:
                    module._buffers[key] = saved.clone() if current is None else saved.to(current.device).clone()
            for key, value in state.attributes.items():
                setattr(module, key, value)
            if state.plan is None:
                module.__dict__.pop(PLAN_ATTR, None)
            else:
                object.__setattr__(module, PLAN_ATTR, list(state.plan))


__all__ = ["ModuleSnapshot"]
