"""Running a micro-batch as sub-batches of similar length changes no loss and no gradient, and the
grouping is the cheapest one under its cost model."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import LoraConfig, get_peft_model

from loramerge.data.tokenization import IGNORE_INDEX, collate_pairs
from loramerge.testing.tiny import ALL_LINEAR, randomize_trainable
from loramerge.train.length_groups import length_groups, row_lengths
from loramerge.train.objectives import ALIGN, TASK, ObjectiveModel
from loramerge.train.recipe import AlignSettings
from tests.tiny_configs import ARCHITECTURES, build_tiny


def cost(groups: list[list[int]], lengths: list[int], pass_cost: int) -> int:
    return sum(len(g) * max(lengths[r] for r in g) + pass_cost for g in groups)


def test_groups_by_hand() -> None:
    # 4 short rows and 2 long ones: padded together 6 x 40 + 16 = 256; apart 4 x 5 + 16 + 2 x 40 + 16 = 132
    assert length_groups([5, 40, 3, 4, 38, 5], pass_cost=16) == [[2, 3, 0, 5], [4, 1]]
    assert length_groups([10, 11, 12], pass_cost=16) == [[0, 1, 2]]  # splitting would save less than a pass


def test_groups_are_the_optimal_contiguous_partition() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(1, 60, (7,), generator=generator).tolist()
        order = sorted(range(7), key=lambda r: lengths[r])
        candidates = []
        for cuts in itertools.product([False, True], repeat=6):  # every contiguous partition of the sorted rows
            groups, current = [], [order[0]]
            for row, cut in zip(order[1:], cuts):
                if cut:
                    groups.append(current)
                    current = []
                current.append(row)
            candidates.append(cost([*groups, current], lengths, 16))
        chosen = length_groups(lengths, pass_cost=16)
        assert sorted(r for g in chosen for r in g) == list(range(7))
        assert cost(chosen, lengths, 16) == min(candidates)


def test_only_right_padded_batches_are_split() -> None:
    assert row_lengths(torch.tensor([[1, 1, 1], [1, 0, 0]])) == [3, 1]
    assert row_lengths(torch.tensor([[1, 1, 1], [0, 0, 1]])) is None  # left padding: trimming would cut tokens


def ragged_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 rows: three of ~4 tokens, three of ~30, right-padded; labels on each row's second half."""
    generator = torch.Generator().manual_seed(3)
    lengths = [4, 30, 5, 28, 3, 31]
    ids = torch.randint(3, vocab, (6, max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        labels[row, length // 2 : length] = ids[row, length // 2 : length]
    return ids * mask, mask, labels


def grads_of(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_split_batches_give_the_same_losses_and_gradients(architecture: str, center: bool) -> None:
    torch.manual_seed(0)
    model = get_peft_model(build_tiny(architecture), LoraConfig(r=4, target_modules=ALL_LINEAR))
    randomize_trainable(model, seed=1)
    model.train()
    settings = AlignSettings(center=center)
    # centring subtracts the batch mean from vectors much larger than their differences: float32 cancellation
    # leaves ~1e-6 absolute noise on the smallest gradient entries (measured 1.06e-6 on gemma3)
    gradient_atol = 5e-6 if center else 1e-6
    split = ObjectiveModel(model, 2, settings, split_by_length=True)
    whole = ObjectiveModel(model, 2, settings, split_by_length=False)
    ids, mask, labels = ragged_batch(model.config.vocab_size)
    assert len(length_groups(row_lengths(mask))) == 2  # the case under test really splits

    for objective, arguments in (
        (TASK, (ids, mask, labels)),
        (ALIGN, tuple(collate_pairs(*halves(ids, mask), pad_id=0).values())),
    ):
        split_loss, whole_loss = split(objective, *arguments), whole(objective, *arguments)
        torch.testing.assert_close(split_loss, whole_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_of(model, split_loss), grads_of(model, whole_loss), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=gradient_atol if objective == ALIGN else 1e-6)


def halves(ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
    return rows[:3], rows[3:]  # 3 pairs whose sides differ in length
