"""Repair after the fit-end analysis: prune a game's culprits, or fine-tune with Shapley-guided filter dropout.

Every metric is measured on held-out data (the datamodule's test split when it has one) before and after the
repair, with adversarial examples made afresh there, so the report does not reuse the analysis data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nsl.callback import data as eval_data
from nsl.callback.specs import EvalData, GameSpec
from nsl.players import FilterPlayers
from nsl.report import log_scalars, log_table, markdown

if TYPE_CHECKING:
    from nsl.callback.neuron_shapley import NeuronShapley

METHODS = ("prune", "dropout_finetune")
DEFAULTS: dict[str, Any] = {
    "method": "prune",
    "game": None,  # whose culprits; None: fairness, else adversarial, else the first (dropout: accuracy first)
    "k": 5,  # culprits to prune (or to drop in "culprits" mode)
    "negative": None,  # None: the game's own side (fairness/accuracy: most negative; adversarial: highest)
    "only_signed": True,  # prune only culprits whose value really has the harmful sign
    "apply": True,  # keep the repair in the model (False: report, then undo)
    "heldout_size": 1000,  # held-out examples for the before/after report
    "p": 0.1,  # dropout_finetune: mean drop probability
    "mode": "spread",  # dropout_finetune: "spread" (high-value filters dropped more) or "culprits"
    "epochs": 2,  # dropout_finetune: fine-tuning epochs
}
REPORT_COLUMNS = ["metric", "before", "after", "change"]


def check_repair(repair: Mapping[str, Any], game_names: Sequence[str]) -> dict[str, Any]:
    """Fill defaults and check every key, naming the bad value and what is accepted."""
    if not isinstance(repair, Mapping):
        raise ValueError(f"repair={repair!r} must be a mapping such as {{'method': 'prune', 'k': 5}} or None.")
    unknown = sorted(set(repair) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown repair option(s) {unknown}; accepted: {sorted(DEFAULTS)}.")
    cfg = {**DEFAULTS, **repair}
    if cfg["method"] not in METHODS:
        raise ValueError(f"repair method={cfg['method']!r} is not supported; use one of {METHODS}.")
    if cfg["game"] is None:
        preferred = ("fairness", "adversarial") if cfg["method"] == "prune" else ("accuracy",)
        cfg["game"] = next((g for g in preferred if g in game_names), game_names[0])
    if cfg["game"] not in game_names:
        raise ValueError(f"repair game={cfg['game']!r} is not one of the callback's games {list(game_names)}.")
    for key in ("k", "epochs", "heldout_size"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"repair {key}={value!r} is not accepted; use a positive int.")
    p = cfg["p"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"repair p={p!r} is not accepted; use a probability in [0, 1).")
    if cfg["mode"] not in ("spread", "culprits"):
        raise ValueError(f"repair mode={cfg['mode']!r} is not supported; use 'spread' or 'culprits'.")
    return cfg


def heldout_data(callback: NeuronShapley, trainer: L.Trainer, size: int) -> tuple[EvalData, str]:
    """The datamodule's test split (with ``test_groups`` if it has them), else the evaluation data."""
    dm = trainer.datamodule
    if dm is not None:
        try:
            loader = dm.test_dataloader()
        except (NotImplementedError, AttributeError, TypeError, ValueError):
            loader = None
        if loader is not None:
            return eval_data.collect(loader, size, getattr(dm, "test_groups", None)), "test split"
    rank_zero_warn("NeuronShapley repair: no test split, so before/after is measured on the analysis data.")
    return callback.evaluation_data(trainer), "analysis data (no test split)"


