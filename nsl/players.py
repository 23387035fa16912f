"""Filters of a network as the players of a cooperative game.

A player is one output channel of a ``Conv2d`` (or one output feature of a ``Linear`` selected by name).
Switching a player off makes its channel reach the next layer as exactly zero (or as its mean activation,
or as the BatchNorm shift, depending on ``ablation``). Coalitions are applied with forward hooks that are
always removed again, so the model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ABLATIONS = ("zero", "mean", "bn_beta")
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class PlayerLayer:
    """One layer whose output channels are players.

    ``name`` is the selected module, ``mask_at`` the module whose output is masked (the BatchNorm that
    directly normalises a conv output, so that a removed channel really is zero downstream), ``offset`` the
    index of its first player and ``size`` its number of channels.
    """

    name: str
    mask_at: str
    offset: int
    size: int
    channel_dim: int  # 1 for conv feature maps, -1 for Linear features

    @property
    def players(self) -> range:
        return range(self.offset, self.offset + self.size)


def _check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation={ablation!r} is not supported; use one of {ABLATIONS}.")


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return module.out_features  # nn.Linear


def _closest_layers(pattern: str, available: list[str], hits: list[str]) -> str:
    """What to type instead of a layer pattern that selects nothing: the pattern under the prefix the names
    start with (``net.`` + ``layer4.*conv*``), without a prefix they lack, the layers inside a container it
    matched, else the names most like it; then the available layers."""
    def matching(candidate: str) -> list[str]:
        return [n for n in available if fnmatch.fnmatchcase(n, candidate)]

    candidates = [f"{hit}.*" for hit in hits]  # a container (a block, a Sequential): the layers inside it
    prefixes = sorted(  # a prefix the module names have and the pattern lacks: "net." before "layer4.*conv*"
        {name[: i + 1] for name in available for i, c in enumerate(name)
         if c == "." and fnmatch.fnmatchcase(name[i + 1:], pattern)}, key=len
    )
    candidates += [prefixes[0] + pattern, f"*.{pattern}"] if len(prefixes) > 1 else [p + pattern for p in prefixes]
    if not candidates:  # a prefix the pattern has and the module names lack: "model." before "net.layer4"
        parts = pattern.split(".")
        candidates = [".".join(parts[i:]) for i in range(1, len(parts)) if not parts[i].startswith(("*", "?", "["))]
    found = [(c, m) for c in dict.fromkeys(candidates) if (m := matching(c))][:3]
    more = " ..." if len(available) > 6 else ""
    listed = f"available layers include {available[:6]}{more} ({len(available)} in all)."
    if found:
        means = " or ".join(f"{c!r} (matches {len(m)}: {m[:4]}{' ...' if len(m) > 4 else ''})" for c, m in found)
        return f"did you mean {means}? Names are full module paths, as model.named_modules() gives them; {listed}"
    close = difflib.get_close_matches(pattern, available, n=4, cutoff=0.5)
    return (f"the closest layer names are {close}; " if close else "") + listed


def _select(model: nn.Module, layers: str | Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """Modules chosen by glob patterns over ``named_modules()`` names, in module order."""
    named = [(n, m) for n, m in model.named_modules() if n]
    candidates = [(n, m) for n, m in named if isinstance(m, (nn.Conv2d, nn.Linear))]
    if layers is None:
        chosen = [(n, m) for n, m in candidates if isinstance(m, nn.Conv2d)]
        if not chosen:
            kinds = sorted({type(m).__name__ for _, m in named})[:8]
            raise ValueError(
                f"{type(model).__name__} has no Conv2d layer, so it has no filters to analyse "
                f"(module types found: {kinds}). Select Linear layers by name with layers='<pattern>'."
            )
        return chosen
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"layers={layers!r} must be None, a glob pattern or a list of non-empty patterns.")
    available = [n for n, _ in candidates]
    chosen_names: set[str] = set()
    for pattern in patterns:
        hits = [n for n, _ in named if fnmatch.fnmatchcase(n, pattern)]
        usable = [n for n in hits if n in available]
        if not usable:
            what = (
                f"matches only {hits[:3]}, which are not Conv2d or Linear layers"
                if hits
                else "matches no module"
            )
            raise ValueError(f"layer pattern {pattern!r} {what}; {_closest_layers(pattern, available, hits)}")
        chosen_names.update(usable)
    return [(n, m) for n, m in candidates if n in chosen_names]


def _batchnorm_after(model: nn.Module, conv_names: list[str]) -> dict[str, str]:
    """Map each conv to the BatchNorm that is its only consumer, from the traced graph.

    Falls back to module order (a BatchNorm with matching width right after the conv) when the model
    cannot be traced symbolically.
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        order = list(modules)
        found = {}
        for name in conv_names:
            i = order.index(name)
            nxt = modules[order[i + 1]] if i + 1 < len(order) else None
            if isinstance(nxt, BATCHNORMS) and nxt.num_features == _out_channels(modules[name]):
                found[name] = order[i + 1]
        return found
    found = {}
    wanted = set(conv_names)
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            target = modules.get(users[0].target)
            if isinstance(target, BATCHNORMS):
                found[node.target] = users[0].target
    return found


