"""torchvision networks by name, sized for the task: any class count, optional pretrained weights.

``weights`` is always a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or the full
``"ResNet18_Weights.IMAGENET1K_V1"``) or ``None``, so it can come straight from a YAML config. With ``None``
nothing is downloaded; with a name, torchvision loads the weights from its cache (``$TORCH_HOME``) or
fetches them, and the classification head is replaced when ``num_classes`` differs from the weights'.
"""

from __future__ import annotations

from typing import Any

import torchvision.models
from torch import nn


def _replace_head(model: nn.Module, num_classes: int, pretrained_classes: int) -> None:
    """Swap the last Linear or Conv2d that outputs ``pretrained_classes`` logits for a fresh one."""
    heads = [
        (name, module)
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) and module.out_features == pretrained_classes)
        or (isinstance(module, nn.Conv2d) and module.out_channels == pretrained_classes)
    ]
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no Linear or Conv2d layer with {pretrained_classes} outputs "
            f"to replace by a {num_classes}-class head."
        )
    name, old = heads[-1]
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
        )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def torchvision_model(
    name: str, num_classes: int = 10, weights: str | None = None, **kwargs: Any
) -> nn.Module:
    """Any model of ``torchvision.models.list_models()`` with ``num_classes`` outputs.

    Args:
        name: torchvision builder name, e.g. ``"resnet18"``, ``"squeezenet1_1"``, ``"vgg16_bn"``.
        num_classes: output logits.
        weights: torchvision weights name or ``None`` (random initialisation, no download).
        **kwargs: passed to the builder (e.g. ``dropout``).
    """
    available = torchvision.models.list_models()
    if name not in available:
        raise ValueError(f"name={name!r} is not a torchvision model; choose one of {available}.")
    if weights is None:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    weights_enum = torchvision.models.get_model_weights(name)
    try:
        chosen = weights_enum.verify(weights)
    except KeyError:
        options = [w.name for w in weights_enum]
        raise ValueError(
            f"weights={weights!r} are not weights of {name}; use None or one of {options}."
        ) from None
    model = torchvision.models.get_model(name, weights=chosen, **kwargs)
    pretrained_classes = len(chosen.meta["categories"])
    if num_classes != pretrained_classes:
        _replace_head(model, num_classes, pretrained_classes)
    return model


def resnet18(num_classes: int = 10, weights: str | None = None, small_input: bool = True) -> nn.Module:
    """torchvision's ResNet-18; ``small_input`` adapts it to 32×32 images (CIFAR-10).

    With ``small_input`` the stem is a 3×3 stride-1 convolution and the max-pool is dropped, so a 32×32
    image still has 4×4 feature maps in the last stage; the stem is then freshly initialised even when
    ``weights`` are loaded (the 7×7 pretrained kernels do not fit it).
    """
    model = torchvision_model("resnet18", num_classes, weights)
    if small_input:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


def squeezenet(num_classes: int = 10, weights: str | None = None, version: str = "1_1") -> nn.Module:
    """torchvision's SqueezeNet (``version`` ``"1_0"`` or ``"1_1"``), a light all-convolutional network."""
    if version not in ("1_0", "1_1"):
        raise ValueError(f"version={version!r} must be '1_0' or '1_1'.")
    return torchvision_model(f"squeezenet{version}", num_classes, weights)
