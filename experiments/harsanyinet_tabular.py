"""HarsanyiNet on breast cancer: accuracy next to an ordinary MLP of about the same size, and a check that
its one-pass Shapley values are exact.

Both networks are trained with a real Lightning Trainer (``nsl.models.Classifier``, AdamW, CPU). Exactness
check: brute-force Shapley values by enumerating all 2^12 coalitions of 12 input features (the 12 with the
largest mean |φ| on the test set), every other feature held at the baseline 0 (= the training mean, as
the features are standardised), for every test sample and both class logits; compared with
``net.shapley(x)`` on the same inputs, in float32 (as trained) and float64.

    python -m experiments.harsanyinet_tabular
    python -m experiments.harsanyinet_tabular --data wine --epochs 80
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import lightning as L
import torch
from torch import nn

from experiments import common
from nsl.data import TabularDataModule
from nsl.models import Classifier, HarsanyiNet
from nsl.shapley import coalitions, shapley_from_values


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_like(in_features: int, num_classes: int, depth: int, budget: int) -> nn.Sequential:
    """A ReLU MLP with ``depth`` equal hidden layers whose parameter count is closest to ``budget``."""

    def build(width: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        width_in = in_features
        for _ in range(depth):
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
        return nn.Sequential(*layers, nn.Linear(width_in, num_classes))

    best = min(range(2, 1025), key=lambda w: abs(n_params(build(w)) - budget))
    return build(best)


def fit_and_test(
    net: nn.Module, data: TabularDataModule, args: argparse.Namespace
) -> tuple[Classifier, float]:
    L.seed_everything(args.seed, verbose=False)
    model = Classifier(net, num_classes=data.num_classes, lr=args.lr, weight_decay=0.0)
    run = common.quiet_trainer(args.epochs)
    run.fit(model, data)
    return model.eval(), float(run.test(model, data, verbose=False)[0]["test/acc"])


def brute_force_shapley(net: HarsanyiNet, x: torch.Tensor, players: list[int]) -> torch.Tensor:
    """Shapley values (B, len(players), C) by enumerating every coalition of ``players``; the rest at 0."""
    masks = coalitions(len(players))
    present = torch.zeros(len(masks), x.shape[1], dtype=torch.bool)
    present[:, players] = masks
    with torch.no_grad():  # (2^k, B, C), a few hundred coalitions per forward pass
        values = torch.cat([net.masked_forward(x, chunk) for chunk in present.split(256)]).double()
    b, c = values.shape[1:]
    return torch.stack(
        [torch.stack([shapley_from_values(values[:, i, k]) for k in range(c)], -1) for i in range(b)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="breast_cancer", choices=["breast_cancer", "wine"])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="HarsanyiNet layer widths")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--players", type=int, default=12, help="features enumerated in the exactness check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    data = TabularDataModule(args.data, seed=args.seed)
    L.seed_everything(args.seed, verbose=False)
    harsanyi_net = HarsanyiNet(data.num_features, data.num_classes, hidden=args.hidden)
    budget = n_params(harsanyi_net)
    mlp = mlp_like(data.num_features, data.num_classes, len(args.hidden), budget)

    hn_model, hn_acc = fit_and_test(harsanyi_net, data, args)
    mlp_model, mlp_acc = fit_and_test(mlp, data, args)
    x_test, _ = data.tensors("test")
    print(f"\n{args.data}: {data.num_features} standardised features, {data.num_classes} classes, "
          f"{len(x_test)} test samples, {args.epochs} epochs each")
    print(f"{'model':<34}{'parameters':>11}{'test acc':>10}")
    print(f"{'HarsanyiNet ' + str(tuple(args.hidden)):<34}{budget:>11}{hn_acc:>10.4f}")
    widths = tuple(m.out_features for m in mlp if isinstance(m, nn.Linear))[:-1]
    print(f"{'MLP ' + str(widths):<34}{n_params(mlp_model):>11}{mlp_acc:>10.4f}")

    net = hn_model.net.eval()
    with torch.no_grad():
        phi_all = net.shapley(x_test)  # (B, d, C), one forward pass
        efficiency = float((phi_all.sum(1) - net(x_test)).abs().max())
    k = min(args.players, data.num_features)
    players = torch.argsort(phi_all.abs().mean(dim=(0, 2)), descending=True)[:k].sort().values.tolist()
    x_sub = torch.zeros_like(x_test)
    x_sub[:, players] = x_test[:, players]  # every other feature at the baseline 0

    errors = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        model = copy.deepcopy(net).to(dtype)
        x = x_sub.to(dtype)
        with torch.no_grad():
            phi = model.shapley(x).double()
        brute = brute_force_shapley(model, x, players)
        others = [i for i in range(data.num_features) if i not in players]
        at_baseline = float(phi[:, others].abs().max()) if others else 0.0
        errors[name] = (float((phi[:, players] - brute).abs().max()), at_baseline, float(brute.abs().max()))
    print(f"\nexactness of HarsanyiNet.shapley(x): {k} features enumerated (2^{k} = {2**k} coalitions) "
          f"for {len(x_test)} test samples x {data.num_classes} logits; other {data.num_features - k} "
          "at baseline 0")
    print(f"  features: {[data.feature_names[i] for i in players]}")
    for name, (err, other, scale) in errors.items():
        print(f"  {name}: max |shapley(x) - brute force| = {err:.3g}  (max |phi| = {scale:.3g}; "
              f"max |phi| of features at the baseline = {other:.3g})")
    print(f"  efficiency on the full inputs: max |sum_i phi_i - f(x)| = {efficiency:.3g} (f(baseline) = 0)")
    units = torch.cat(net.receptive_fields()).sum(1)
    print(f"  receptive-field sizes of the {len(units)} units: min {int(units.min())}, median "
          f"{int(units.median())}, max {int(units.max())} (each unit is one interaction of that order)")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    if not math.isfinite(errors["float64"][0]) or errors["float64"][0] > 1e-6:
        raise SystemExit("HarsanyiNet.shapley is not exact")


if __name__ == "__main__":
    main()
