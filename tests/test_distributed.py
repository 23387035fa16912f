"""Distributed sampling: two real CPU processes (gloo), through torch.distributed and through Lightning DDP."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nsl import NeuronShapley
from nsl.data import DigitsDataModule
from nsl.games import pairwise_game
from nsl.games.synthetic import network_examples_game
from nsl.models import Classifier, SmallCNN
from nsl.shapley import LocalCollective, ShapleyResult, TorchCollective, monte_carlo, tmab
from nsl.shapley.distributed import as_collective, rank_seed

N = 24
TOP_K = 4
BUDGET = 1500  # evaluations over both ranks for the budgeted run
PERMUTATIONS = 7  # odd: the ranks cannot split it evenly


def planted_game():
    """Four clearly best players (φ ≈ 3, 2.5, 2, 1.5) among 20 small ones, with pairwise noise in the marginals."""
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(N, generator=g, dtype=torch.float64) * 0.3
    weights[[5, 11, 17, 23]] = torch.tensor([3.0, 2.5, 2.0, 1.5], dtype=torch.float64)
    pairs = {(i, j): float(torch.randn(1, generator=g)) * 0.1 for i in range(N) for j in range(i + 1, N) if (i + j) % 3}
    return pairwise_game(weights, pairs)


class CtrlCOnRank1:
    """The planted game, but rank 1 gets a Ctrl-C (SIGINT to itself) during its 6th call."""

    def __init__(self, rank: int) -> None:
        self.game = planted_game()
        self.n_players = N
        self.rank = rank
        self.calls = 0

    def __call__(self, present: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.rank == 1 and self.calls == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return self.game(present)


def _gloo_worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        game = planted_game()
        out = {}
        out["tmab"] = tmab(game, TOP_K, seed=3, collective="auto", max_evals=None).to_dict()
        out["tmab_again"] = tmab(game, TOP_K, seed=3, collective=TorchCollective()).to_dict()
        out["budget"] = tmab(game, TOP_K, seed=4, min_samples=200, max_evals=BUDGET, collective="auto").to_dict()
        out["mc"] = monte_carlo(game, PERMUTATIONS, seed=5, collective="auto").to_dict()
        examples = network_examples_game(30, 20, "rare", seed=0)  # (coalition, example) pairs, rows over ranks
        out["examples"] = tmab(examples, TOP_K, seed=7, max_rows=40_000, batch_size=512, collective="auto").to_dict()
        handler = signal.getsignal(signal.SIGINT)
        out["ctrl_c"] = tmab(CtrlCOnRank1(rank), TOP_K, seed=6, batch_size=4, collective="auto").to_dict()
        out["handler_restored"] = signal.getsignal(signal.SIGINT) is handler
        try:  # ranks disagreeing on a setting: a clear error on both, no deadlock
            tmab(game, TOP_K + rank, seed=3, collective="auto")
        except ValueError as error:
            out["mismatch"] = str(error)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("gloo")
    mp.spawn(_gloo_worker, args=(2, str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _assert_same(a: dict, b: dict) -> None:
    for key in ("values", "stderr", "counts"):
        assert torch.equal(a[key], b[key]), f"{key} differ between ranks"
    for key in a["stats"]:
        assert torch.equal(a["stats"][key], b["stats"][key]), f"stats[{key}] differ between ranks"
    for key in ("n_evals", "converged", "full_value", "empty_value", "world_size", "interrupted"):
        assert a[key] == b[key], key


def _assert_split(results: list[dict]) -> None:
    total = results[0]["n_evals"]
    local = [r["local_evals"] for r in results]
    assert sum(local) == total and results[0]["world_size"] == 2
    for share in local:
        assert 0.35 <= share / total <= 0.65, f"one rank did {share} of {total} evaluations"


def test_tmab_over_torch_distributed_agrees_and_finds_the_planted_top_k(gloo_results: list[dict]) -> None:
    r0, r1 = (r["tmab"] for r in gloo_results)
    _assert_same(r0, r1)
    _assert_split([r0, r1])
    result = ShapleyResult.from_dict(r0)
    assert result.converged
    assert sorted(result.top_k.tolist()) == [5, 11, 17, 23]  # the certificate is about the set, not its order
    truth = planted_game().shapley()
    assert torch.all((result.values - truth).abs() <= 5 * result.stderr)  # unbiased: within its errors
    # Same seed, same world size: the same result.
    _assert_same(r0, gloo_results[0]["tmab_again"])


def test_per_example_sampling_over_ranks_agrees_and_counts_rows(gloo_results: list[dict]) -> None:
    r0, r1 = (r["examples"] for r in gloo_results)
    _assert_same(r0, r1)
    assert r0["sampling"] == "examples" and r0["n_rows"] == r1["n_rows"]
    assert r0["converged"] or r0["n_rows"] >= 40_000 - 2 * 512  # certified, or the rows of both ranks ran out
    truth = network_examples_game(30, 20, "rare", seed=0).shapley()
    result = ShapleyResult.from_dict(r0)
    assert torch.all((result.values - truth).abs() <= 6 * result.stderr.nan_to_num(1.0) + 1e-9)


def test_budget_counts_both_ranks(gloo_results: list[dict]) -> None:
    r0, r1 = (r["budget"] for r in gloo_results)
    _assert_same(r0, r1)
    _assert_split([r0, r1])
    assert not r0["converged"]  # 200 samples per player need more than the budget
    # Each rank's step is cut at its share of what is left, so the total lands on the budget (+1 for rounding;
    # −2 when the last share is too small for a marginal, which needs two coalitions).
    assert BUDGET - 2 <= r0["n_evals"] <= BUDGET + 1


def test_monte_carlo_splits_the_permutations_exactly(gloo_results: list[dict]) -> None:
    r0, r1 = (r["mc"] for r in gloo_results)
    _assert_same(r0, r1)
    assert torch.all(r0["counts"] == PERMUTATIONS)  # no truncation: every player sampled in every scan
    assert r0["converged"]
    # Rank 0 ran scans 0, 2, 4, 6 (plus v(N) and v(∅)), rank 1 scans 1, 3, 5; a full scan is N − 1 coalitions.
    assert [r["mc"]["local_evals"] for r in gloo_results] == [2 + 4 * (N - 1), 3 * (N - 1)]
    # Unbiased: within a few standard errors of the exact values.
    truth = planted_game().shapley()
    assert torch.all((r0["values"] - truth).abs() <= 5 * r0["stderr"] + 1e-9)


def test_ctrl_c_on_one_rank_stops_all_ranks_with_the_same_partial_result(gloo_results: list[dict]) -> None:
    r0, r1 = (r["ctrl_c"] for r in gloo_results)
    _assert_same(r0, r1)
    assert r0["interrupted"] and not r0["converged"]
    assert 0 < int(r0["counts"].max()) <= 4  # stopped at the end of the round in which rank 1 got Ctrl-C
    assert all(r["handler_restored"] for r in gloo_results)


def test_mismatched_settings_fail_on_every_rank(gloo_results: list[dict]) -> None:
    for r in gloo_results:
        assert "ranks disagree on top_k: [4.0, 5.0]" in r["mismatch"]


def test_single_process_is_unchanged_by_a_trivial_collective() -> None:
    game = planted_game()
    plain = tmab(game, TOP_K, seed=3)
    for collective in (LocalCollective(), "auto"):  # "auto" without an initialised process group: one process
        same = tmab(game, TOP_K, seed=3, collective=collective)
        assert torch.equal(same.values, plain.values) and same.n_evals == plain.n_evals
    assert plain.world_size == 1 and plain.local_evals == plain.n_evals
    assert as_collective(None) is None
    assert len({rank_seed(0, r) for r in range(4)} | {rank_seed(1, 0)}) == 5


def test_bad_collective_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"collective='gloo' is not accepted"):
        tmab(planted_game(), TOP_K, collective="gloo")
    with pytest.raises(ValueError, match="collective=3 is not accepted"):
        monte_carlo(planted_game(), 2, collective=3)


class SaveResults(L.Callback):
    """Writes what NeuronShapley left on this rank, after it ran (it is listed before this callback)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shapley = next(cb for cb in trainer.callbacks if isinstance(cb, NeuronShapley))
        saved = {spec.name: shapley.results[spec.name].to_dict() for spec in shapley.specs}
        saved["picked"] = dict(shapley.picked)
        saved["eval_targets"] = shapley.evaluation_data(trainer).targets.cpu()
        saved["files"] = sorted(p.name for p in shapley.output_dir(trainer).glob("*")) if trainer.is_global_zero else []
        torch.save(saved, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_neuron_shapley_callback_under_ddp_spawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    L.seed_everything(0, verbose=False)
    model = Classifier(SmallCNN(channels=(6, 8, 10)))
    cb = NeuronShapley(
        games=["accuracy", "class"], top_k=3, eval_size=48, max_evals=300, curve_steps=3, verbose=False, seed=1,
        # More than 300 evaluations can give: the budget decides. Whole-set coalitions: this barely trained network
        # predicts one class, and (coalition, example) samples would rightly stop early on a constant-looking game.
        estimator_kwargs={"min_samples": 50, "per_example": False},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp_spawn",
        devices=2,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb, SaveResults(tmp_path)],
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Both ranks analysed the first 48 validation examples of the whole split, not their own shard.
    expected = DigitsDataModule(batch_size=32)
    expected.setup("fit")
    first = torch.cat([y for _, y in expected.val_dataloader()])[:48]
    for saved in ranks:
        assert torch.equal(saved["eval_targets"], first)
    for game in ("accuracy", "class"):
        a, b = ranks[0][game], ranks[1][game]
        _assert_same(a, b)
        assert ShapleyResult.from_dict(a).top_k.tolist() == ShapleyResult.from_dict(b).top_k.tolist()
        _assert_split([a, b])
        # The budget counts both ranks and cuts their steps: the run ends at 300 evaluations (+1 for rounding,
        # −2 when the last share is too small for a marginal).
        assert not a["converged"] and 298 <= a["n_evals"] <= 301
    # Rank 0's picked class on every rank; the files carry it; the fit-end analysis has a checkpoint of its own.
    picked = ranks[0]["picked"]["class"]
    assert ranks[1]["picked"] == {"class": picked}
    assert ranks[0]["files"] == ["accuracy.csv", "accuracy.pt", "accuracy_curve.pt", f"class_{picked}.csv",
                                 f"class_{picked}.pt", f"class_{picked}_curve.pt", "fit_end.ckpt"]
    saved = ShapleyResult.load(tmp_path / "neuron_shapley" / "accuracy.pt")
    assert torch.equal(saved.values, ranks[0]["accuracy"]["values"]) and saved.world_size == 2
    assert math.isclose(saved.full_value, ranks[1]["accuracy"]["full_value"])
