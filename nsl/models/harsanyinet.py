"""HarsanyiNet (Chen et al., ICML 2023): networks whose exact Shapley values come out of one forward pass.

Every hidden unit u is an AND gate over a learned set of children (inputs, or units of the layer below):
its output is exactly 0 whenever any child is 0, so whenever any input of its receptive field R_u (the
inputs it depends on, through its children) sits at the baseline. Hence, with inputs outside S replaced by
the baseline, ``z_u(x_S) = z_u(x)·[R_u ⊆ S]``; the output is a bias-free linear readout of all units,
``y = Σ_u w_u z_u``, so unit u carries exactly one Harsanyi interaction (of the coalition R_u) and

    φ_i = Σ_{u : i ∈ R_u} w_u · z_u / |R_u|        (exact, for every class logit at once).

Children are chosen by a learned mask ``A = 1(τ > 0)`` (straight-through gradient ``β·σ'(τ)``), and the
gate of a unit is ``Π_{c ∈ children} tanh(γ·|z_c|)`` (0 exactly when a child is 0, smooth otherwise).

Both networks are plain ``nn.Module``s that return logits: train them as ``net`` inside
:class:`nsl.models.Classifier` (which logs ``train/acc`` and ``val/acc`` with torchmetrics), e.g.
``Classifier(HarsanyiNet(30, 2), num_classes=2)``; call ``model.net.shapley(x)`` afterwards.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _StraightThroughStep(torch.autograd.Function):
    """Forward ``1(τ > 0)``; backward the slope of a sigmoid, scaled by β (the paper's estimator)."""

    @staticmethod
    def forward(ctx, tau: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(tau)
        ctx.beta = beta
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau)
        return grad * ctx.beta * s * (1 - s), None


def children_mask(tau: Tensor, beta: float = 10.0) -> Tensor:
    """The 0/1 children mask ``1(τ > 0)`` with a straight-through gradient, same shape as ``tau``."""
    return _StraightThroughStep.apply(tau, beta)


def _and_gate(strength: Tensor, mask: Tensor) -> Tensor:
    """``Π_{c: mask=1} strength_c`` for each unit: strength (B, in) in [0, 1], mask (out, in) -> (B, out).

    Computed as ``exp(log(strength) @ maskᵀ)`` (memory B·out, not B·out·in), and set to exactly 0 where a
    child's strength is exactly 0, which is what makes the unit an AND gate.
    """
    tiny = torch.finfo(strength.dtype).tiny
    gate = torch.exp(torch.log(strength.clamp(min=tiny)) @ mask.T)
    closed = ((strength == 0).to(strength.dtype) @ mask.detach().T) > 0
    return gate.masked_fill(closed, 0.0)


def _init_tau(
    shape: tuple[int, int], n_children: Sequence[int] | int, initial: float, allowed: Tensor | None
) -> Tensor:
    """τ = −initial everywhere but at ``n_children`` random allowed children per unit (+initial)."""
    out, inp = shape
    tau = torch.full(shape, -initial)
    for u in range(out):
        pool = torch.arange(inp) if allowed is None else torch.nonzero(allowed[u]).flatten()
        k = n_children if isinstance(n_children, int) else n_children[u]
        pick = pool[torch.randperm(len(pool))[: max(1, min(k, len(pool)))]]
        tau[u, pick] = initial
    return tau


def _check_positive(name: str, value: object, kind: type = int) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and isinstance(value, int)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a positive {'int' if kind is int else 'number'}.")


class HarsanyiLayer(nn.Module):
    """A layer of Harsanyi units over ``in_features`` children candidates.

    ``z_u = ReLU(Σ_c A_uc W_uc z_c) · Π_{c: A_uc=1} tanh(γ|z_c|)``, children mask ``A = 1(τ > 0)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        beta: float = 10.0, gamma: float = 100.0, act_ratio: float = 0.1, initial_tau: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.beta, self.gamma = beta, gamma
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)
        k = max(1, round(act_ratio * in_features))
        self.tau = nn.Parameter(_init_tau((out_features, in_features), k, initial_tau, None))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, beta={self.beta}, gamma={self.gamma}"

    def mask(self) -> Tensor:
        """Children mask (out, in), 0/1, with a straight-through gradient to τ."""
        return children_mask(self.tau, self.beta)

    def forward(self, z: Tensor) -> Tensor:
        a = self.mask()
        linear = z @ (self.weight * a).T
        gate = _and_gate(torch.tanh(self.gamma * z.abs()), a)
        return F.relu(linear) * gate


class HarsanyiNet(nn.Module):
    """HarsanyiNet for tabular inputs (B, in_features) -> logits (B, num_classes), with exact Shapley values.

    The players are the input features; a feature is absent when it equals the baseline (the ``baseline``
    buffer, zeros by default: the mean of standardised features).

    Args:
        in_features: number of input features.
        num_classes: number of output logits.
        hidden: units per Harsanyi layer.
        beta: scale of the straight-through gradient of the children masks.
        gamma: sharpness of the AND gate, ``tanh(γ|z|)``.
        act_ratio: fraction of the layer below chosen as children of each unit at initialisation.
        initial_tau: |τ| at initialisation (+ for a child, − otherwise).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64, 64),
        *,
        beta: float = 10.0, gamma: float = 100.0, act_ratio: float = 0.1, initial_tau: float = 1.0,
    ) -> None:
        super().__init__()
        _check_positive("in_features", in_features)
        _check_positive("num_classes", num_classes)
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden={hidden!r} must list at least one positive layer width.")
        _check_positive("gamma", gamma, float)
        _check_positive("beta", beta, float)
        if not 0 < act_ratio <= 1:
            raise ValueError(f"act_ratio={act_ratio!r} must lie in (0, 1].")
        self.in_features, self.num_classes, self.hidden = in_features, num_classes, hidden
        widths = (in_features, *hidden)
        self.layers = nn.ModuleList(
            HarsanyiLayer(a, b, beta=beta, gamma=gamma, act_ratio=act_ratio, initial_tau=initial_tau)
            for a, b in itertools.pairwise(widths)
        )
        self.readout = nn.ModuleList(nn.Linear(h, num_classes, bias=False) for h in hidden)
        self.register_buffer("baseline", torch.zeros(in_features))

    @property
    def n_players(self) -> int:
        return self.in_features

    def _check(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"HarsanyiNet expects inputs of shape (B, {self.in_features}), got {shape}.")
        return x

    def units(self, x: Tensor) -> list[Tensor]:
        """Outputs of every Harsanyi layer, each (B, width)."""
        z = self._check(x) - self.baseline
        out = []
        for layer in self.layers:
            z = layer(z)
            out.append(z)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return sum(head(z) for head, z in zip(self.readout, self.units(x), strict=True))

    @torch.no_grad()
    def receptive_fields(self) -> list[Tensor]:
        """For each layer, which input features each unit depends on: bool (width, in_features)."""
        fields, below = [], None
        for layer in self.layers:
            a = (layer.tau > 0).float()
            below = a if below is None else a @ below
            below = (below > 0).float()
            fields.append(below.bool())
        return fields

    def unit_contributions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each unit's Harsanyi interaction: fields (U, in_features) bool, contributions (B, U, num_classes).

        The dividend of a coalition T is the sum of the contributions of the units with field T.
        """
        zs = self.units(x)
        fields = torch.cat(self.receptive_fields())
        parts = [z.unsqueeze(-1) * head.weight.T for head, z in zip(self.readout, zs, strict=True)]
        contrib = torch.cat(parts, dim=1)
        return fields, contrib

    def shapley(self, x: Tensor) -> Tensor:
        """Exact Shapley values of the inputs w.r.t. the baseline, every logit: (B, in_features, num_classes).

        ``φ.sum(1) == self(x) − self(baseline)`` (the second term is 0: the readout has no bias).
        """
        fields, contrib = self.unit_contributions(x)
        share = fields.to(contrib.dtype)
        share = share / share.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.einsum("buc,ui->bic", contrib, share)

    def masked_forward(self, x: Tensor, present: Tensor) -> Tensor:
        """Logits with each coalition's absent features at the baseline: present (K, n) -> (K, B, C)."""
        x = self._check(x)
        present = _check_present(present, self.in_features)
        k, b = present.shape[0], x.shape[0]
        keep = present.to(x.device)[:, None, :]
        masked = torch.where(keep, x.unsqueeze(0), self.baseline.to(x.dtype))
        return self(masked.reshape(k * b, -1)).reshape(k, b, -1)


