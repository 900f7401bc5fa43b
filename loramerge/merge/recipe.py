"""The merge recipe: what to merge and how (the CLI's flags map onto the same schema)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loramerge.merge.layer_weights import parse_layer_range
from loramerge.merge.methods import METHODS, MethodSettings
from loramerge.recipes import StrictModel

MethodName = Literal[
    "cat",
    "svd",
    "ties",
    "dare_ties",
    "dare_linear",
    "magnitude_prune",
    "tsv",
    "iso_c",
    "iso_cts",
    "knots_ties",
    "core_ties",
    "core_dare",
    "linear",
]
DtypeName = Literal["float32", "bfloat16", "float16"]


class WeightRule(StrictModel):
    """Replace a source's weight on the modules that match (the last matching rule wins)."""

    layers: str | None = Field(None, description="layer range: '8', '0-7', '16-' or '-15' (inclusive)")
    modules: str | None = Field(None, description="regex searched in the module name, e.g. 'mlp\\.'")
    weight: float

    @field_validator("layers")
    @classmethod
    def _valid_range(cls, value: str | None) -> str | None:
        if value is not None:
            parse_layer_range(value)
        return value

    @field_validator("modules")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _selects_something(self) -> WeightRule:
        if self.layers is None and self.modules is None:
            raise ValueError("a weight rule needs 'layers', 'modules' or both")
        return self


class MergeSource(StrictModel):
    path: str = Field(description="PEFT LoRA adapter folder, or a Hub id org/name[@revision]")
    weight: float = 1.0
    depth_weights: list[float] | None = Field(
        None, min_length=1, description="weights interpolated linearly from the first to the last layer"
    )
    rules: list[WeightRule] = Field(default_factory=list)


