"""Per-row coalitions: each row of a batch plays its own coalition, and the prefix below the first player layer is
cached at a block boundary. Checked against evaluating every coalition on the whole evaluation set."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from conftest import assert_unchanged, snapshot
from nsl import AccuracyGame, FilterPlayers


@pytest.fixture(autouse=True)
def _one_thread(trained_model):
    """These tests check values and modes, not speed: one thread keeps them quick when other work shares the cores
    (two threads contending with other processes stall for seconds). The shared digits model is trained before,
    with the suite's usual threads, so it is the same network whichever test file trains it first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _SmallResNet(nn.Module):
    """A conv stem and two torchvision BasicBlocks (the second downsamples through a 1×1 conv on its skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 8)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=down)
        self.head = nn.Linear(16, 10)
        self.fail = False  # set by a test: the head raises, as a model failing mid-forward would

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        if self.fail:
            raise RuntimeError("simulated failure in the head")
        return self.head(x.mean(dim=(2, 3)))


class _LongSkip(nn.Module):
    """A U-Net-like skip: the head reads the stem's output, from below the player layers, next to theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        return self.head(torch.cat([self.body(s), s], dim=1).mean(dim=(2, 3)))


def _randomised(net: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """``net`` in eval mode with BatchNorm statistics away from the identity (so removals matter), and its own
    predictions on ``x`` as targets (v(N) = 1)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.3, 0.3)
        net.eval()
        return net, net(x).argmax(1)


def _coalitions(r: int, n: int, generator: torch.Generator) -> Tensor:
    """R coalitions as an estimator draws them: a random scan position p, then a random set of p players removed."""
    p = torch.randint(0, n + 1, (r, 1), generator=generator)
    rank = torch.rand(r, n, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank >= p


def _digits(model, digits_val):
    x, y = digits_val
    return model, x[:60], y[:60], None  # every conv of the trained digits CNN plays


def _residual(_model, digits_val):
    x = digits_val[0][:60]
    net, y = _randomised(_SmallResNet(), x)
    return net, x, y, None


@pytest.fixture(params=[_digits, _residual], ids=["digits_cnn", "residual"])
def network(request, model, digits_val):
    return request.param(model, digits_val)


def _per_example_terms(game: AccuracyGame, present: Tensor) -> Tensor:
    """u_e(S) for every coalition and every example, from one full-set evaluation per coalition: (K, E)."""
    k, e = present.shape[0], len(game.inputs)
    rows = torch.arange(e).repeat(k)
    with torch.inference_mode(), game.players.mask(present):
        logits = game.model(game.inputs.repeat(k, *([1] * (game.inputs.dim() - 1))))
    return game.example_score(logits, rows).reshape(k, e)


# ------------------------------------------------------------------------------- per row = per coalition
def test_per_row_logits_equal_each_row_alone(network):
    net, x, _, layers = network
    players = FilterPlayers(net, layers=layers)
    gen = torch.Generator().manual_seed(1)
    present = _coalitions(24, len(players), gen)
    rows = torch.randint(0, len(x), (24,), generator=gen)
    with torch.inference_mode():
        with players.mask(present):
            batch = net(x[rows])
        alone = []
        for r in range(24):
            with players.mask(present[r]):
                alone.append(net(x[rows[r] : rows[r] + 1]))
        plain = net(x[rows])
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batch, plain, atol=1e-3)  # the coalitions really changed the logits


@pytest.mark.parametrize("share_prefix", [True, False])
def test_example_values_equal_terms_of_full_set_evaluation(network, share_prefix):
    net, x, y, layers = network
    players = FilterPlayers(net, layers=layers)
    game = AccuracyGame(net, players, x, y, share_prefix=share_prefix)
    gen = torch.Generator().manual_seed(2)
    coalitions = _coalitions(6, len(players), gen)
    terms = _per_example_terms(game, coalitions)
    which = torch.randint(0, 6, (80,), generator=gen)
    examples = torch.randint(0, len(x), (80,), generator=gen)
    values = game.example_values(coalitions[which], examples)
    assert values.dtype == torch.float64 and values.shape == (80,)
    torch.testing.assert_close(values, terms[which, examples], rtol=0, atol=0)
    assert 0 < float(values.mean()) < 1  # some rows right, some wrong: the comparison means something
    # the weighted sum of the per-example terms is the game's value, coalition by coalition
    torch.testing.assert_close(game.example_offset + terms @ game.example_weights, game(coalitions), rtol=0, atol=1e-6)
    assert game.n_rows == 80 + 6 * len(x)


def test_digits_cnn_reads_its_input_directly_so_there_is_no_prefix_to_cache(model, digits_val):
    x, y = digits_val
    game = AccuracyGame(model, FilterPlayers(model), x, y)
    assert game.prefix_module is None  # the first conv reads the model's input: nothing below it to skip
    last = AccuracyGame(model, FilterPlayers(model, layers="net.features.7"), x, y)  # the third conv, after a pool
    assert last.prefix_module == "net.features.7"


# ------------------------------------------------------------------------- prefix cache at block boundaries
def test_resnet18_layer4_caches_the_block_input_and_keeps_the_values():
    # torchvision's own ImageNet stem keeps 32×32 inputs cheap here; the benchmark measures the 32×32 stem
    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    x = torch.randn(32, 3, 32, 32)
    with torch.inference_mode():
        y = net(x).argmax(1)
    before = snapshot(net)
    players = FilterPlayers(net, layers="layer4.*")
    cached = AccuracyGame(net, players, x, y)
    plain = AccuracyGame(net, players, x, y, share_prefix=False)
    # layer4.0.conv1's input is not a prefix (the block's downsample skip reads it too); the block's input is
    assert cached.prefix_module == "layer4.0"
    assert plain.prefix_module is None
    gen = torch.Generator().manual_seed(3)
    present = _coalitions(48, len(players), gen)
    examples = torch.randint(0, len(x), (48,), generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(
            cached._rows_forward(present, examples), plain._rows_forward(present, examples), rtol=1e-4, atol=1e-4
        )
    values = cached.example_values(present, examples)
    torch.testing.assert_close(values, plain.example_values(present, examples), rtol=0, atol=0)
    assert 0 < float(values.mean()) < 1
    # the full-set path uses the same cache where its own layer cache does not hold
    coalitions = _coalitions(3, len(players), gen)
    torch.testing.assert_close(cached(coalitions), plain(coalitions), rtol=0, atol=0)
    assert cached._verified[("prefix", "layer4.0")] is True
    assert_unchanged(net, before)


def test_residual_net_block_cache_follows_weight_changes(digits_val):
    x = digits_val[0][:60]
    net, y = _randomised(_SmallResNet(), x)
    players = FilterPlayers(net, layers="layer2.*")
    game = AccuracyGame(net, players, x, y)
    assert game.prefix_module == "layer2"
    gen = torch.Generator().manual_seed(4)
    present = _coalitions(40, len(players), gen)
    examples = torch.randint(0, len(x), (40,), generator=gen)
    game.example_values(present, examples)
    old = game._prefix_cache.clone()
    with torch.no_grad():  # an optimizer step or load_state_dict changes weights in place like this
        net.stem[0].weight.mul_(-0.5)
    plain = AccuracyGame(net, players, x, y, share_prefix=False)
    torch.testing.assert_close(game.example_values(present, examples), plain.example_values(present, examples))
    assert not torch.equal(game._prefix_cache, old)  # retaken from the new weights
    assert game.prefix_module == "layer2"


def test_long_skip_around_the_players_falls_back_to_plain_rows(digits_val):
    x = digits_val[0][:60]
    net, y = _randomised(_LongSkip(), x)
    before = snapshot(net)
    players = FilterPlayers(net, layers="body.*")
    game = AccuracyGame(net, players, x, y)
    plain = AccuracyGame(net, players, x, y, share_prefix=False)
    gen = torch.Generator().manual_seed(5)
    present = _coalitions(50, len(players), gen)
    examples = torch.randint(0, len(x), (50,), generator=gen)
    values = game.example_values(present, examples)
    assert game.prefix_module is None  # body.0 and body both read the stem output the head reads too
    torch.testing.assert_close(values, plain.example_values(present, examples), rtol=0, atol=0)
    torch.testing.assert_close(values, _per_example_terms(game, present)[torch.arange(50), examples], rtol=0, atol=0)
    assert_unchanged(net, before)


def test_model_left_exactly_as_before_after_per_row_evaluation_and_after_an_exception(digits_val):
    x = digits_val[0][:40]
    net, y = _randomised(_SmallResNet(), x)
    net.train()  # the analysis runs in eval mode and must restore training mode
    net.layer1.eval()  # ... and a mixed state too
    before = snapshot(net)
    players = FilterPlayers(net, layers="layer2.*")
    present = _coalitions(20, len(players), torch.Generator().manual_seed(6))
    examples = torch.arange(20)
    game = AccuracyGame(net, players, x, y)
    game.example_values(present, examples)
    assert game.prefix_module == "layer2"
    assert_unchanged(net, before)
    net.fail = True  # raises inside the forward pass while the cache hook and the masks are on
    with pytest.raises(RuntimeError, match="simulated"):
        game.example_values(present, examples)
    assert_unchanged(net, before)
    with pytest.raises(RuntimeError, match="simulated"):
        game(present[:3])
    assert_unchanged(net, before)
    net.fail = False
    fresh = AccuracyGame(net, players, x, y)
    net.fail = True  # fails while the cache is being chosen: nothing is kept, the next call chooses again
    with pytest.raises(RuntimeError, match="simulated"):
        fresh.example_values(present, examples)
    assert_unchanged(net, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    net.fail = False
    assert fresh.prefix_module == "layer2"
    torch.testing.assert_close(fresh.example_values(present, examples), game.example_values(present, examples))
    assert_unchanged(net, before)


def test_examples_must_match_the_rows(model, digits_val):
    x, y = digits_val
    game = AccuracyGame(model, FilterPlayers(model), x, y)
    present = torch.ones(3, len(game.players), dtype=torch.bool)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        game.example_values(present, torch.arange(4))
    with pytest.raises(ValueError, match=r"\[0, 199\]"):
        game.example_values(present, torch.tensor([0, 1, 200]))
