"""Adversarial repair (paper Fig. 3c): remove the filters that certified analyses find serve an attack, by semivalue.

The game is ``AdversarialGame(net_of_clean=True)`` (default): value = targeted attack success − clean accuracy of
the same coalition on the same validation images, so a filter's value is its help to the attack minus its help to
clean classification (``--game success`` plays attack success alone). Both decompose over examples, so ``tmab``
samples (coalition, example) pairs. The network: ``--data shapes`` (default) trains the 240-filter ``wide_cnn`` on
generated 32×32 RGB shapes (``experiment=shapes_cnn``); ``--data digits`` the 104-filter digits SmallCNN, about
a tenth of the cost per analysis (see the cost table).

For each trained network the adversarial examples are made once (targeted L∞ PGD, random wrong target per image)
on correctly classified validation images against the full model. Each method ranks the filters and its top k
(the filters that help the attack most) are zeroed with ``nsl.repair.prune_filters``:

- ``tmab <semivalue>``: a certified analysis (``experiments.certified``: ``tmab(tail="top")`` until its top
  ``--top-k`` are certified, or ``--max-rows`` rows) per semivalue of ``--semivalues``: Shapley weighs every
  coalition size alike, Banzhaf coalitions of about half the filters, Beta(1,4) and Beta(1,16) coalitions near the
  full model, where a repair acts;
- ``leave_one_out``: v(N) − v(N∖{i}) on the same game, the other extreme;
- ``integrated_gradients`` and ``taylor`` on the game's objective: the target class's probability (IG, all filters
  off → on) or log-probability (Taylor: Molchanov's gate-gradient × activation with its sign kept) on the
  adversarial examples, minus the true class's on the clean images for the net game (both scores are linear in
  the objective, so the difference is exact);
- ``random``: the mean over ``--n-random`` random orders per run.

Measured on TEST images never used in the analysis: transfer success (examples made against the unrepaired model),
adaptive success (made again against the repaired model, same targets and start), clean accuracy (the cost) and
clean accuracy − transfer success (one number for the trade-off). Error bars: one network per ``--train-seeds``
entry; the baselines once per network (deterministic), tmab per semivalue and random once per
``--estimator-seeds`` entry. Cells are mean ± sd over those runs, **bold** where a method differs from leave-one-out
at the same k by more than the two spreads (``seeds.clear``), † where it so differs from random. A cost table gives
each semivalue's rows, certified count and CPU seconds and the script's CPU and wall time; an auto-written verdict
line goes with every table. Analyses are cached under ``--cache`` by network identity (data, training seed,
epochs, channels, images, game and attack, a hash of the weights and images). Writes ``adversarial_repair.md`` and
``adversarial_repair.png`` to ``--out`` and logs both to one W&B run. ``--max-evals`` is refused (the budget is
``--max-rows``).

    python -m experiments.adversarial_repair --data digits    # 3 × 3 seeds, 4 semivalues
    python -m experiments.adversarial_repair                  # the shapes network: about 10× the CPU
    python -m experiments.adversarial_repair --quick          # smoke setting, seconds (shapley, banzhaf)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from experiments import certified, common, seeds
from experiments import repair_methods as rm
from nsl import FilterPlayers
from nsl.baselines import as_result, baseline_result
from nsl.games import AccuracyGame, AdversarialGame
from nsl.train import compose_config

NAME = "adversarial_repair"
KS = (0, 1, 2, 3, 5, 10, 20)
METRICS = ("transfer", "adaptive", "clean")
TRADE_OFF = "clean_minus_transfer"
DATA = {  # --data: training variant, default L-inf radius, default epochs, quick SmallCNN channels
    "shapes": ("shapes_cnn", 8 / 255, 6, (4, 6, 8, 10)),
    "digits": ("digits_cnn", 32 / 255, 15, (4, 6, 8)),
}
QUICK_SEMIVALUES = "shapley,banzhaf"
QUICK_ROWS = 20_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, NAME, quick="tiny smoke setting (small model, seconds)")
    common.add_removal_flags(p, KS, top_k_help="top contributors each certified analysis separates", n_random=2)
    for action in p._actions:  # the budget is --max-rows; --max-evals is refused below
        if action.dest == "max_evals":
            action.help = argparse.SUPPRESS
    seeds.add_seed_flags(p)
    certified.add_semivalue_flags(p)
    p.add_argument("--data", choices=sorted(DATA), default="shapes", help="generated shapes (wide CNN) or digits")
    p.add_argument("--game", choices=("net", "success"), default="net",
                   help="net: attack success − clean accuracy (default); success: attack success alone")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default 8/255 shapes, 32/255 digits)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--eval-size", type=int, default=100, help="validation images in the game (correctly classified)")
    p.add_argument("--test-size", type=int, default=200, help="test images measured")
    p.add_argument("--train-size", type=int, default=2000, help="generated training images (shapes only)")
    quick = {"epochs": 1, "n_random": 1, "top_k": 3, "steps": 3, "eval_size": 32, "test_size": 32, "train_size": 200,
             "semivalues": lambda v: QUICK_SEMIVALUES if v == certified.SEMIVALUES else v,
             "max_rows": lambda v: QUICK_ROWS if v == certified.MAX_ROWS else v}
    given = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] == "--max-evals" for a in given):
        raise ValueError("--max-evals no longer applies: every analysis is certified within --max-rows rows.")
    args = common.parse_removal_args(p, argv, quick=quick, positive=("steps", "eval_size", "test_size", "train_size"),
                                     check_filters=False)  # checked below, against the --data network
    experiment, eps, epochs, quick_channels = DATA[args.data]
    if not args.quick and not any(a.split("=")[0] == "--epochs" for a in given):
        args.epochs = epochs  # the network's own default
    args.experiment = experiment
    args.channels = quick_channels if args.quick else None  # None: the variant's own network
    n_filters = sum(args.channels or compose_config([f"experiment={experiment}"]).model.net.channels)
    if args.ks[-1] > n_filters:
        raise ValueError(f"--ks asks to remove {args.ks[-1]} filters; the {args.data} network has only {n_filters}.")
    args.eps = eps if args.eps is None else args.eps
    if not 0 < args.eps <= 1:
        raise ValueError(f"--eps={args.eps} must be an L-inf radius in (0, 1] (inputs lie in [0, 1]).")
    return certified.finish_semivalue_args(args)


def attack_metrics(transfer: AdversarialGame, clean: AccuracyGame, attack: dict[str, Any]) -> dict[str, float]:
    """Transfer and adaptive attack success, clean accuracy, and clean accuracy − transfer success of the model as
    it is now.

    ``transfer`` holds examples made against the unrepaired model; the adaptive attack is made afresh against
    the model as it is with ``attack`` (same options and seed, so the same targets and start points).
    """
    adaptive = AdversarialGame(clean.model, clean.players, clean.inputs, clean.targets, **attack)
    row = {"transfer": transfer.full_value(), "adaptive": adaptive.full_value(), "clean": clean.full_value()}
    row[TRADE_OFF] = row["clean"] - row["transfer"]
    return row


def correctly_classified(model: torch.nn.Module, x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The first ``size`` of the images the model classifies correctly (an attack on a miss means nothing)."""
    with torch.inference_mode():
        keep = model(x).argmax(1) == y
    return x[keep][:size], y[keep][:size]


