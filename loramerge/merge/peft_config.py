"""The adapter_config.json of a merged adapter, built so PEFT reproduces the merged factors exactly."""

from __future__ import annotations

from collections import Counter
from typing import Any

from loramerge.adapters import LoraAdapter

# Config keys under which PEFT restricts or reshapes where modules go; when any input uses one,
# the output lists its modules by full name instead of by leaf name.
PLACEMENT_KEYS = ("layers_to_transform", "layers_pattern", "exclude_modules")


def target_modules(adapters: list[LoraAdapter], module_names: list[str]) -> list[str]:
    """Leaf names when every input targets by leaf-name list (the union then covers exactly the
    merged modules); otherwise the full module names, which PEFT matches exactly."""
    leaf_lists = [adapter.config.get("target_modules") for adapter in adapters]
    by_leaf = all(isinstance(names, list) for names in leaf_lists) and not any(
        adapter.config.get(key) for adapter in adapters for key in PLACEMENT_KEYS
    )
    if by_leaf:
        return sorted({name for names in leaf_lists for name in names})
    return sorted(module_names)


def rank_patterns(module_ranks: dict[str, int]) -> tuple[int, dict[str, int]]:
    """The most common rank as `r` and a pattern for every other module.

    PEFT returns the first pattern key that matches a suffix of a module's name, so longer names come
    first: a full name that is a suffix of another then never captures it.
    """
    counts = Counter(module_ranks.values())
    default = min(rank for rank, count in counts.items() if count == max(counts.values()))
    others = {name: rank for name, rank in module_ranks.items() if rank != default}
    ordered = dict(sorted(others.items(), key=lambda item: (-len(item[0]), item[0])))
    return default, ordered


def merged_config(adapters: list[LoraAdapter], module_ranks: dict[str, int], base_model: str | None) -> dict[str, Any]:
    """Start from the first input's config (keeps keys newer PEFT versions add) and set what changed.

    The scale is folded into B, so every module has alpha == r (scale 1) and rsLoRA is off.
    """
    config = dict(adapters[0].config)
    rank, patterns = rank_patterns(module_ranks)
    modules_to_save = sorted({name for a in adapters for name in (a.config.get("modules_to_save") or [])})
    task_type = next((a.config["task_type"] for a in adapters if a.config.get("task_type")), None)
    config.update(
        {
            "peft_type": "LORA",
            "base_model_name_or_path": base_model,
            "r": rank,
            "lora_alpha": rank,
            "rank_pattern": patterns,
            "alpha_pattern": dict(patterns),
            "use_rslora": False,
            "use_dora": False,
            "lora_bias": False,
            # A PiSSA/OLoRA/LoftQ init would rewrite base weights when the adapter loads.
            "init_lora_weights": True,
            "target_modules": target_modules(adapters, list(module_ranks)),
            "modules_to_save": modules_to_save or None,
            "task_type": task_type,
            "inference_mode": True,
        }
    )
    for key in PLACEMENT_KEYS:
        config[key] = None
    return config
