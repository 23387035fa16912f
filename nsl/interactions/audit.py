"""Audit of cheap importance scores against the exact Harsanyi decomposition of a small game.

Every attribution method studied here is linear in the game, so it hands each Harsanyi dividend I(S) out to
the players in fixed shares: ``a_i = Σ_S W[i, S] · I(S)`` (the unified view of Deng et al. 2023, where
each method is one choice of W). The allocation W of a method is measured by differentiating its
attributions with respect to the dividends, and then checked against three principles:

1. an effect of i alone, I({i}), goes all and only to i: ``W[:, {i}] = e_i``;
2. an interaction I(S) goes only to members of S: ``W[j, S] = 0`` for j ∉ S;
3. everything is allocated exactly once: ``Σ_j W[j, S] = 1``, hence ``Σ_i a_i = v(N) − v(∅)``.

Gradient methods need a differentiable game. For filters they act on channel gates g ∈ [0, 1]ⁿ
(0 = filter off, 1 = on); the gate game used here is the multilinear extension
``f(g) = Σ_S I(S) Π_{j∈S} g_j = E[v(S_g)]`` (each filter kept with probability g_j), the unique smooth
game that agrees with v on every coalition. On it (closed forms of the seed paper for κ ∈ {0, 1}ⁿ):
Gradient×Input at g = 1 (baseline 0) gives W[i, S] = 1 for i ∈ S — the same as leave-one-out; exact
integrated gradients give 1/|S| — the Shapley value; an m-step Riemann sum gives the quadrature of
t^{|S|−1}, so it errs on interactions of order ≥ 3 (midpoint rule) or ≥ 2 (left/right rules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nsl.games.base import Game
from nsl.interactions.harsanyi import (
    banzhaf_from_dividends,
    check_interaction_game,
    coalition_sizes,
    harsanyi,
    inverse_mobius,
    n_players_of_table,
    shapley_from_dividends,
)
from nsl.interactions.subgame import game_names
from nsl.registry import Registry
from nsl.validation import check_choice, check_int

MAX_AUDIT_PLAYERS = 16
IG_RULES = ("midpoint", "left", "right")


# ---------------------------------------------------------------------------- the gate game


def product_table(gates: Tensor) -> Tensor:
    """``Π_{j∈S} g_j`` for every coalition S (by bitmask): gates (..., n) -> (..., 2ⁿ), differentiable."""
    table = torch.ones(*gates.shape[:-1], 1, dtype=gates.dtype, device=gates.device)
    for i in range(gates.shape[-1]):
        table = torch.cat([table, table * gates[..., i : i + 1]], dim=-1)
    return table


def multilinear_extension(dividends: Tensor) -> Callable[[Tensor], Tensor]:
    """The gate game ``f(g) = Σ_S I(S) Π_{j∈S} g_j`` for gates g (..., n) in [0, 1]; ``f(1_S) = v(S)``."""
    n = n_players_of_table(dividends, "dividends")
    d = dividends.double()

    def f(gates: Tensor) -> Tensor:
        if gates.shape[-1] != n:
            raise ValueError(f"gates must have {n} entries in the last dimension, got {tuple(gates.shape)}.")
        return product_table(gates.double()) @ d

    return f


def _gate_gradients(dividends: Tensor, points: Tensor) -> Tensor:
    """∂f/∂g of the gate game at each of ``points`` (P, n), shape (P, n); differentiable in the dividends."""
    g = points.double().detach().requires_grad_(True)
    with torch.enable_grad():
        values = multilinear_extension(dividends)(g)
        (grad,) = torch.autograd.grad(values.sum(), g, create_graph=dividends.requires_grad)
    return grad


# ---------------------------------------------------------------------------- the methods


def occlusion1(dividends: Tensor) -> Tensor:
    """Leave-one-out: ``v(N) − v(N∖{i})`` for each player i, shape (n,)."""
    n = n_players_of_table(dividends, "dividends")
    values = inverse_mobius(dividends)
    full = 2**n - 1
    return values[full] - values[torch.tensor([full ^ (1 << i) for i in range(n)], dtype=torch.long)]


def gradient_x_input(dividends: Tensor) -> Tensor:
    """Gradient×Input on the gates: ``∂f/∂g_i(1) · (1 − 0)`` (gradient×activation summed over a channel)."""
    n = n_players_of_table(dividends, "dividends")
    return _gate_gradients(dividends, torch.ones(1, n))[0]


def ig_nodes(steps: int, rule: str = "midpoint") -> Tensor:
    """Points t_k in [0, 1] of an m-step Riemann sum (equal weights 1/m)."""
    check_int("steps", steps, low=1)
    check_choice("rule", rule, IG_RULES)
    k = torch.arange(steps, dtype=torch.float64)
    shift = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[rule]
    return (k + shift) / steps


def integrated_gradients_from_dividends(dividends: Tensor, steps: int = 20, rule: str = "midpoint") -> Tensor:
    """Integrated gradients on the gates from g = 0 to g = 1 along the diagonal, m-step Riemann sum.

    The exact gate game's IG (not :func:`nsl.baselines.integrated_gradients`, which runs Captum on a network).
    """
    n = n_players_of_table(dividends, "dividends")
    t = ig_nodes(steps, rule)
    grads = _gate_gradients(dividends, t[:, None] * torch.ones(1, n, dtype=torch.float64))
    return grads.mean(dim=0)  # × (input − baseline) = 1


@dataclass(frozen=True)
class AuditMethod:
    """An attribution method the audit knows: its label and ``attribute(dividends, ig_steps, ig_rule) -> (n,)``."""

    label: str
    attribute: Callable[[Tensor, int, str], Tensor]


AUDIT_METHODS: Registry[AuditMethod] = Registry("audit method")
AUDIT_METHODS.register("occlusion1", AuditMethod("leave-one-out (Occlusion-1)", lambda d, _s, _r: occlusion1(d)))
AUDIT_METHODS.register(
    "gradient_x_input",
    AuditMethod("gradient×activation (Grad×Input on gates)", lambda d, _s, _r: gradient_x_input(d)),
)
AUDIT_METHODS.register(
    "integrated_gradients", AuditMethod("integrated gradients (gates)", integrated_gradients_from_dividends)
)
AUDIT_METHODS.register("shapley", AuditMethod("Shapley", lambda d, _s, _r: shapley_from_dividends(d)))
AUDIT_METHODS.register("banzhaf", AuditMethod("Banzhaf", lambda d, _s, _r: banzhaf_from_dividends(d)))


def attribute(method: str, dividends: Tensor, *, ig_steps: int = 20, ig_rule: str = "midpoint") -> Tensor:
    """Attributions (n,) of ``method`` (registered in :data:`AUDIT_METHODS`) for the game with these dividends."""
    return AUDIT_METHODS[method].attribute(dividends, ig_steps, ig_rule)


def allocation_matrix(
    method: str, n_players: int, *, ig_steps: int = 20, ig_rule: str = "midpoint"
) -> Tensor:
    """W (n, 2ⁿ): the share of each dividend I(S) that ``method`` gives each player, ``a = W @ I``.

    Measured, not assumed: W is the Jacobian of the method's attributions with respect to the dividends
    (every method here is linear in the game), so column S is the method applied to the unanimity game u_S.
    """
    valid = isinstance(n_players, int) and not isinstance(n_players, bool)
    if not valid or not 1 <= n_players <= MAX_AUDIT_PLAYERS:
        raise ValueError(f"n_players={n_players!r} must be an int in [1, {MAX_AUDIT_PLAYERS}].")
    check_choice("method", method, AUDIT_METHODS)
    zero = torch.zeros(2**n_players, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda d: attribute(method, d, ig_steps=ig_steps, ig_rule=ig_rule), zero, create_graph=False
    )
    return jac.detach()


# ---------------------------------------------------------------------------- the audit


@dataclass
class AuditRow:
    """How one method allocates the dividends of the audited game.

    Share errors are properties of the method (game-free, 0 means the principle holds for every game of n
    players); the value columns weight them by |I(S)| of this game, in the game's units.
    """

    method: str
    attributions: list[float]
    total: float  # Σ_i a_i
    target: float  # v(N) − v(∅)
    p1_share_error: float  # max_i Σ_j |W[j,{i}] − δ_ij|
    p2_share_leak: float  # max_{|S|≥2} Σ_{j∉S} |W[j,S]|
    p3_share_error: float  # max_{S≠∅} |Σ_j W[j,S] − 1|
    p1_misallocated: float  # Σ_i Σ_j |W[j,{i}] − δ_ij| · |I({i})|
    p2_leaked: float  # Σ_{|S|≥2} Σ_{j∉S} |W[j,S]| · |I(S)|
    p3_misallocated: float  # Σ_S |Σ_j W[j,S] − 1| · |I(S)|
    satisfies: tuple[bool, bool, bool]

    @property
    def gap(self) -> float:
        """Σ_i a_i − (v(N) − v(∅)): what is allocated twice (>0) or not at all (<0)."""
        return self.total - self.target

    @property
    def label(self) -> str:
        return AUDIT_METHODS[self.method].label if self.method in AUDIT_METHODS else self.method

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "label": self.label,
            "attributions": list(self.attributions),
            "total": self.total,
            "target": self.target,
            "gap": self.gap,
            "p1_share_error": self.p1_share_error,
            "p2_share_leak": self.p2_share_leak,
            "p3_share_error": self.p3_share_error,
            "p1_misallocated": self.p1_misallocated,
            "p2_leaked": self.p2_leaked,
            "p3_misallocated": self.p3_misallocated,
            "satisfies": list(self.satisfies),
        }


@dataclass
class AttributionAudit:
    """The audit table: one :class:`AuditRow` per method, for a game of ``len(names)`` players."""

    rows: list[AuditRow]
    names: list[str]
    dividends: Tensor
    full_value: float
    empty_value: float
    ig_steps: int
    ig_rule: str
    allocations: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __getitem__(self, method: str) -> AuditRow:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(method)

    def as_dicts(self) -> list[dict]:
        return [row.as_dict() for row in self.rows]

    def to_markdown(self, digits: int = 4) -> str:
        return render_markdown(self, digits)


def allocation_report(
    weights: Tensor, dividends: Tensor, tol: float = 1e-9
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[bool, bool, bool]]:
    """Share errors, value-weighted errors and verdicts of an allocation W (n, 2ⁿ) for principles 1-3."""
    n = weights.shape[0]
    sizes = coalition_sizes(n)
    masks = torch.arange(2**n, dtype=torch.long)
    member = ((masks[None, :] >> torch.arange(n)[:, None]) & 1).bool()  # (n, 2ⁿ)
    mag = dividends.double().abs()
    singles = torch.tensor([1 << i for i in range(n)], dtype=torch.long)
    err1 = (weights[:, singles] - torch.eye(n, dtype=torch.float64)).abs().sum(dim=0)  # per i
    big = sizes >= 2
    leak = (weights.abs() * (~member)).sum(dim=0)[big]
    nonempty = sizes >= 1
    err3 = (weights.sum(dim=0) - 1).abs()[nonempty]
    shares = (
        float(err1.max()),
        float(leak.max()) if leak.numel() else 0.0,
        float(err3.max()),
    )
    values = (
        float((err1 * mag[singles]).sum()),
        float((leak * mag[big]).sum()) if leak.numel() else 0.0,
        float((err3 * mag[nonempty]).sum()),
    )
    return shares, values, (shares[0] <= tol, shares[1] <= tol, shares[2] <= tol)


def audit(
    source: Game | Tensor,
    *,
    methods: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    ig_steps: int = 20,
    ig_rule: str = "midpoint",
    tol: float = 1e-9,
    batch_size: int = 4096,
) -> AttributionAudit:
    """Audit ``methods`` (default: every registered one) on a small game (≤ 16 players) or its dividends (2ⁿ).

    For a game, all 2ⁿ coalitions are evaluated once (:func:`harsanyi`). Returns the table of
    allocations, principle checks and attributions; ``.to_markdown()`` renders it.
    """
    if isinstance(source, Tensor):
        dividends = source.detach().double().cpu()
        n = n_players_of_table(dividends, "dividends")
        default_names = [str(i) for i in range(n)]
    else:
        n = check_interaction_game(source, MAX_AUDIT_PLAYERS)
        dividends = harsanyi(source, batch_size)
        default_names = game_names(source, n)
    if n > MAX_AUDIT_PLAYERS:
        raise ValueError(f"the audit is limited to n <= {MAX_AUDIT_PLAYERS} players; got n={n}.")
    methods = list(AUDIT_METHODS.names() if methods is None else methods)
    unknown = [m for m in methods if m not in AUDIT_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods={methods!r}: choose among {AUDIT_METHODS.names()}.")
    ig_nodes(ig_steps, ig_rule)  # validates both
    names = list(names) if names is not None else default_names
    if len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} players.")
    values = inverse_mobius(dividends)
    full, empty = float(values[-1]), float(values[0])
    rows, allocations = [], {}
    for method in methods:
        weights = allocation_matrix(method, n, ig_steps=ig_steps, ig_rule=ig_rule)
        attributions = attribute(method, dividends, ig_steps=ig_steps, ig_rule=ig_rule).detach()
        shares, misallocated, ok = allocation_report(weights, dividends, tol)
        rows.append(
            AuditRow(
                method=method,
                attributions=attributions.tolist(),
                total=float(attributions.sum()),
                target=full - empty,
                p1_share_error=shares[0],
                p2_share_leak=shares[1],
                p3_share_error=shares[2],
                p1_misallocated=misallocated[0],
                p2_leaked=misallocated[1],
                p3_misallocated=misallocated[2],
                satisfies=ok,
            )
        )
        allocations[method] = weights
    return AttributionAudit(rows, names, dividends, full, empty, ig_steps, ig_rule, allocations)


def _num(x: float, digits: int) -> str:
    return "0" if abs(x) < 10 ** (-digits - 2) else f"{x:.{digits}g}"


def render_markdown(table: AttributionAudit, digits: int = 4) -> str:
    """Two markdown tables: the principle checks per method, then every player's attribution per method."""
    mark = {True: "✓", False: "✗"}
    ig = f"{table.ig_steps}-step {table.ig_rule} rule"
    lines = [
        f"Game: {len(table.names)} players, v(N) = {_num(table.full_value, digits)}, "
        f"v(∅) = {_num(table.empty_value, digits)}, v(N) − v(∅) = "
        f"{_num(table.full_value - table.empty_value, digits)}; integrated gradients: {ig}.",
        "",
        "| method | Σ attributions | gap to v(N)−v(∅) | P1 alone→i: share err (value) | "
        "P2 only members: leak (value) | P3 exactly once: share err (value) | P1 | P2 | P3 |",
        "|---|---:|---:|---:|---:|---:|:-:|:-:|:-:|",
    ]
    for r in table.rows:
        lines.append(
            f"| {r.label} | {_num(r.total, digits)} | {_num(r.gap, digits)} | "
            f"{_num(r.p1_share_error, digits)} ({_num(r.p1_misallocated, digits)}) | "
            f"{_num(r.p2_share_leak, digits)} ({_num(r.p2_leaked, digits)}) | "
            f"{_num(r.p3_share_error, digits)} ({_num(r.p3_misallocated, digits)}) | "
            f"{mark[r.satisfies[0]]} | {mark[r.satisfies[1]]} | {mark[r.satisfies[2]]} |"
        )
    lines += ["", "| player | " + " | ".join(r.method for r in table.rows) + " |"]
    lines.append("|---|" + "---:|" * len(table.rows))
    for i, name in enumerate(table.names):
        lines.append(f"| {name} | " + " | ".join(_num(r.attributions[i], digits) for r in table.rows) + " |")
    return "\n".join(lines)