Images = tuple[Tensor, Tensor]


def train(args: argparse.Namespace, seed: int) -> tuple[Any, FilterPlayers, Images, Images]:
    """The network of ``--data`` trained with ``seed``, its filters, the game's and the test images."""
    overrides = [f"data.train_size={args.train_size}"] if args.data == "shapes" else []
    model, dm = common.train_model(args.experiment, epochs=args.epochs, seed=seed, channels=args.channels,
                                   overrides=overrides)
    x_val, y_val = dm.tensors("val")[:2]
    x_test, y_test = dm.tensors("test")[:2]
    return (model, FilterPlayers(model), correctly_classified(model, x_val, y_val, args.eval_size),
            (x_test[: args.test_size], y_test[: args.test_size]))


def network_key(args: argparse.Namespace, t: int, model: torch.nn.Module, game: AdversarialGame) -> str:
    """What a cached analysis of this network's adversarial game depends on."""
    channels = "-".join(map(str, args.channels)) if args.channels else "default"
    size = f"|train_size={args.train_size}" if args.data == "shapes" else ""
    return (f"{args.experiment}|train_seed={t}|epochs={args.epochs}|channels={channels}{size}"
            f"|eval={len(game.attack_labels)}|game=adversarial:{args.game}:pgd:eps={args.eps:.6f}:steps={args.steps}"
            f":targeted:seed={t}|fingerprint={rm.fingerprint(model, game.clean_inputs, game.true_labels)}")