class FilterPlayers:
    """The filters (output channels) of chosen layers of ``model``, numbered layer by layer.

    Args:
        model: the network; it is never modified, only hooked while a coalition is applied.
        layers: ``None`` for every ``Conv2d``, or a glob pattern / list of glob patterns over
            ``model.named_modules()`` names; ``Linear`` layers may be selected by name.
        ablation: how a removed filter is silenced: ``"zero"`` (its channel is exactly 0 at the next layer),
            ``"mean"`` (its mean activation on calibration data) or ``"bn_beta"`` (conv weights zeroed,
            BatchNorm shift kept, as in the original TensorFlow code).

    Example::

        >>> import torch
        >>> from nsl import FilterPlayers
        >>> from nsl.models import SmallCNN
        >>> model = SmallCNN(channels=(2, 3, 4)).eval()
        >>> players = FilterPlayers(model, layers="features.*")
        >>> len(players), players.names[:3]
        (9, ['features.0:0', 'features.0:1', 'features.3:0'])
        >>> x = torch.rand(5, 1, 8, 8)
        >>> present = torch.ones(3, len(players), dtype=torch.bool)
        >>> present[1, 0] = False  # coalition 1 lacks filter 0
        >>> with torch.no_grad(), players.mask(present):
        ...     logits = model(x.repeat(3, 1, 1, 1))  # row block k sees coalition k
        >>> logits.shape
        torch.Size([15, 10])
        >>> with torch.no_grad():
        ...     torch.allclose(logits[:5], model(x), atol=1e-6)  # coalition 0 has every filter on
        True
        >>> rows = torch.rand(5, len(players)) > 0.5  # per-row coalitions: row r of x sees rows[r]
        >>> with torch.no_grad(), players.mask(rows):
        ...     per_row = model(x)
        >>> with torch.no_grad(), players.mask(rows[2]):
        ...     torch.allclose(per_row[2:3], model(x[2:3]), atol=1e-6)  # as if row 2 ran alone
        True
    """

    def __init__(
        self, model: nn.Module, layers: str | Sequence[str] | None = None, ablation: str = "zero"
    ) -> None:
        _check_ablation(ablation)
        self.model = model
        self.ablation = ablation
        selected = _select(model, layers)
        convs = [n for n, m in selected if isinstance(m, nn.Conv2d)]
        bn_of = _batchnorm_after(model, convs)
        self.layers: list[PlayerLayer] = []
        offset = 0
        for name, module in selected:
            size = _out_channels(module)
            dim = 1 if isinstance(module, nn.Conv2d) else -1
            self.layers.append(PlayerLayer(name, bn_of.get(name, name), offset, size, dim))
            offset += size
        self.n_players = offset
        self.names = [f"{layer.name}:{c}" for layer in self.layers for c in range(layer.size)]
        self._layer_of = self.layer_index() if self.layers else torch.zeros(0, dtype=torch.long)
        modules = dict(model.named_modules())
        self._masked_modules = [modules[layer.mask_at] for layer in self.layers]
        self._zero_cache: tuple[list[Tensor] | None, list[bool]] = (None, [])  # (fills it was computed for, flags)
        self._fill: list[Tensor] | None = None if ablation == "mean" else self._constant_fill()

    def __len__(self) -> int:
        return self.n_players

    def __repr__(self) -> str:
        return f"FilterPlayers(n_players={self.n_players}, layers={len(self.layers)}, ablation={self.ablation!r})"

    def layer_index(self) -> Tensor:
        """Index of each player's layer, shape (N,)."""
        return torch.cat([torch.full((layer.size,), i) for i, layer in enumerate(self.layers)])

    @property
    def needs_calibration(self) -> bool:
        """True while ``ablation="mean"`` has no activation means yet (see :meth:`calibrate`)."""
        return self._fill is None

    def fill_values(self) -> list[Tensor]:
        """Per layer, the value each removed channel takes (0 for ``ablation="zero"``), as fresh copies.

        Raises when ``ablation="mean"`` has not been calibrated yet (see :meth:`calibrate`).
        """
        if self._fill is None:
            raise RuntimeError("ablation='mean' needs activation means: call players.calibrate(inputs) first.")
        return [fill.detach().clone() for fill in self._fill]

    def _constant_fill(self) -> list[Tensor]:
        """Per-layer values a removed channel takes for ``zero`` and ``bn_beta`` ablation."""
        modules = dict(self.model.named_modules())
        fills = []
        for layer in self.layers:
            ref = next(modules[layer.name].parameters())
            fill = torch.zeros(layer.size, dtype=ref.dtype, device=ref.device)
            if self.ablation == "bn_beta":
                conv = modules[layer.name]
                bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(fill)
                if layer.mask_at != layer.name:
                    bn = modules[layer.mask_at]
                    mean = bn.running_mean if bn.running_mean is not None else torch.zeros_like(fill)
                    var = bn.running_var if bn.running_var is not None else torch.ones_like(fill)
                    scale = bn.weight.detach() if bn.weight is not None else torch.ones_like(fill)
                    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(fill)
                    fill = (bias - mean) / torch.sqrt(var + bn.eps) * scale + shift
                else:
                    fill = bias
            fills.append(fill.detach().clone())
        return fills

    @torch.no_grad()
    def calibrate(self, inputs: Tensor, batch_size: int = 512) -> None:
        """Record each filter's mean activation on ``inputs`` (needed by ``ablation="mean"``)."""
        modules = dict(self.model.named_modules())
        sums = [torch.zeros(layer.size, dtype=torch.float64) for layer in self.layers]
        counts = [0] * len(self.layers)

        def make_hook(i: int, layer: PlayerLayer):
            def hook(_m, _inp, out):
                cdim = layer.channel_dim % out.dim()
                dims = [d for d in range(out.dim()) if d != cdim]
                sums[i] += out.detach().double().sum(dim=dims).cpu()
                counts[i] += out.numel() // layer.size

            return hook

        handles = []
        with preserve_mode(self.model):
            self.model.eval()
            try:
                for i, layer in enumerate(self.layers):
                    handles.append(modules[layer.mask_at].register_forward_hook(make_hook(i, layer)))
                for start in range(0, len(inputs), batch_size):
                    self.model(inputs[start : start + batch_size])
            finally:
                for h in handles:
                    h.remove()
        fills = []
        for s, n, layer in zip(sums, counts, self.layers, strict=True):
            ref = next(modules[layer.name].parameters())
            fills.append((s / max(n, 1)).to(dtype=ref.dtype, device=ref.device))
        self._fill = fills

    def check_present(self, present: Tensor) -> Tensor:
        """Validate a coalition mask and return it as (K, N) bool."""
        if not isinstance(present, Tensor):
            raise TypeError(f"present must be a torch.bool tensor of shape (N,) or (K, N), got {type(present)}.")
        if present.dtype != torch.bool:
            raise TypeError(f"present must have dtype torch.bool, got {present.dtype}.")
        if present.dim() not in (1, 2) or present.shape[-1] != self.n_players:
            raise ValueError(
                f"present has shape {tuple(present.shape)}; expected ({self.n_players},) or "
                f"(K, {self.n_players}) for {self.n_players} players."
            )
        if present.dim() == 1:
            present = present.unsqueeze(0)
        if present.shape[0] == 0:
            raise ValueError("present holds no coalition (K = 0).")
        return present

    def _first_layer(self, flags: Tensor) -> int | None:
        """Layer of the first True in a (N,) bool vector (layers are numbered in player order)."""
        hit = torch.nonzero(flags)
        return None if len(hit) == 0 else int(self._layer_of[int(hit[0, 0])])

    def _zero_fill(self) -> list[bool]:
        """Per layer: is the fill all zeros (so masking is a multiply or an index fill)? Cached per fill."""
        if self._zero_cache[0] is not self._fill:
            self._zero_cache = (self._fill, [bool((f == 0).all()) for f in self._fill or []])
        return self._zero_cache[1]

    def first_difference(self, present: Tensor) -> int | None:
        """Index of the first layer where the coalitions of a (K, N) mask differ; None if all rows are equal."""
        return self._first_layer((present != present[:1]).any(dim=0))

    def first_removal(self, present: Tensor) -> int | None:
        """Index of the first layer where some coalition of a (K, N) mask removes a player; None if none does."""
        return self._first_layer((~present).any(dim=0))

    @contextlib.contextmanager
    def mask(
        self,
        present: Tensor,
        *,
        expand_at: int | None = None,
        replace: tuple[int, Tensor] | None = None,
        capture: tuple[int, dict[int, Tensor]] | None = None,
    ) -> Iterator[None]:
        """Apply coalitions while the block runs: filter i is on where ``present[..., i]`` is True.

        With a (K, N) mask the model must be fed the evaluation batch tiled K times; row block k sees
        coalition k. Per-row coalitions are the case of blocks of one row: a (B, N) mask over a batch of B rows
        gives each row its own coalition (row r sees ``present[r]``), so one plain forward pass of B rows
        evaluates B (coalition, example) pairs. Hooks are removed when the block exits, also on error.

        Shared-prefix evaluation (used by the games; needs a network whose layers before ``expand_at`` feed
        nothing past it): with ``expand_at=i`` the model is fed the batch once, layers before ``i`` must have
        the same players in every coalition (their mask is applied once), and layer ``i`` tiles its output
        K times before masking, so the work below the first differing layer is done once instead of K times.
        ``replace=(j, activation)`` substitutes the output of layer ``j``'s masked module (an activation cached
        when no player below ``j`` was removed; the model may then be fed an empty batch), and
        ``capture=(j, store)`` saves ``store[j]`` = that output before masking, to build such a cache.
        """
        present = self.check_present(present)
        if self._fill is None:
            raise RuntimeError("ablation='mean' needs activation means: call players.calibrate(inputs) first.")
        k = present.shape[0]
        if expand_at is not None and not 0 <= expand_at < len(self.layers):
            raise ValueError(f"expand_at={expand_at!r} is not a layer index in [0, {len(self.layers) - 1}].")
        if expand_at is not None and k > 1:
            head = self.layers[expand_at].offset
            if not bool((present[:, :head] == present[:1, :head]).all()):
                raise ValueError(f"coalitions differ before layer {expand_at}; they cannot share its prefix.")
        handles = []
        # layers where some coalition removes a player, from one reduction instead of one check per layer
        touched = torch.zeros(len(self.layers), dtype=torch.bool)
        touched[self._layer_of[(~present).any(dim=0)]] = True
        wanted = {expand_at if k > 1 else None, replace[0] if replace else None, capture[0] if capture else None}
        try:
            for i in sorted(set(torch.nonzero(touched).squeeze(1).tolist()) | (wanted - {None})):
                layer, fill = self.layers[i], self._fill[i]
                keep = present[:, layer.offset : layer.offset + layer.size]
                if expand_at is not None and i < expand_at:
                    keep = keep[:1]  # shared below the split: one mask for every coalition
                at_split = expand_at == i and k > 1
                source = replace[1] if replace is not None and replace[0] == i else None
                store = capture[1] if capture is not None and capture[0] == i else None
                hook = _MaskHook(
                    keep,
                    fill,
                    self._zero_fill()[i],
                    keep.shape[0],
                    layer.channel_dim,
                    expand=k if at_split else 1,
                    source=source,
                    capture=(store, i) if store is not None else None,
                )
                handles.append(self._masked_modules[i].register_forward_hook(hook))
            yield
        finally:
            for h in handles:
                h.remove()


