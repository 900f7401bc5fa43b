"""The task objective's fast paths (the fused head loss over supervised tokens; the head on predicting positions
only) must not change the loss or the gradients of the plain full-logits computation."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from loramerge.data.tokenization import IGNORE_INDEX
from loramerge.testing.tiny import ALL_LINEAR, randomize_trainable
from loramerge.train.losses import predicting_positions, supervised_tokens, task_loss
from loramerge.train.objectives import TASK, ObjectiveModel
from loramerge.train.recipe import AlignSettings
from tests.tiny_configs import ARCHITECTURES, build_tiny


def test_predicting_positions_by_hand() -> None:
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    )
    # row 0 supervises positions 2 and 3 (predicted from 1 and 2); row 1 position 1 (predicted from 0)
    assert predicting_positions(labels).tolist() == [0, 1, 2]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("fused_head", [True, False])
def test_fast_task_losses_match_the_full_logits_loss(architecture: str, fused_head: bool) -> None:
    torch.manual_seed(0)
    model = get_peft_model(build_tiny(architecture), LoraConfig(r=4, target_modules=ALL_LINEAR))
    randomize_trainable(model, seed=1)
    model.train()  # LoRA dropout is 0 here, so train mode is deterministic
    objective = ObjectiveModel(model, None, AlignSettings(), fused_head=fused_head)
    assert objective.fused_head == fused_head  # every tiny architecture has a plain linear head
    assert objective.head_on_supervised_only  # and a forward that takes logits_to_keep
    input_ids = torch.randint(3, model.config.vocab_size, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, 5:12] = input_ids[0, 5:12]
    labels[1, 8:10] = input_ids[1, 8:10]
    labels[2, 4:9] = input_ids[2, 4:9]

    fast = objective(TASK, input_ids, attention_mask, labels)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    full = task_loss(model(input_ids=input_ids, attention_mask=attention_mask), labels, reduction="sum")
    (full / supervised_tokens(labels)).backward()
    full_grads = [p.grad for p in model.parameters() if p.requires_grad]

    torch.testing.assert_close(fast, full / supervised_tokens(labels), rtol=1e-5, atol=1e-6)
    for fast_grad, full_grad in zip(fast_grads, full_grads):
        torch.testing.assert_close(fast_grad, full_grad, rtol=1e-4, atol=1e-6)
