"""The rankings the repair experiments compare, and the tables that compare them.

A repair removes a few filters from the full model. The fairness and adversarial repair scripts rank the filters
with certified ``tmab`` analyses under several semivalues (:mod:`experiments.certified`), with the baselines of
:mod:`nsl.baselines` (leave-one-out on the same game; Integrated Gradients and a signed Taylor criterion on the
game's objective) and with random orders, then tabulate each measure per method and k as mean ± sd over
training × estimator seeds.

- :func:`methods`: the table columns, one per semivalue, then :data:`BASELINE_METHODS` and ``random``.
- :func:`signed_taylor`, :func:`objective_scores`: gradient scores of an objective given as weighted example sets
  (e.g. adversarial success minus clean accuracy), for a ranking that needs a sign.
- :func:`fingerprint`: the trained network's and its images' identity in an analysis cache key.
- :func:`method_table`, :func:`verdict`, :func:`agreement`, :func:`cost_rows`, :func:`line_style`: the report's
  pieces.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import torch
from torch import Tensor, nn

from experiments import certified, common, seeds
from nsl import FilterPlayers
from nsl.baselines import baseline_scores
from nsl.players import preserve_mode
from nsl.shapley import ShapleyResult

LOO = "leave_one_out"
RANDOM = "random"
#: Deterministic given the network: computed once per network, their spread is over training seeds only.
BASELINE_METHODS = (LOO, "integrated_gradients", "taylor")
#: One term of an objective: (inputs, the class whose probability counts, weight of the mean over these inputs).
Part = tuple[Tensor, Tensor, float]


def methods(semivalues: Sequence[str]) -> tuple[str, ...]:
    """The column order: ``tmab <semivalue>`` per semivalue, then the baselines, then ``random``."""
    return (*(certified.method_name(s) for s in semivalues), *BASELINE_METHODS, RANDOM)


BASELINE_STYLE = {LOO: ("tab:blue", ":"), "integrated_gradients": ("tab:green", "-."),
                  "taylor": ("tab:purple", "-."), RANDOM: ("gray", "--")}


def line_style(name: str, names: Sequence[str]) -> dict[str, Any]:
    """Plot colour and line style of a method: tmab semivalues solid in shades of red, baselines their own."""
    if name in BASELINE_STYLE:
        color, linestyle = BASELINE_STYLE[name]
        return {"color": color, "linestyle": linestyle}
    tmab = [n for n in names if n not in BASELINE_STYLE]
    shade = 0.95 - 0.5 * tmab.index(name) / max(1, len(tmab) - 1)
    return {"color": matplotlib.colormaps["Reds"](shade), "linestyle": "-"}


def slug(name: str) -> str:
    """A W&B-safe key: ``"tmab beta(1,4)"`` -> ``"tmab_beta_1_4"``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def fingerprint(model: nn.Module, *tensors: Tensor) -> str:
    """A short hash of every parameter and buffer and of ``tensors`` (the evaluation images): two trainings that
    differ in one bit (the torch thread count changes a trained network) never share a cached analysis."""
    h = hashlib.sha1()
    for name, t in [*sorted(model.state_dict().items()), *((f"data{i}", t) for i, t in enumerate(tensors))]:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- gradient scores


