"""Per-layer and per-module merge weights (pure functions of a module name).

Resolution for one source and module: the last matching rule's weight; else, with depth_weights, the
list interpolated linearly over depth; else the source's weight. Modules outside the layer stack
(embeddings, lm_head) have no layer, so layer rules and depth_weights do not apply to them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

# The first '.<digits>.' in a module path is the block index in every decoder family in
# transformers: model.layers.3.mlp (Llama, Qwen, Gemma), transformer.h.3.attn (GPT-2), ...
LAYER_INDEX = re.compile(r"\.(\d+)\.")


class Rule(Protocol):
    layers: str | None
    modules: str | None
    weight: float


class WeightedSource(Protocol):
    weight: float
    depth_weights: list[float] | None
    rules: Sequence[Rule]


def layer_index(module_name: str) -> int | None:
    match = LAYER_INDEX.search(f".{module_name}.")
    return int(match.group(1)) if match else None


def parse_layer_range(text: str) -> tuple[int | None, int | None]:
    """'8' -> (8, 8); '0-7' -> (0, 7); '16-' -> (16, None); '-15' -> (None, 15)."""
    match = re.fullmatch(r"(\d+)|(\d*)\s*-\s*(\d*)", text.strip())
    if not match or (match.group(1) is None and not (match.group(2) or match.group(3))):
        raise ValueError(f"invalid layer range {text!r}; use '8', '0-7', '16-' or '-15'")
    if match.group(1) is not None:
        return int(match.group(1)), int(match.group(1))
    low = int(match.group(2)) if match.group(2) else None
    high = int(match.group(3)) if match.group(3) else None
    if low is not None and high is not None and high < low:
        raise ValueError(f"invalid layer range {text!r}: the end is below the start")
    return low, high


def rule_matches(rule: Rule, module_name: str) -> bool:
    if rule.modules is not None and not re.search(rule.modules, module_name):
        return False
    if rule.layers is not None:
        layer = layer_index(module_name)
        if layer is None:
            return False
        low, high = parse_layer_range(rule.layers)
        return (low is None or layer >= low) and (high is None or layer <= high)
    return True


def interpolate(values: Sequence[float], position: float) -> float:
    """Linear interpolation of evenly spaced values over position in [0, 1]."""
    if len(values) == 1:
        return values[0]
    scaled = min(max(position, 0.0), 1.0) * (len(values) - 1)
    lower = min(int(scaled), len(values) - 2)
    fraction = scaled - lower
    return values[lower] * (1.0 - fraction) + values[lower + 1] * fraction


def weight_and_key(source: WeightedSource, module_name: str, num_layers: int) -> tuple[float, str]:
    """The weight and the source's recipe key that set it ('rules.2.weight', 'depth_weights' or 'weight'), so an
    error about a weight names where to change it."""
    for index in reversed(range(len(source.rules))):
        if rule_matches(source.rules[index], module_name):
            return source.rules[index].weight, f"rules.{index}.weight"
    layer = layer_index(module_name)
    if source.depth_weights is not None and layer is not None:
        position = layer / (num_layers - 1) if num_layers > 1 else 0.0
        return interpolate(source.depth_weights, position), "depth_weights"
    return source.weight, "weight"


def module_weight(source: WeightedSource, module_name: str, num_layers: int) -> float:
    return weight_and_key(source, module_name, num_layers)[0]
