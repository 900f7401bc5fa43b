"""The merge recipe: what to merge and how (the CLI's flags map onto the same schema)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loramerge.merge.layer_weights import parse_layer_range
from loramerge.merge.methods import METHODS
from loramerge.recipes import StrictModel

MethodName = Literal["cat", "svd", "ties", "dare_ties", "dare_linear", "magnitude_prune", "linear"]
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
    density: float = Field(0.5, gt=0.0, le=1.0, description="fraction of dW entries kept by ties/dare/prune")
    normalize: bool = Field(False, description="ties: divide by the summed weights of agreeing adapters")
    majority_sign: Literal["total", "frequency"] = "total"
    dtype: DtypeName | None = Field(None, description="output dtype; default: the inputs' (float32 if mixed)")
    seed: int = 0
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
        if (self.rank is not None or self.energy is not None) and not info.truncates:
            raise ValueError(f"method {self.method!r} does not truncate; use method 'svd' to set a rank or energy")
        return self