def _report_games(specs: Sequence[GameSpec], model: L.LightningModule, data: EvalData, seed: int) -> dict[str, Any]:
    """Accuracy and every game on the held-out data, keyed by report label.

    Built once, before the repair: the adversarial examples are made against the unrepaired model and the
    same examples are attacked again after it (the paper's Fig. 3c).
    """
    players = FilterPlayers(model)
    games = {}
    if not any(s.kind == "accuracy" and not s.options for s in specs):
        games["accuracy"] = GameSpec("accuracy", "accuracy").build(model, players, data)
    for g, spec in enumerate(specs):
        if spec.kind == "fairness" and data.groups is None:
            continue
        options = {"seed": seed + g} if spec.kind == "adversarial" else {}
        games[spec.name if spec.name == spec.kind else f"{spec.name} ({spec.kind})"] = spec.build(
            model, players, data, **options
        )
    return games


def run_repair(callback: NeuronShapley, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
    """Repair the model as ``callback.repair`` says; return (and print and log) the before/after table."""
    from nsl.repair import finetune_with_dropout, guided_probabilities, prune_filters

    cfg = callback.repair
    assert cfg is not None
    spec = next(s for s in callback.specs if s.name == cfg["game"])
    result = callback.results[spec.name]
    negative = spec.negative_culprits if cfg["negative"] is None else bool(cfg["negative"])
    with eval_data.preserved_rng():
        data, source = heldout_data(callback, trainer, cfg["heldout_size"])
        data = data.to(pl_module.device)
        specs = callback.specs
        games = _report_games(specs, pl_module, data, callback.seed + 7919)
        before = {label: game.full_value() for label, game in games.items()}
        players = FilterPlayers(pl_module, callback.layers, callback.ablation)
        if cfg["method"] == "prune":
            culprits = result.culprits(cfg["k"], negative=negative)
            if cfg["only_signed"]:
                sign = result.values[culprits]
                culprits = culprits[sign < 0] if negative else culprits[sign > 0]
            if len(culprits) == 0:
                rank_zero_info(f"[NeuronShapley] repair: no filter of {spec.name!r} has a harmful value.")
                handle = None
                what = f"pruned 0 filters ({spec.name})"
            else:
                handle = prune_filters(pl_module, players, culprits)
                names = [players.names[i] for i in culprits.tolist()]
                what = f"pruned {len(culprits)} culprits of {spec.name}: {names}"
        else:
            probs = guided_probabilities(result, cfg["p"], mode=cfg["mode"], k=cfg["k"], negative=negative)
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            dm = trainer.datamodule
            loader = dm.train_dataloader() if dm is not None else trainer.train_dataloader
            accelerator = "cpu" if pl_module.device.type == "cpu" else "gpu"
            finetune_with_dropout(
                pl_module, loader, probs, epochs=cfg["epochs"], layers=callback.layers, seed=callback.seed,
                accelerator=accelerator,
            )
            handle = None
            what = f"fine-tuned {cfg['epochs']} epochs with {cfg['mode']} filter dropout (mean p={cfg['p']})"
        after = {label: game.full_value() for label, game in games.items()}
        if not cfg["apply"]:
            if handle is not None:
                handle.undo()
            elif cfg["method"] == "dropout_finetune":
                pl_module.load_state_dict(state)
    rows = [
        {"metric": m, "before": before[m], "after": after[m], "change": after[m] - before[m]} for m in before
    ]
    if trainer.is_global_zero:
        table = [[r["metric"], r["before"], r["after"], r["change"]] for r in rows]
        log_table(trainer.loggers, "repair/report", REPORT_COLUMNS, table, trainer.global_step)
        scalars = {}
        for r in rows:
            key = r["metric"].split(" ")[0]
            scalars[f"repair/{key}_before"] = r["before"]
            scalars[f"repair/{key}_after"] = r["after"]
        log_scalars(trainer.loggers, scalars, trainer.global_step)
        out = callback.output_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        text = f"Repair: {what}\nMeasured on the {source} ({len(data)} examples).\n\n" + markdown(REPORT_COLUMNS, table)
        (out / "repair.md").write_text(text + "\n")
        if cfg["apply"]:
            torch.save(pl_module.state_dict(), out / "repaired_model.pt")
        rank_zero_info("\n" + text)
    return rows
