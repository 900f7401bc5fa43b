"""The per-layer cross-lingual retrieval probe (the paper's Figure 1a analysis).

For every layer, each sentence is mean-pooled (the alignment loss's pooling), and each translation is
retrieved among all candidate sentences of the other language; accuracy is reported per ordered
language pair, by cosine and by ratio margin. A rising-then-falling curve with the peak in the middle
layers is what motivates aligning there; an alignment adapter should lift the curve at its layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import permutations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from loramerge.data.records import SentencePair
from loramerge.data.tokenization import collate_sentences, tokenize_sentences
from loramerge.errors import LoramergeError
from loramerge.evaluate.retrieval import retrieval_accuracy
from loramerge.models.pooling import mean_pool


@dataclass(frozen=True)
class SentenceTable:
    """Translations of the same English sentence across languages: groups x languages."""

    groups: list[str]  # the English source sentences, one per group
    texts: dict[str, dict[int, str]]  # language -> group index -> sentence

    def directions(self) -> list[tuple[str, str]]:
        return list(permutations(sorted(self.texts), 2))

    def sentences(self) -> dict[str, list[str]]:
        """Each language's sentences in group order: the order score_layers expects vectors in."""
        return {lang: [groups[g] for g in sorted(groups)] for lang, groups in self.texts.items()}

    def shared_groups(self, first: str, second: str) -> list[int]:
        return sorted(set(self.texts[first]) & set(self.texts[second]))


def sentence_table(
    pairs: Sequence[SentencePair], languages: Sequence[str] | None = None, limit: int | None = None
) -> SentenceTable:
    """Group pairs by their English side. `limit` keeps the first N groups (in file order)."""
    groups: dict[str, int] = {}
    texts: dict[str, dict[int, str]] = {}
    for pair in pairs:
        source_lang, target_lang = pair.source_lang or "src", pair.target_lang or "tgt"
        wanted = languages is None or target_lang in languages
        if not wanted or (pair.source not in groups and limit is not None and len(groups) >= limit):
            continue
        group = groups.setdefault(pair.source, len(groups))
        texts.setdefault(source_lang, {})[group] = pair.source
        texts.setdefault(target_lang, {}).setdefault(group, pair.target)
    if languages is not None:
        missing = [lang for lang in languages if lang not in texts]
        if missing:
            raise LoramergeError(f"no pairs for language(s) {', '.join(missing)} in the pairs file; check --langs")
    if len(texts) < 2:
        raise LoramergeError("the probe needs sentences in at least two languages")
    return SentenceTable(groups=list(groups), texts=texts)


def check_enough_sentences(table: SentenceTable, what: str) -> None:
    """Retrieval among one candidate is always right: a score over a single sentence would read 1.000."""
    if len(table.groups) < 2:
        raise LoramergeError(
            f"{what} gives {len(table.groups)} sentence: retrieval among one candidate is always right, so it measures "
            "nothing; give at least 2 sentences (100+ for a stable number)"
        )


def decoder_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without its LM head (LoRA layers included): Gemma-3's head is 262k x 640, and
    the probe needs only hidden states."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return core.get_decoder() if hasattr(core, "get_decoder") else model


@torch.no_grad()
def layer_vectors(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    skip_first: bool,
    batch_size: int = 32,
    max_length: int = 128,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[L + 1, N, D] mean-pooled hidden states of every layer (index 0 = embeddings), float32."""
    tokenized = tokenize_sentences(sentences, tokenizer, max_length)
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i]))  # similar lengths pad less
    pooled: list[torch.Tensor] = [torch.empty(0)] * len(tokenized)
    device = next(model.parameters()).device
    model.eval()
    backbone = decoder_backbone(model)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate_sentences([tokenized[i] for i in indices], tokenizer.pad_token_id)
        mask = batch["attention_mask"].to(device)
        output = backbone(
            input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True, use_cache=False
        )
        stacked = torch.stack([mean_pool(hidden, mask, skip_first) for hidden in output.hidden_states], dim=1).cpu()
        for row, index in enumerate(indices):
            pooled[index] = stacked[row]
        if on_batch is not None:
            on_batch(len(indices))
    return torch.stack(pooled, dim=1)


def score_layers(table: SentenceTable, vectors: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, object]:
    """Per layer and direction, top-1 accuracy by cosine and margin; averages over directions.

    vectors: language -> [L + 1, groups-of-that-language, D] in the order of table.texts[language].
    """
    positions = {lang: {group: i for i, group in enumerate(sorted(groups))} for lang, groups in table.texts.items()}
    result: dict[str, object] = {"layers": {}}
    for layer in layers:
        directions = {}
        for first, second in table.directions():
            shared = table.shared_groups(first, second)
            queries = vectors[first][layer, [positions[first][g] for g in shared]]
            candidates = vectors[second][layer, [positions[second][g] for g in shared]]
            directions[f"{first}->{second}"] = {**retrieval_accuracy(queries, candidates), "sentences": len(shared)}
        averages = {score: sum(d[score] for d in directions.values()) / len(directions) for score in ("cosine", "margin")}
        result["layers"][str(layer)] = {"average": averages, "directions": directions}
    return result


def best_layer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[SentencePair], skip_first: bool, limit: int = 200
) -> tuple[int, dict[str, object]]:
    """The block output (1..L-1) where translations retrieve each other best on average (margin):
    `--layer auto`. Layer L is left out: its states feed only the LM head."""
    table = sentence_table(pairs, limit=limit)
    check_enough_sentences(table, "eval_pairs (for --layer auto)")
    vectors = {lang: layer_vectors(model, tokenizer, sentences, skip_first) for lang, sentences in table.sentences().items()}
    count = next(iter(vectors.values())).shape[0] - 1
    scores = score_layers(table, vectors, range(1, count))
    accuracy = {int(layer): entry["average"]["margin"] for layer, entry in scores["layers"].items()}
    return max(accuracy, key=lambda layer: (accuracy[layer], -layer)), scores