def signed_taylor(
    model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor, *, batch_size: int = 256
) -> Tensor:
    """Per filter, the mean over the examples of ∂ log p(target | x) / ∂g at g = 1, for a gate g on the filter's
    channel (``fill + g·(a − fill)``, so g = 0 is the filter removed), float64 (N,).

    Removing filter i changes the mean log-probability by about −score_i. ``nsl.baselines.taylor`` (Molchanov et
    al. 2017) is the absolute value of the same product for the loss −log p; a repair needs the sign, which tells
    a filter that serves the objective from one that works against it.
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    fills = players.fill_values()
    sums = [torch.zeros(layer.size, dtype=torch.float64) for layer in players.layers]
    captured: dict[int, Tensor] = {}

    def make(i: int):
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
            if i in captured:
                raise RuntimeError(f"{players.layers[i].mask_at} ran twice in one forward pass.")
            captured[i] = out

        return hook

    handles = [modules[layer.mask_at].register_forward_hook(make(i)) for i, layer in enumerate(players.layers)]
    try:
        with preserve_mode(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for start in range(0, len(inputs), batch_size):
                captured.clear()
                x = inputs[start : start + batch_size].to(device).detach().clone().requires_grad_(True)
                y = targets[start : start + batch_size].to(device, torch.long).clone()
                objective = model(x).log_softmax(-1).gather(1, y[:, None]).sum()
                outs = [captured[i] for i in range(len(players.layers))]
                grads = torch.autograd.grad(objective, outs, allow_unused=True)
                for i, (layer, out, grad) in enumerate(zip(players.layers, outs, grads, strict=True)):
                    if grad is None:  # this layer does not reach the output
                        continue
                    cdim = layer.channel_dim % out.dim()
                    shape = [1] * out.dim()
                    shape[cdim] = layer.size
                    product = grad * (out.detach() - fills[i].to(out.dtype).reshape(shape))
                    sums[i] += product.movedim(cdim, -1).reshape(-1, layer.size).sum(0).double().cpu()
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()
    return torch.cat(sums) / len(inputs)


def objective_scores(name: str, model: nn.Module, players: FilterPlayers, parts: Sequence[Part]) -> Tensor:
    """``integrated_gradients`` (``nsl.baselines``: correct-class probability, all filters off → on) or ``taylor``
    (:func:`signed_taylor`) of the objective Σ weight · mean over a part's inputs, float64 (N,).

    Both are linear in the objective, so a difference of two example sets (adversarial success on the attack's
    examples minus clean accuracy on the clean images) is the difference of their scores."""
    total = torch.zeros(len(players), dtype=torch.float64)
    for inputs, targets, weight in parts:
        if name == "taylor":
            scores = signed_taylor(model, players, inputs, targets)
        elif name == "integrated_gradients":
            scores = baseline_scores(name, model, players, inputs, targets)
        else:
            raise ValueError(f"objective_scores takes integrated_gradients or taylor, got {name!r}.")
        total += float(weight) * scores
    return total


# ------------------------------------------------------------------------------------------------ tables


def best_index(stats: Sequence[Mapping[str, seeds.Spread]], key: str, *, higher: bool, start: int = 0) -> int:
    """The row (k index, from ``start``) with the best mean of ``key``; ties go to the smallest k."""
    sign = 1 if higher else -1
    return max(range(start, len(stats)), key=lambda i: (sign * stats[i][key].mean, -i))


def method_table(
    ks: Sequence[int], stats: Mapping[str, Sequence[Mapping[str, seeds.Spread]]], names: Sequence[str], key: str
) -> tuple[list[str], list[list[Any]]]:
    """Columns k and one per method; cells mean ± sd of ``key``, **bold** where the method differs from
    leave-one-out at the same k by more than the two spreads, † where it so differs from random."""
    rows = []
    for i, k in enumerate(ks):
        row: list[Any] = [k]
        for name in names:
            s = stats[name][i][key]
            text = format(s)
            if name != LOO and seeds.clear(s, stats[LOO][i][key]):
                text = f"**{text}**"
            if name != RANDOM and seeds.clear(s, stats[RANDOM][i][key]):
                text += " †"
            row.append(text)
        rows.append(row)
    return ["k", *names], rows


def verdict(
    ks: Sequence[int],
    stats: Mapping[str, Sequence[Mapping[str, seeds.Spread]]],
    names: Sequence[str],
    key: str,
    *,
    higher: bool,
    measure: str,
    beside: tuple[str, str] | None = None,
) -> str:
    """One line: which method reaches the best ``key`` after removing k ≥ 1 filters (and whether that is clearly
    better than removing none), whether any ``tmab`` semivalue is clearly better than leave-one-out at some k, and
    which semivalue does best. ``beside`` = (key, label): a second measure quoted at the best point."""
    if len(ks) < 2:
        return f"{measure}: no k ≥ 1 measured."
    better = "higher" if higher else "lower"

    def point(name: str) -> str:
        i = best_index(stats[name], key, higher=higher, start=1)
        text = f"{name} at k = {ks[i]}: {stats[name][i][key]}"
        if beside is not None:
            text += f" ({beside[1]} {stats[name][i][beside[0]]})"
        return text

    sign = 1 if higher else -1
    reached = {n: stats[n][best_index(stats[n], key, higher=higher, start=1)][key].mean for n in names}
    ranked = sorted(names, key=lambda n: -sign * reached[n])  # stable: ties keep the column order
    best = ranked[0]
    i = best_index(stats[best], key, higher=higher, start=1)
    gained = (stats[best][i][key].mean > stats[best][0][key].mean) == higher
    vs_zero = ("clearly " + better if seeds.clear(stats[best][i][key], stats[best][0][key]) and gained
               else "not clearly " + better) + f" than k = 0 ({stats[best][0][key]})"
    tmab = [n for n in names if n.startswith("tmab ")]
    wins: dict[str, list[int]] = {}
    losses: dict[str, list[int]] = {}
    for name in tmab:
        for j in range(1, len(ks)):
            a, b = stats[name][j][key], stats[LOO][j][key]
            if seeds.clear(a, b):
                side = wins if (a.mean > b.mean) == higher else losses
                side.setdefault(name.removeprefix("tmab "), []).append(ks[j])

    def listed(found: dict[str, list[int]]) -> str:
        return "; ".join(f"{sv} at k = {', '.join(map(str, at))}" for sv, at in found.items())

    if wins:
        against = f"tmab beats leave_one_out clearly: {listed(wins)}"
    else:
        against = "no tmab semivalue beats leave_one_out clearly at any k"
    if losses:
        against += f" (clearly worse: {listed(losses)})"
    line = f"**{measure}** ({better} is better): best {point(best)}, {vs_zero}; {against}."
    if tmab:
        line += f" Best semivalue: {point(next(n for n in ranked if n in tmab))}."
    return line


def agreement(culprits: Sequence[tuple[int, Tensor]], ks: Sequence[int]) -> list[float]:
    """Per k, the mean share of the first k culprits two runs on the same network (same training seed) have in
    common; NaN for k = 0 or when no network has two runs."""
    shares: list[float] = []
    for k in ks:
        pairs = [len(set(a[:k].tolist()) & set(b[:k].tolist())) / k
                 for (ta, a), (tb, b) in itertools.combinations(culprits, 2) if k and ta == tb]
        shares.append(sum(pairs) / len(pairs) if pairs else float("nan"))
    return shares


def cost_rows(
    analyses: Mapping[str, Sequence[ShapleyResult]], spent: Mapping[str, float], baselines: Mapping[str, str]
) -> list[list[Any]]:
    """Per semivalue: analyses, :func:`experiments.certified.cost_cell`, median wall seconds and the CPU seconds
    this run spent (near 0 where the analyses came from the cache); then one row per baseline (its text)."""
    rows: list[list[Any]] = []
    for name, results in analyses.items():
        wall = statistics.median(r.seconds for r in results) if results else float("nan")
        rows.append([name, len(results), certified.cost_cell(results), f"{wall:.1f}", f"{spent.get(name, 0.0):.0f}"])
    for name, text in baselines.items():
        rows.append([name, "–", text, "–", "–"])
    return rows


def gather(args: Any, one_network: Any) -> tuple[list[Any], list[Any], tuple[str, ...], tuple[str, ...], dict, dict]:
    """Run ``one_network(args, t)`` per training seed; return the networks, the runs, the method names, the tmab
    names, each method's curves (one per run; the deterministic baselines one per network) and their spreads."""
    networks, runs = [], []
    for t in args.train_seeds:
        network, network_runs = one_network(args, t)
        networks.append(network)
        runs.extend(network_runs)
    names = methods(args.semivalue_list)
    per_run = {name: [n["curves"][name] for n in networks] if name in BASELINE_METHODS
               else [r["curves"][name] for r in runs] for name in names}
    stats = {name: seeds.spread_rows(curves) for name, curves in per_run.items()}
    return networks, runs, names, names[: len(args.semivalue_list)], per_run, stats


