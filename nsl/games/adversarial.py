"""Adversarial game: value = the attack's success (optionally net of clean accuracy); the filters with the highest
values help the adversary."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy

from nsl.games.attacks import ATTACKS, linf_attack
from nsl.games.base import EvalData, ModelGame, Share
from nsl.games.registry import GAMES
from nsl.players import FilterPlayers
from nsl.validation import check_choice, check_number


@GAMES.register("adversarial")
class AdversarialGame(ModelGame):
    """Value of a coalition = success rate of an L∞ attack whose examples were made once on the full model.

    Untargeted success is the share of adversarial examples not classified as their true class; targeted
    success the share classified as the target. Removing the filters with the highest values makes the
    model more robust to these examples.

    Args:
        model, players, inputs, targets: as in :class:`~nsl.games.AccuracyGame` (``targets`` are the true
            labels of the clean ``inputs``).
        attack: ``"pgd"`` (default, as in the original work) or ``"fgsm"``.
        eps: L∞ radius (16/255 as in the original work).
        steps: PGD steps (30). ``step_size``: PGD step (default 2.5·eps/steps).
        targeted: a targeted attack (the original work's choice) when True.
        target_class: the class to push every example to; ``None`` draws one wrong class per example
            from ``seed``.
        bounds: valid input range for clamping; ``None`` uses the evaluation data's own min and max.
        seed: seeds the PGD start points and random targets (the global RNG is never touched).
        net_of_clean: value = attack success − clean accuracy of the same coalition on the same images. A filter
            the model needs to classify at all helps the attack too (a broken model is hit by nothing), so on
            attack success alone the top values mix attack helpers with essential filters; net of clean
            accuracy, a filter's value is its help to the attack minus its help to clean classification
            (Shapley values are linear), and the top values are filters that serve the attack more than the
            task. Each coalition then evaluates the clean images too (twice the rows).
        **kwargs: ``chunk_size``, ``max_rows``, ``device``.

    Its value is harm, so the culprits are the highest values (the top tail) and a repair removes them by
    default. Under DDP every rank attacks with rank 0's adversarial examples.

    It decomposes over examples (see :class:`~nsl.games.ExampleGame`): over the M adversarial examples, u = the
    attack's success on that example (targeted: classified as its target; untargeted: not as its true class)
    with weight +1/M; net of clean, the M clean images follow (rows M..2M−1 of ``inputs``) with u = classified
    correctly and weight −1/M.
    """

    negative_culprits = False
    default_tail = "top"
    measures_defect = True

    @classmethod
    def data_options(
        cls, model: nn.Module, data: EvalData, options: dict[str, Any], *, seed: int, share: Share | None
    ) -> dict[str, Any]:
        return {"seed": seed, **options}

    def share_with_ranks(self, share: Share) -> None:
        self.inputs = share(self.inputs.cpu()).to(self.device)  # the attack's floating point differs by rank

    def __init__(
        self, model: nn.Module, players: FilterPlayers, inputs: Tensor, targets: Tensor,
        *,
        attack: str = "pgd",
        eps: float = 16 / 255,
        steps: int = 30,
        step_size: float | None = None,
        targeted: bool = True,
        target_class: int | None = None,
        bounds: tuple[float, float] | None = None,
        seed: int = 0,
        net_of_clean: bool = False,
        **kwargs,
    ) -> None:
        check_choice("attack", attack, ATTACKS)
        check_number("eps", eps, positive=True)
        super().__init__(model, players, inputs, targets, **kwargs)
        if target_class is not None and not 0 <= target_class < self.num_classes:
            raise ValueError(f"target_class={target_class} is out of range for {self.num_classes} classes.")
        generator = torch.Generator().manual_seed(seed)
        self.targeted = targeted
        self.true_labels = self.targets
        if targeted:
            if target_class is None:
                shift = torch.randint(1, self.num_classes, (len(self.targets),), generator=generator)
                goal = (self.targets.cpu() + shift) % self.num_classes
            else:
                goal = torch.full((len(self.targets),), target_class)
            self.attack_labels = goal.to(self.device)
        else:
            self.attack_labels = self.targets
        if bounds is None:
            bounds = (float(self.inputs.min()), float(self.inputs.max()))
        self.clean_inputs = self.inputs
        self.inputs = linf_attack(
            model,
            self.clean_inputs,
            self.attack_labels,
            attack=attack,
            eps=float(eps),
            steps=steps,
            step_size=step_size,
            targeted=targeted,
            bounds=bounds,
            generator=generator,
        )
        self.adversarial_inputs = self.inputs
        self.net_of_clean = bool(net_of_clean)
        if self.net_of_clean:  # rows [adversarial; clean], split again in score()
            self.inputs = torch.cat([self.adversarial_inputs, self.clean_inputs])

    def _hit_rate(self, preds: Tensor, labels: Tensor) -> Tensor:
        return multiclass_accuracy(
            preds, labels.expand(preds.shape[0], -1), num_classes=self.num_classes, average="micro",
            multidim_average="samplewise",
        )

    def score(self, logits: Tensor) -> Tensor:
        preds = logits.argmax(dim=-1)
        n = len(self.attack_labels)
        hit = self._hit_rate(preds[:, :n], self.attack_labels)
        success = hit if self.targeted else 1 - hit
        if self.net_of_clean:
            return success - self._hit_rate(preds[:, n:], self.true_labels)
        return success

    @property
    def example_weights(self) -> Tensor:
        """+1/M on each adversarial example; net of clean, then −1/M on each clean image."""
        m = len(self.attack_labels)
        weights = torch.full((m,), 1.0 / m, dtype=torch.float64)
        return torch.cat([weights, -weights]) if self.net_of_clean else weights

    def example_score(self, logits: Tensor, examples: Tensor) -> Tensor:
        preds = logits.argmax(dim=-1)
        m = len(self.attack_labels)
        image = examples % m  # a clean row e ≥ M is the clean image e − M
        truth = self.true_labels[image]
        success = preds == self.attack_labels[image] if self.targeted else preds != truth
        return torch.where(examples < m, success, preds == truth).double()
