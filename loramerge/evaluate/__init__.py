"""Evaluation: task scores per language and the per-layer cross-lingual retrieval probe.

`evaluator.Evaluator` loads a base model once and scores it and its adapters by batched greedy generation
(`generation`) with the metrics of `metrics`; `run` is `loramerge eval` as a library call and `report` writes
its files. `retrieval` is the pure math of top-1 and margin retrieval; `probe` pools every layer's states and
`probe_run` is `loramerge probe` as a library call.

May import: the shared core, `loramerge.data`, `loramerge.hub` (adapters given by Hub id) and `loramerge.models`.
Never `merge`, `train`, `cli` or `demo`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # `loramerge.evaluate.Evaluator` is the documented entry point; importing it lazily keeps torch and
    # transformers out of `loramerge --help` and of the pure modules (retrieval, metrics).
    if name == "Evaluator":
        from loramerge.evaluate.evaluator import Evaluator

        return Evaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