def _check_present(present: Tensor, n: int) -> Tensor:
    if not isinstance(present, Tensor) or present.dtype != torch.bool:
        raise TypeError("present must be a torch.bool tensor of shape (n,) or (K, n).")
    if present.dim() not in (1, 2) or present.shape[-1] != n:
        raise ValueError(f"present has shape {tuple(present.shape)}; expected ({n},) or (K, {n}).")
    return present.reshape(-1, n)


class HarsanyiConvLayer(nn.Module):
    """Harsanyi units on a grid: unit (c, p) takes as children all channels at chosen positions of the
    3×3 neighbourhood of p (a mask per position, shared by the channels, as in the paper's code).

    ``z_{c,p} = ReLU(Σ_{k ∈ children(p)} W_c · z_{:, p+k}) · Π_{k ∈ children(p)} tanh(γ‖z_{:, p+k}‖₁)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grid: tuple[int, int],
        *,
        beta: float = 10.0, gamma: float = 1.0, act_ratio: float = 0.5, initial_tau: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.grid = in_channels, out_channels, tuple(grid)
        self.beta, self.gamma = beta, gamma
        h, w = self.grid
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        ones = torch.ones(1, 1, h, w)
        valid = F.unfold(ones, 3, padding=1)[0] > 0  # (9, h*w): neighbour inside the grid
        self.register_buffer("valid", valid)
        counts = valid.sum(0).tolist()
        k = [max(1, round(act_ratio * c)) for c in counts]
        self.tau = nn.Parameter(_init_tau((h * w, 9), k, initial_tau, valid.T).T.contiguous())

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, grid={self.grid}, gamma={self.gamma}"

    def mask(self) -> Tensor:
        """Children mask (9, h*w): neighbour k of position p is a child; never outside the grid."""
        return children_mask(self.tau, self.beta) * self.valid

    def forward(self, z: Tensor) -> Tensor:
        b, c, h, w = z.shape
        a = self.mask()
        patches = F.unfold(z, 3, padding=1).reshape(b, c, 9, h * w) * a
        linear = torch.einsum("bckp,ock->bop", patches, self.weight.reshape(self.out_channels, c, 9))
        strength = F.unfold(torch.tanh(self.gamma * z.abs().sum(1, keepdim=True)), 3, padding=1)  # (b, 9, hw)
        gate = (a * strength + (1 - a)).prod(dim=1)  # (b, hw)
        return (F.relu(linear) * gate.unsqueeze(1)).reshape(b, self.out_channels, h, w)

    @torch.no_grad()
    def fields(self, below: Tensor) -> Tensor:
        """Receptive fields (h*w, P) of this layer's positions from those of the layer below (h*w, P)."""
        h, w = self.grid
        a = ((self.tau > 0) & self.valid).float()
        maps = below.T.float().reshape(-1, 1, h, w)  # one map per player
        reach = (F.unfold(maps, 3, padding=1) * a).sum(1)  # (P, h*w)
        return (reach > 0).T


