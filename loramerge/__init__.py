"""loramerge: cross-lingual transfer for LoRA fine-tuned LLMs by middle-layer alignment and exact merging."""

import os

# OpenMP threads that spin while waiting turn a busy shared machine into a crawl: an 8B-shaped svd merge
# with 2 torch threads took 110 s with other jobs on the 2 cores, 8.8 s with passive waiting and 1.4 s
# with 1 thread (which merge uses). Must be set before torch starts its thread pool; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from loramerge.errors import LoramergeError  # noqa: E402
from loramerge.merge.engine import MergeResult, merge_adapters  # noqa: E402
from loramerge.merge.recipe import MergeRecipe  # noqa: E402

__all__ = ["LoramergeError", "MergeRecipe", "MergeResult", "merge_adapters"]
__version__ = "0.1.0"
