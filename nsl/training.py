"""The default digits classifier, trained: kept for the scripts that still import it from here.

It is the ``digits_cnn`` training variant of the ``nsl-train`` configs; new code trains any variant with
``nsl.train.fit_model(nsl.train.compose_config(["experiment=digits_cnn", ...]))`` (experiment scripts: through
``experiments.common.train_model``).
"""

from __future__ import annotations

from collections.abc import Sequence

from nsl.models import Classifier
from nsl.train import compose_config, fit_model


def train_digits_model(epochs: int = 15, seed: int = 0, channels: Sequence[int] = (24, 32, 48)) -> Classifier:
    """SmallCNN with ``channels`` trained ``epochs`` epochs on the digits split of ``seed``, in eval mode."""
    overrides = ["experiment=digits_cnn", f"trainer.max_epochs={epochs}", f"seed={seed}", f"data.seed={seed}",
                 f"model.net.channels=[{','.join(map(str, channels))}]"]
    model, _ = fit_model(compose_config(overrides))
    return model