class HarsanyiCNN(nn.Module):
    """HarsanyiNet for images: a conv stem, then Harsanyi conv layers, then a bias-free linear readout.

    Players are the spatial positions of the first feature map ``z0 = ReLU(conv(x))`` (max-pooled 2×2 when
    ``stem_pool``), of size ``grid = (H0, W0)`` (= ``image_size``, or halved); player ``p = h·W0 + w``. A
    player is absent when its feature vector ``z0[:, :, h, w]`` is the baseline 0. ``shapley(x)`` has shape
    (B, H0·W0, num_classes).

    Args:
        in_channels: image channels.
        num_classes: number of output logits.
        image_size: (H, W) of the input images.
        channels: channels of the stem and of every Harsanyi layer.
        num_layers: Harsanyi layers.
        stem_pool: max-pool the stem output 2×2 (fewer, coarser players).
        beta, gamma, act_ratio, initial_tau: as in :class:`HarsanyiNet` (act_ratio over the 3×3 neighbours).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Sequence[int] = (8, 8),
        channels: int = 32,
        num_layers: int = 2,
        *,
        stem_pool: bool = False,
        beta: float = 10.0, gamma: float = 1.0, act_ratio: float = 0.5, initial_tau: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("channels", channels), ("num_layers", num_layers)):
            _check_positive(name, value)
        size = tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size={image_size!r} must be (H, W) with positive sizes.")
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, size
        self.grid = (size[0] // 2, size[1] // 2) if stem_pool else size
        if min(self.grid) < 1:
            raise ValueError(f"image_size={size} is too small for stem_pool=True.")
        stem: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        if stem_pool:
            stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem, nn.ReLU())
        self.layers = nn.ModuleList(
            HarsanyiConvLayer(
                channels, channels, self.grid, beta=beta, gamma=gamma, act_ratio=act_ratio,
                initial_tau=initial_tau,
            )
            for _ in range(num_layers)
        )
        n_units = channels * self.grid[0] * self.grid[1]
        self.readout = nn.ModuleList(nn.Linear(n_units, num_classes, bias=False) for _ in range(num_layers))
        for head in self.readout:
            nn.init.normal_(head.weight, 0.0, 1.0 / math.sqrt(n_units))

    @property
    def n_players(self) -> int:
        return self.grid[0] * self.grid[1]

    def features(self, x: Tensor) -> Tensor:
        """The first feature map z0 (B, channels, H0, W0), whose positions are the players."""
        expected = (self.in_channels, *self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"HarsanyiCNN expects images of shape (B, {self.in_channels}, {self.image_size[0]}, "
                f"{self.image_size[1]}), got {shape}."
            )
        return self.stem(x)

    def units(self, z0: Tensor) -> list[Tensor]:
        """Outputs of every Harsanyi layer from the first feature map, each (B, channels, H0, W0)."""
        if z0.dim() != 4 or tuple(z0.shape[2:]) != self.grid:
            h, w = self.grid
            raise ValueError(f"feature maps must be (B, C, {h}, {w}), got {tuple(z0.shape)}.")
        out, z = [], z0
        for layer in self.layers:
            z = layer(z)
            out.append(z)
        return out

    def forward_features(self, z0: Tensor) -> Tensor:
        """Logits from a (possibly masked) first feature map."""
        return sum(head(z.flatten(1)) for head, z in zip(self.readout, self.units(z0), strict=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(self.features(x))

    @torch.no_grad()
    def receptive_fields(self) -> list[Tensor]:
        """For each layer, which players (positions of z0) each position depends on: bool (H0·W0, H0·W0)."""
        fields, below = [], torch.eye(self.n_players, dtype=torch.bool, device=self.layers[0].tau.device)
        for layer in self.layers:
            below = layer.fields(below)
            fields.append(below)
        return fields

    def shapley(self, x: Tensor) -> Tensor:
        """Exact Shapley values of the players (positions of z0) for every logit: (B, H0·W0, num_classes)."""
        zs = self.units(self.features(x))
        phi = None
        for head, z, field in zip(self.readout, zs, self.receptive_fields(), strict=True):
            b, c, h, w = z.shape
            weight = head.weight.reshape(self.num_classes, c, h * w)
            per_position = torch.einsum("bcp,kcp->bpk", z.reshape(b, c, h * w), weight)  # (B, hw, classes)
            share = field.to(z.dtype)
            share = share / share.sum(dim=1, keepdim=True).clamp(min=1)
            term = torch.einsum("bpk,pq->bqk", per_position, share)
            phi = term if phi is None else phi + term
        return phi

    def masked_forward(self, x: Tensor, present: Tensor) -> Tensor:
        """Logits with absent positions of z0 zeroed: present (K, H0·W0) -> (K, B, num_classes)."""
        z0 = self.features(x)
        present = _check_present(present, self.n_players)
        k, (b, c, h, w) = present.shape[0], z0.shape
        keep = present.to(z0.device).reshape(k, 1, 1, h, w).to(z0.dtype)
        masked = (z0.unsqueeze(0) * keep).reshape(k * b, c, h, w)
        return self.forward_features(masked).reshape(k, b, -1)
