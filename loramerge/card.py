"""Model cards (README.md with Hub metadata) that record exactly what went into an adapter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class MergedInput:
    path: str
    weight: float
    ranks: str  # e.g. "8" or "4-8" when rank_pattern varies
    sha256: dict[str, str]


def hub_base_model(base_model: str | None) -> str | None:
    """Only a Hub id belongs in the card's `base_model` field; a local path would fail Hub validation."""
    if base_model and HUB_ID.match(base_model) and not Path(base_model).exists():
        return base_model
    return None


def loading_snippet(base_model: str | None) -> str:
    base = base_model or "<base model id or folder>"
    return (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
        'model = PeftModel.from_pretrained(base, "<this folder or repo id>")\n'
        "```\n"
    )


def render_merge_card(inputs: list[MergedInput], method: str, summary: str, recipe_yaml: str, base_model: str | None) -> str:
    data = ModelCardData(
        library_name="peft",
        base_model=hub_base_model(base_model),
        tags=["lora", "peft", "loramerge", "merge"],
        pipeline_tag="text-generation",
    )
    rows = "\n".join(
        f"| {i} | `{item.path}` | {item.weight:g} | {item.ranks} | `{item.sha256.get('adapter_model.safetensors', '')}` |"
        for i, item in enumerate(inputs, 1)
    )
    body = (
        f"# Merged LoRA adapter\n\n"
        f"Made with [loramerge](https://pypi.org/project/loramerge/) by weighted tensor arithmetic on the\n"
        f"adapters' factors, without loading the base model. Method: **{method}**. {summary}\n\n"
        f"Base model: `{base_model or 'not recorded in the inputs'}`\n\n"
        "## Inputs\n\n"
        "| # | adapter | weight | rank | sha256 of adapter_model.safetensors |\n"
        "|---|---|---|---|---|\n"
        f"{rows}\n\n"
        "Per-module weights, ranks and errors are in `merge_report.json`.\n\n"
        "## Recipe\n\n"
        f"```yaml\n{recipe_yaml}```\n\n"
        "## Use\n\n"
        f"{loading_snippet(base_model)}"
    )
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body=body)
    return str(card)
