"""FilterDropout without ``layers`` drops the filters the analysis scores: the NeuronShapley's layers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from conftest import quiet_trainer
from nsl import FilterDropout, NeuronShapley
from nsl.data import DigitsDataModule
from nsl.models import Classifier, SmallCNN

BATCH, STEPS = 32, 2


def fit(callbacks: list, tmp_path: Path) -> None:
    trainer = quiet_trainer(1, limit_train_batches=STEPS, limit_val_batches=1, default_root_dir=tmp_path,
                            callbacks=callbacks)
    trainer.fit(Classifier(SmallCNN(channels=(4, 6, 8))), DigitsDataModule(batch_size=BATCH))


def analysis(layers: str | list[str] | None) -> NeuronShapley:
    # Scheduled from epoch 10 of a one-epoch fit and not at fit end: it never runs, only its layers matter here.
    return NeuronShapley("accuracy", layers=layers, top_k=2, every_n_epochs=1, start_epoch=10, at_fit_end=False,
                         verbose=False)


def test_default_layers_are_the_analysis_layers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dropout = FilterDropout(p=0.2)
    with caplog.at_level(logging.INFO):
        fit([analysis("net.features.3"), dropout], tmp_path)
    assert [layer.name for layer in dropout.players.layers] == ["net.features.3"]
    assert dropout.seen == STEPS * BATCH * 6  # masks were drawn for that layer's 6 filters only, per sample
    assert any("[FilterDropout] p=0.2 on 6 filters of 1 layers (the NeuronShapley's layers 'net.features.3')"
               in r.getMessage() for r in caplog.records)
    assert dropout.layers is None  # the configured value (and so the checkpoint's state key) is unchanged

    explicit = FilterDropout(p=0.2, layers="net.features.7")  # a choice of its own wins
    fit([analysis("net.features.3"), explicit], tmp_path)
    assert [layer.name for layer in explicit.players.layers] == ["net.features.7"]

    alone = FilterDropout(p=0.2)  # no analysis: every Conv2d, as before
    fit([alone], tmp_path)
    assert len(alone.players) == 4 + 6 + 8


def test_two_analyses_with_other_layers_are_ambiguous(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"2 NeuronShapley callbacks with different layers.*set FilterDropout's"):
        fit([analysis("net.features.3"), analysis("net.features.0"), FilterDropout(p=0.1)], tmp_path)


def test_the_filter_dropout_config_follows_the_analysis_layers(tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_module("nsl.conf", version_base="1.3"):
        options = ["layers=net.features.7", "top_k=2", "every_n_epochs=1", "start_epoch=10", "at_fit_end=false"]
        cfg = compose("train", overrides=["repair=filter_dropout", "game=accuracy",
                                          *[f"callbacks.neuron_shapley.{o}" for o in options]])
    assert cfg.callbacks.filter_dropout.layers is None
    callbacks = [instantiate(cfg.callbacks.neuron_shapley), instantiate(cfg.callbacks.filter_dropout)]
    fit(callbacks, tmp_path)
    assert [layer.name for layer in callbacks[1].players.layers] == ["net.features.7"]
