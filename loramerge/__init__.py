"""loramerge: cross-lingual transfer for LoRA fine-tuned LLMs by middle-layer alignment and exact merging."""

from loramerge.errors import LoramergeError
from loramerge.merge.engine import MergeResult, merge_adapters
from loramerge.merge.recipe import MergeRecipe

__all__ = ["LoramergeError", "MergeRecipe", "MergeResult", "merge_adapters"]
__version__ = "0.1.0"
