"""A frozen vocabulary matrix (input embedding, and the LM head that shares it) held as exact int8 groups.

Training a LoRA adapter on a CPU leaves the embedding frozen, yet the task loss reads the whole head every step:
for the bundled Gemma-3-270M that is a 262,144 x 640 float32 matrix, 671 MB of the model's 1,115 MB of weights.
Its values came from a Q8_0 GGUF, so `int8_groups` holds them exactly in 189 MB; these modules read it back a
block of rows at a time (the head) or only the rows a batch needs (the embedding), bit-identical to the float32
matrix, and the float32 original can be released (`loramerge.train.memory.drop_file_pages`).

A matrix that is not exactly int8 groups (a float32 or bfloat16 checkpoint) is left as it is; so is an embedding
module whose output `CompactEmbedding` cannot reproduce exactly on a probe of token ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loramerge.models.int8_groups import Int8Groups, compact_exactly

HEAD_BLOCK_ROWS = 4096  # rows of the head expanded at a time by the module's own forward (10 MiB at width 640)
PROBE_IDS = 257  # token ids compared between the original embedding and the compact one, spread over the vocabulary


class CompactEmbedding(nn.Module):
    """nn.Embedding (optionally times a constant `embed_scale`, as Gemma's) over int8-group rows, frozen."""

    def __init__(self, matrix: Int8Groups, scale: torch.Tensor | None) -> None:
        super().__init__()
        self.matrix = matrix  # a plain attribute: frozen, not a parameter an optimiser or state dict should see
        self.scale = scale
        self.num_embeddings, self.embedding_dim = matrix.shape

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.matrix.gather(input_ids)
        return rows if self.scale is None else rows * self.scale


class CompactLinear(nn.Module):
    """A frozen nn.Linear over int8-group weight rows: the full logits, a block of vocabulary rows at a time.

    The trainer's fused loss reads `matrix` directly; this forward serves whatever still calls the model's own."""

    def __init__(self, matrix: Int8Groups, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.matrix = matrix
        self.bias = bias
        self.out_features, self.in_features = matrix.shape

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        blocks = []
        for start in range(0, self.out_features, HEAD_BLOCK_ROWS):
            stop = min(start + HEAD_BLOCK_ROWS, self.out_features)
            bias = None if self.bias is None else self.bias[start:stop]
            blocks.append(F.linear(hidden, self.matrix.rows(start, stop), bias))
        return torch.cat(blocks, dim=-1)


def _embedding_scale(embedding: nn.Embedding) -> torch.Tensor | None:
    scale = getattr(embedding, "embed_scale", None)
    return scale.detach().to(embedding.weight.dtype) if isinstance(scale, torch.Tensor) else None


@torch.no_grad()
def _reproduces(embedding: nn.Embedding, compact: CompactEmbedding) -> bool:
    if embedding.max_norm is not None:  # renormalises rows as it reads them: not a plain lookup
        return False
    ids = torch.linspace(0, embedding.num_embeddings - 1, PROBE_IDS).long()[None, :]
    try:
        return torch.equal(embedding(ids), compact(ids))
    except (RuntimeError, TypeError):
        return False


def _compact_embedding(embedding: nn.Module) -> CompactEmbedding | None:
    """The frozen embedding as a CompactEmbedding when its matrix is exact int8 groups and the compact module
    reproduces its output exactly; else None."""
    if not isinstance(embedding, nn.Embedding) or embedding.weight.requires_grad:
        return None
    matrix = compact_exactly(embedding.weight)
    compact = CompactEmbedding(matrix, _embedding_scale(embedding)) if matrix is not None else None
    return compact if compact is not None and _reproduces(embedding, compact) else None


def compact_vocabulary(model: nn.Module) -> list[torch.Tensor]:
    """Replace the model's frozen input embedding, and a plain frozen LM head (tied to it or not), by compact
    modules where that is exact. Returns the float32 weights no longer used, for the caller to release."""
    replaced: list[torch.Tensor] = []
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    compact = _compact_embedding(embedding)
    if compact is not None:
        model.set_input_embeddings(compact)
        replaced.append(embedding.weight)
    tied = compact is not None and getattr(head, "weight", None) is embedding.weight
    if type(head) is nn.Linear and not head.weight.requires_grad and (head.bias is None or not head.bias.requires_grad):
        head_matrix = compact.matrix if tied else compact_exactly(head.weight)
        if head_matrix is not None:
            model.set_output_embeddings(CompactLinear(head_matrix, head.bias))
            replaced += [] if tied else [head.weight]
    elif tied:
        replaced.clear()  # the head still reads the shared float32 weight: it is not free to release
    return replaced