class _MaskHook:
    """Forward hook replacing removed channels; built once per coalition batch.

    Writes in place into the masked module's fresh output (no copy of the activation); only the removed
    channels are touched when one coalition covers every row.
    """

    def __init__(
        self,
        keep: Tensor,
        fill: Tensor,
        zero_fill: bool,
        k: int,
        channel_dim: int,
        *,
        expand: int = 1,
        source: Tensor | None = None,
        capture: tuple[dict[int, Tensor], int] | None = None,
    ) -> None:
        self.k = k
        self.channel_dim = channel_dim
        self.keep_bool = keep
        self.fill = fill
        self.expand = expand
        self.source = source
        self.capture = capture
        self.zero_fill = zero_fill
        self.removed = torch.nonzero(~keep[0]).squeeze(1) if self.k == 1 else None
        self._cache: dict[tuple, tuple[Tensor, Tensor | None]] = {}

    def _factors(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        key = (out.shape, out.dtype, out.device)
        if key not in self._cache:
            rows = out.shape[0]
            if rows % self.k:
                raise ValueError(
                    f"a batch of {rows} rows cannot hold {self.k} coalitions: tile the evaluation batch "
                    f"K={self.k} times (got {rows} rows)."
                )
            keep = self.keep_bool.to(device=out.device, dtype=out.dtype)  # (K, C)
            keep = keep.repeat_interleave(rows // self.k, dim=0)  # (K*B, C)
            fill = self.fill.to(device=out.device, dtype=out.dtype)
            shape = [rows] + [1] * (out.dim() - 1)
            cdim = self.channel_dim % out.dim()
            shape[cdim] = keep.shape[1]
            keep = keep.reshape(shape)
            if self.zero_fill:
                offset = None
            else:
                fshape = [1] * out.dim()
                fshape[cdim] = fill.shape[0]
                offset = (1 - keep) * fill.reshape(fshape)
            self._cache[key] = (keep, offset)
        return self._cache[key]

    def __call__(self, _module: nn.Module, inputs: tuple, out: Tensor) -> Tensor:
        if self.capture is not None:
            store, index = self.capture
            store[index] = out.detach().clone()
        if self.source is not None:
            out = self.source
        # A fresh output outside autograd may be written in place; the module's input (identity-like
        # modules), a cached activation or a tensor autograd may need may not.
        owned = self.source is None and not out.requires_grad and not any(
            isinstance(t, Tensor) and t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
            for t in inputs
        )
        if self.expand > 1:
            out = out.repeat(self.expand, *([1] * (out.dim() - 1)))
            owned = True
        if self.k == 1 and self.zero_fill:
            removed = self.removed.to(out.device)
            if len(removed) == 0:
                return out if owned else out.clone()  # a later in-place op must not reach the cache
            cdim = self.channel_dim % out.dim()
            return out.index_fill_(cdim, removed, 0) if owned else out.index_fill(cdim, removed, 0)
        keep, offset = self._factors(out)
        if owned:
            out.mul_(keep)
            return out if offset is None else out.add_(offset)
        return out * keep if offset is None else out * keep + offset


@contextlib.contextmanager
def preserve_mode(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag when the block exits (analyses switch to eval mode inside)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
