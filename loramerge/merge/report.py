"""What a merge reports: per-module ranks, errors and norms, a one-line summary, the warnings (cancellation, serving)."""

from __future__ import annotations

from typing import Any

import torch

from loramerge.adapters import KEY_PREFIX, LoraAdapter
from loramerge.merge.cancellation import cancellation_summary, cancellation_warnings
from loramerge.merge.methods import METHODS
from loramerge.merge.recipe import MergeRecipe, settings_used

VLLM_MAX_LORA_RANK = 16  # vLLM's default --max-lora-rank; larger adapters fail to load there


def build_report(recipe: MergeRecipe, modules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ranks = [entry["rank"] for entry in modules.values()]
    errors = [entry["relative_error"] for entry in modules.values()]
    rounding = [entry["dtype_relative_error"] for entry in modules.values() if "dtype_relative_error" in entry]
    return {
        "method": recipe.method,
        "exact": METHODS[recipe.method].exact,
        "settings": settings_used(recipe),
        "modules_merged": len(modules),
        "rank_min": min(ranks),
        "rank_max": max(ranks),
        "max_relative_error": max(errors),
        **({"max_dtype_relative_error": max(rounding)} if rounding else {}),  # of the written, rounded factors
        "cancellation": cancellation_summary(modules),
        "modules": modules,
    }


def summarise(report: dict[str, Any]) -> str:
    ranks = f"{report['rank_min']}" if report["rank_min"] == report["rank_max"] else f"{report['rank_min']}-{report['rank_max']}"
    text = f"{report['modules_merged']} modules, output rank {ranks}, max relative error {report['max_relative_error']:.2e}."
    if "max_dtype_relative_error" in report:
        text += f" Rounding to the output dtype adds up to {report['max_dtype_relative_error']:.2e}."
    if (layout := report.get("layout")) is not None:
        text += f" Layout {describe_layout(layout)}."
    return text


def describe_layout(layout: dict[str, Any]) -> str:
    """'portable (every module stored at rank 16): served exactly by PEFT, vLLM, ...', for the card and the CLI."""
    stored = f" (every module stored at rank {layout['stored_rank']})" if layout["stored_rank"] is not None else ""
    return f"{layout['name']}{stored}: served exactly by {', '.join(layout['served_exactly_by'])}"


def merge_warnings(report: dict[str, Any], carried: dict[str, torch.Tensor]) -> list[str]:
    """Every warning of a merge, the cancellation one first (loudest when the adapter is zero)."""
    return cancellation_warnings(report["cancellation"], report["modules_merged"]) + serving_warnings(report, carried)


def serving_warnings(report: dict[str, Any], carried: dict[str, torch.Tensor]) -> list[str]:
    warnings = []
    if report["rank_max"] > VLLM_MAX_LORA_RANK:
        warnings.append(
            f"output rank {report['rank_max']} exceeds {VLLM_MAX_LORA_RANK}, vLLM's default max_lora_rank: serve with "
            f"--max-lora-rank {report['rank_max']}, or recompress to rank {VLLM_MAX_LORA_RANK} (merge --method svd --rank "
            f"{VLLM_MAX_LORA_RANK}; for one adapter, export --rank {VLLM_MAX_LORA_RANK})"
        )
    if carried:
        names = ", ".join(sorted(key[len(KEY_PREFIX) :] for key in carried))
        warnings.append(
            f"the output carries full tensors ({names}); vLLM rejects adapters with full lm_head/embed_tokens weights"
        )
    return warnings


def rank_span(adapter: LoraAdapter) -> str:
    ranks = sorted({module.rank for module in adapter.modules.values()})
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