def culprits_and_costs(
    args: Any, runs: Sequence[Mapping[str, Any]], networks: Sequence[Mapping[str, Any]], tmab_names: Sequence[str],
    baseline_cost: dict[str, str],
) -> tuple[list[list[Any]], dict[str, list[ShapleyResult]], list[list[Any]]]:
    """The culprits-shared table (per k, the share of culprits two estimator seeds on one network agree on), each
    semivalue's analyses, and the cost table (``baseline_cost``: a text per baseline, to which the CPU is added)."""
    shared = {name: agreement([(r["train_seed"], r["culprits"][name]) for r in runs], args.ks) for name in tmab_names}
    agreement_rows = [[k, *("–" if shared[n][i] != shared[n][i] else f"{shared[n][i]:.2f}" for n in tmab_names)]
                      for i, k in enumerate(args.ks)]
    analyses = {name: [r["results"][name] for r in runs] for name in tmab_names}
    spent = {name: sum(r["cpu"][name] for r in runs) for name in tmab_names}
    texts = {name: f"{text}, {sum(n['baseline_cpu'][name] for n in networks):.1f} s CPU in all"
             for name, text in baseline_cost.items()}
    return agreement_rows, analyses, cost_rows(analyses, spent, texts)


def semivalue_runs(
    args: Any, game: Any, key: str, seed: int, *, tail: str, negative: bool, k_max: int, model: nn.Module,
    players: FilterPlayers, measure: Any, describe: Any,
) -> tuple[dict[str, ShapleyResult], dict[str, float], dict[str, Tensor], dict[str, list[dict[str, float]]]]:
    """One estimator seed's certified analysis per ``--semivalues`` entry, its k_max culprits (``negative``: the
    most negative) and the measures after removing them (:func:`experiments.common.removal_rows`); prints one line
    per semivalue ending with ``describe(curve)``. Returns results, CPU seconds, culprits and curves by method."""
    results, spent, culprits, curves = {}, {}, {}, {}
    for sv in args.semivalue_list:
        method = certified.method_name(sv)
        clock = time.process_time()
        results[method] = certified.certified(game, semivalue=sv, seed=seed, top_k=args.top_k, tail=tail,
                                              max_rows=args.max_rows, cache=args.cache, key=key)
        spent[method] = time.process_time() - clock
        culprits[method] = results[method].culprits(k_max, negative=negative)
        if len(culprits[method]) < k_max:
            print(f"  warning: {method} ranks only {len(culprits[method])} filters (k up to {k_max})")
        curves[method] = common.removal_rows(model, players, culprits[method], args.ks, measure)
        r = results[method]
        print(f"  estimator seed {seed}, {method}: {r.n_rows or 0:,} rows, certified={r.converged}, "
              f"{certified.cpu_seconds(r):.0f} s CPU; {describe(curves[method])}")
    return results, spent, culprits, curves