class MergeRecipe(StrictModel):
    sources: list[MergeSource] = Field(min_length=1)
    method: MethodName = "cat"
    rank: int | None = Field(None, gt=0, description="output rank of svd and the sparsifying methods")
    energy: float | None = Field(None, gt=0.0, le=1.0, description="or keep this fraction of ||dW||_F^2")
    # Method keys: None means the method's default (docs/merge.md, Methods); a key the method does not read is
    # refused, never ignored.
    density: float | None = Field(None, gt=0.0, le=1.0, description="fraction of entries kept (default 0.5)")
    normalize: bool | None = Field(
        None, description="divide by the summed weights (default: true for the TIES family, the paper's disjoint mean)"
    )
    majority_sign: Literal["total", "frequency"] | None = Field(None, description="elect signs by sum or by vote count")
    tie_vote: Literal["none", "positive"] | None = Field(None, description="a tied election keeps nothing, or elects +")
    normalize_divisor: Literal["absolute", "signed"] | None = Field(None, description="sum of |w| or of w (mergekit)")
    dare_rescale: Literal["inverse_density", "l1"] | None = Field(None, description="1/p (DARE paper) or keep L1 norm")
    kept_count: Literal["round", "floor_min1"] | None = Field(None, description="round(p n), or max(1, int(p n))")
    conventions: Literal["loramerge", "mergekit"] | None = Field(
        None, description="preset for tie_vote, normalize_divisor, dare_rescale and kept_count"
    )
    alpha: float | None = Field(None, description="tsv, iso_c, iso_cts: scale of the merged update (default 1)")
    task_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="tsv: share of the rank each input keeps (default 1 / number of inputs)"
    )
    common_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="iso_cts: share of the rank for the common subspace (default 0.8)"
    )
    subspace: Literal["merged", "shared"] | None = Field(
        None,
        description="core methods with --rank: truncate the merged update (merged, default) or merge every input's "
        "coordinates in one shared rank-r subspace chosen first (shared: Compress-then-Merge)",
    )
    subspace_beta: float | None = Field(
        None, ge=0.0, le=1.0, description="shared: 1 fits the subspace to the inputs as they are, 0 to equal norms (0.25)"
    )
    dtype: DtypeName | None = Field(None, description="output dtype; default: the inputs' (float32 if mixed)")
    seed: int | None = Field(None, description="seed of the random methods (dare_*, core_dare); default 0")
    num_layers: int | None = Field(None, gt=0, description="depth for depth_weights; default: deepest layer seen + 1")
    base_model: str | None = Field(None, description="base_model_name_or_path of the output; default: the inputs'")
    allow_base_mismatch: bool = False
    layout: Literal["portable", "compact"] = Field(
        "portable",
        description="portable: one zero-padded rank, no patterns, served alike by PEFT, vLLM, llama.cpp and TGI/LoRAX; "
        "compact: per-module ranks with rank_pattern (PEFT and vLLM only)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MergeRecipe:
        info = METHODS[self.method]
        if self.rank is not None and self.energy is not None:
            raise ValueError("give rank or energy, not both")
        if self.subspace == "shared" and self.rank is None:
            raise ValueError("subspace 'shared' picks a rank-r subspace before merging: give --rank r")
        if (self.rank is not None or self.energy is not None) and not info.truncates:
            raise ValueError(f"method {self.method!r} does not truncate; use method 'svd' to set a rank or energy")
        for key in METHOD_KEYS:
            if getattr(self, key) is not None and not (info.keys & KEY_READS[key]):
                readers = ", ".join(name for name, other in METHODS.items() if other.keys & KEY_READS[key])
                raise ValueError(f"method {self.method!r} does not use {key!r} (read by {readers}); remove it")
        return self


CONVENTION_KEYS = ("tie_vote", "normalize_divisor", "dare_rescale", "kept_count")
METHOD_KEYS = (
    "density",
    "normalize",
    "majority_sign",
    *CONVENTION_KEYS,
    "conventions",
    "alpha",
    "task_fraction",
    "common_fraction",
    "subspace",
    "subspace_beta",
    "seed",
)
# which registry keys make a method read a recipe key; `conventions` is read by any method with one of its rules
KEY_READS = {key: frozenset({key}) for key in METHOD_KEYS} | {"conventions": frozenset(CONVENTION_KEYS)}
CONVENTIONS = {
    "loramerge": {"tie_vote": "none", "normalize_divisor": "absolute", "dare_rescale": "inverse_density", "kept_count": "round"},
    "mergekit": {"tie_vote": "positive", "normalize_divisor": "signed", "dare_rescale": "l1", "kept_count": "floor_min1"},
}


# mergekit 0.1.5's defaults for the methods both tools have (its registry and GeneralizedTaskArithmeticMerge.spec):
# normalize is true for ties only, and density is 1 (nothing pruned unless asked). loramerge follows the papers
# (dare_ties: TIES' disjoint mean; density 0.5); `conventions: mergekit` takes mergekit's, so a mergekit recipe
# ported as is merges the same. magnitude_prune is mergekit's breadcrumbs at gamma 0.
PRESET_DEFAULTS: dict[tuple[str, str], dict[str, object]] = {
    ("mergekit", "ties"): {"normalize": True, "density": 1.0},
    ("mergekit", "dare_ties"): {"normalize": False, "density": 1.0},
    ("mergekit", "dare_linear"): {"normalize": False, "density": 1.0},
    ("mergekit", "magnitude_prune"): {"normalize": False, "density": 1.0},
}


def method_settings(recipe: MergeRecipe) -> MethodSettings:
    """The recipe's method keys with every unset one resolved: explicit > conventions preset > default."""
    preset = CONVENTIONS[recipe.conventions or "loramerge"]
    rules = {key: getattr(recipe, key) or preset[key] for key in CONVENTION_KEYS}
    given = {
        key: getattr(recipe, key)
        for key in (
            "rank",
            "energy",
            "density",
            "majority_sign",
            "alpha",
            "task_fraction",
            "common_fraction",
            "subspace",
            "subspace_beta",
        )
        if getattr(recipe, key) is not None
    }
    defaults = {"normalize": METHODS[recipe.method].normalize_default}  # the method's, then the preset's tool's
    defaults |= PRESET_DEFAULTS.get((recipe.conventions or "loramerge", recipe.method), {})
    resolved = {key: default if getattr(recipe, key) is None else getattr(recipe, key) for key, default in defaults.items()}
    return MethodSettings(**{**given, **resolved}, **rules)


def settings_used(recipe: MergeRecipe) -> dict[str, object]:
    """The resolved values of the keys the recipe's method reads, for merge_report.json."""
    settings = method_settings(recipe)
    used = {key: getattr(settings, key) for key in sorted(METHODS[recipe.method].keys) if hasattr(settings, key)}
    if "seed" in METHODS[recipe.method].keys:
        used["seed"] = recipe.seed or 0
    return used
