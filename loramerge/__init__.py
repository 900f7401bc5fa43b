"""loramerge: cross-lingual transfer for LoRA fine-tuned LLMs by middle-layer alignment and exact merging.

The Python API is loaded on first use (PEP 562), so that importing the command line does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loramerge.errors import LoramergeError
    from loramerge.merge.engine import MergeResult, merge_adapters
    from loramerge.merge.recipe import MergeRecipe

__all__ = ["LoramergeError", "MergeRecipe", "MergeResult", "merge_adapters"]
__version__ = "0.1.0"

_HOMES = {
    "LoramergeError": "loramerge.errors",
    "MergeRecipe": "loramerge.merge.recipe",
    "MergeResult": "loramerge.merge.engine",
    "merge_adapters": "loramerge.merge.engine",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'loramerge' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