def cost_line(analyses: Mapping[str, Sequence[ShapleyResult]], cpu_total: float, wall_total: float) -> str:
    """The report's cost verdict: per semivalue how many analyses were certified and their CPU, then the script's."""
    parts = [f"{n.removeprefix('tmab ')} {sum(bool(r.converged) for r in rs)}/{len(rs)} certified, "
             f"{sum(certified.cpu_seconds(r) for r in rs):.0f} s CPU" for n, rs in analyses.items()]
    return f"**Cost**: {'; '.join(parts)}; the script {cpu_total:.0f} s CPU (this process), {wall_total:.0f} s wall."


def cost_summary(summary: dict[str, float], analyses: Mapping[str, Sequence[ShapleyResult]]) -> None:
    """Add each semivalue's certified count, median rows and CPU seconds to a W&B summary."""
    for name, results in analyses.items():
        key = slug(name)
        summary[f"{key}/certified"] = float(sum(bool(r.converged) for r in results))
        summary[f"{key}/rows_median"] = float(torch.tensor([float(r.n_rows or 0) for r in results]).median())
        summary[f"{key}/cpu_seconds"] = sum(certified.cpu_seconds(r) for r in results)


COST_COLUMNS = ["method", "analyses", "median rows, certified, CPU when computed", "median wall s",
                "CPU s in this run"]

__all__ = [
    "BASELINE_METHODS",
    "BASELINE_STYLE",
    "COST_COLUMNS",
    "LOO",
    "RANDOM",
    "agreement",
    "best_index",
    "cost_line",
    "cost_rows",
    "cost_summary",
    "culprits_and_costs",
    "fingerprint",
    "gather",
    "line_style",
    "method_table",
    "methods",
    "objective_scores",
    "semivalue_runs",
    "signed_taylor",
    "slug",
    "verdict",
]