def one_network(args: argparse.Namespace, t: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The network trained with seed ``t``: its baseline rankings and curves (once), and every estimator seed's
    analyses and curves."""
    start = time.perf_counter()
    model, players, (x_val, y_val), (x_test, y_test) = train(args, t)
    attack = {"attack": "pgd", "eps": args.eps, "steps": args.steps, "targeted": True}
    net = args.game == "net"
    game = AdversarialGame(model, players, x_val, y_val, seed=t, net_of_clean=net, **attack)
    test_attack = {**attack, "seed": t + 1}
    transfer = AdversarialGame(model, players, x_test, y_test, **test_attack)
    clean = AccuracyGame(model, players, x_test, y_test)
    v_full, v_empty = game.full_value(), game.empty_value()
    print(f"train seed {t}: {len(players)} filters trained in {time.perf_counter() - start:.0f} s; game on "
          f"{len(y_val)} correct validation images, v(N) = {v_full:+.3f}, v(∅) = {v_empty:+.3f}; "
          f"test: clean {clean.full_value():.3f}, attack success {transfer.full_value():.3f}")

    def measure() -> dict[str, float]:
        return attack_metrics(transfer, clean, test_attack)

    k_max = args.ks[-1]
    rankings: dict[str, Tensor] = {}
    cpu: dict[str, float] = {}
    clock = time.process_time()
    loo = baseline_result("leave_one_out", model, players, k=k_max, game=game)
    rankings[rm.LOO] = loo.culprits(k_max)
    cpu[rm.LOO] = time.process_time() - clock
    # the game's objective: the attack's target class on its examples, minus (net game) the true class on the clean
    parts = [(game.adversarial_inputs, game.attack_labels, 1.0)]
    if net:
        parts.append((game.clean_inputs, game.true_labels, -1.0))
    for name in rm.BASELINE_METHODS[1:]:
        clock = time.process_time()
        scores = rm.objective_scores(name, model, players, parts)
        rankings[name] = as_result(scores, players, name, k=k_max).culprits(k_max)
        cpu[name] = time.process_time() - clock
    curves = {name: common.removal_rows(model, players, order, args.ks, measure) for name, order in rankings.items()}
    key = network_key(args, t, model, game)
    network = {"train_seed": t, "model": model, "players": players, "game": game, "rankings": rankings,
               "curves": curves, "baseline_cpu": cpu, "loo_evals": loo.n_evals, "n_images": len(y_val),
               "v_full": v_full, "v_empty": v_empty, "key": key}
    runs = []
    for e in args.estimator_seeds:
        results, spent, culprits, semivalue_curves = rm.semivalue_runs(
            args, game, key, e, tail="top", negative=False, k_max=k_max, model=model, players=players,
            measure=measure, describe=lambda c: f"k={k_max}: transfer {c[-1]['transfer']:.3f}, clean "
                                               f"{c[-1]['clean']:.3f}")
        run_curves = {**curves, **semivalue_curves}
        randoms = common.random_orders(len(players), args.n_random, 1000 * t + e)
        run_curves[rm.RANDOM] = common.mean_rows(
            [common.removal_rows(model, players, o, args.ks, measure) for o in randoms])
        runs.append({"train_seed": t, "estimator_seed": e, "results": results, "culprits": culprits,
                     "curves": run_curves, "cpu": spent,
                     "filters": {m: [players.names[i] for i in c.tolist()] for m, c in culprits.items()},
                     "v_full": v_full, "v_empty": v_empty, "n_images": len(y_val)})
    return network, runs


def plot(ks: tuple[int, ...], names: tuple[str, ...], stats: dict[str, list[dict[str, seeds.Spread]]],
         per_run: dict[str, list[list[dict[str, float]]]], path: Path, title: str) -> None:
    """Left: transfer success against clean accuracy, one point per k with ±1 sd in both directions. Right:
    transfer success against k, ±1 sd bands (adaptive success is in the tables)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    for name in names:
        style = rm.line_style(name, names)
        rows = stats[name]
        left.errorbar([r["clean"].mean for r in rows], [r["transfer"].mean for r in rows],
                      xerr=[r["clean"].sd for r in rows], yerr=[r["transfer"].sd for r in rows], marker="o", ms=3,
                      capsize=2, label=name, **style)
        seeds.band(right, ks, [[r["transfer"] for r in c] for c in per_run[name]], label=name, marker="o", ms=3,
                   **style)
    left.set(xlabel="clean test accuracy", ylabel="transfer attack success on test images",
             title="success against clean accuracy (k grows leftwards)")
    left.invert_xaxis()
    right.set(xlabel="filters removed (k)", ylabel="transfer attack success", title=title, ylim=(-0.02, 1.02))
    left.legend(fontsize=7)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns the per-run curves, their spreads and the report paths (for tests)."""
    args = parse(argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    networks, runs, names, tmab_names, per_run, stats = rm.gather(args, one_network)

    baseline_cost = {rm.LOO: f"{networks[0]['loo_evals']} evaluations per network"}
    baseline_cost.update({name: "the game's images per network" for name in rm.BASELINE_METHODS[1:]})
    agreement_rows, analyses, cost = rm.culprits_and_costs(args, runs, networks, tmab_names, baseline_cost)
    cpu_total, wall_total = time.process_time() - cpu_start, time.perf_counter() - start

    verdicts = [
        rm.verdict(args.ks, stats, names, "transfer", higher=False, measure="Transfer success",
                   beside=("clean", "clean")),
        rm.verdict(args.ks, stats, names, "adaptive", higher=False, measure="Adaptive success",
                   beside=("clean", "clean")),
        rm.verdict(args.ks, stats, names, "clean", higher=True, measure="Clean accuracy",
                   beside=("transfer", "transfer")),
        rm.verdict(args.ks, stats, names, TRADE_OFF, higher=True, measure="Clean accuracy − transfer success",
                   beside=("transfer", "transfer")),
        rm.cost_line(analyses, cpu_total, wall_total),
    ]
    tables = {
        "Transfer attack success on test images by method and k": rm.method_table(args.ks, stats, names, "transfer"),
        "Adaptive attack success (made against the repaired model)": rm.method_table(args.ks, stats, names,
                                                                                     "adaptive"),
        "Clean test accuracy (the cost)": rm.method_table(args.ks, stats, names, "clean"),
        "Clean accuracy − transfer success (the trade-off)": rm.method_table(args.ks, stats, names, TRADE_OFF),
        "Culprits shared by two estimator seeds on the same network": (["k", *tmab_names], agreement_rows),
        "Cost of the analyses": (rm.COST_COLUMNS, cost),
    }

    n_filters = len(networks[0]["players"])
    sizes = seeds.spread(n["n_images"] for n in networks)
    game_text = ("attack success − clean accuracy (net_of_clean)" if args.game == "net" else "attack success alone")
    before = stats[rm.RANDOM][0]
    header = (
        f"## Adversarial repair on {args.data}, certified analyses by semivalue\n\n"
        f"{n_filters} filters ({args.experiment}, {args.epochs} epochs). Game: {game_text}, targeted L∞ PGD "
        f"(eps = {args.eps * 255:.0f}/255, {args.steps} steps, random wrong target per image) made once per network "
        f"on {sizes.mean:.0f} correctly classified validation images (per-example sampling); certified tmab(top_k="
        f"{args.top_k}, tail='top', max_rows={args.max_rows:,}) per semivalue; integrated_gradients / taylor (signed) "
        f"on the game's objective. Top k of each ranking zeroed; measured on {args.test_size} test images: transfer = "
        f"examples made against the unrepaired model, adaptive = made again against the repaired model. The "
        f"baselines are deterministic per network (their spread is over training seeds only); random = mean of "
        f"{seeds.plural(args.n_random, 'order')} per run. {seeds.seed_note(args)} **Bold**: differs from "
        f"leave_one_out at the same k by more than the two spreads; †: so differs from random. Before: transfer "
        f"success {before['transfer']}, clean accuracy {before['clean']}.\n\n" + "\n".join(f"- {v}" for v in verdicts)
    )
    png = common.png_path(args, NAME)
    plot(args.ks, names, stats, per_run, png, f"{args.data}: removing the attack's top filters ({n_filters} filters)")
    summary: dict[str, float] = {"seconds": wall_total, "cpu_seconds": cpu_total, "runs": float(len(runs))}
    for name in names:
        key = rm.slug(name)
        for i, k in enumerate(args.ks):
            for m in (*METRICS, TRADE_OFF):
                summary[f"{key}/{m}_at_{k}"] = stats[name][i][m].mean
                summary[f"{key}/{m}_at_{k}_sd"] = stats[name][i][m].sd
    rm.cost_summary(summary, analyses)
    paths = common.report(NAME, args, start, tables=tables, images={"attack_success_vs_clean": png},
                          summary=summary, header=header)
    return {"ks": args.ks, "names": names, "runs": runs, "networks": networks, "stats": stats, "per_run": per_run,
            "verdicts": verdicts, "summary": summary, "args": args, **paths}


if __name__ == "__main__":
    common.run_script(main)
