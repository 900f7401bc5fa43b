"""Merges that cancel: each module's output norm relative to its largest input's own norm, and the warning (an
error with `strict`) when a merge keeps almost nothing of its inputs.

`--weights 1,-1` of one adapter wrote an update that is exactly zero and reported "max relative error 0" (issue
35): legal, and almost always a mistake in the weights (a sign, a scale). An input's norm is its own update's,
||s_i B_i A_i||, as the adapter applies it alone: against the weighted inputs, TIES (which divides by the weights)
with weights 1e30 read as zero, and weights 1e-30 read as a whole merge. The norms are R x R Gram products
(engine.module_norms): the kept singular values where a method has them, Gram blocks otherwise.
"""

from __future__ import annotations

from typing import Any

# A module whose update is below a thousandth of its largest input cancels: differently trained adapters merged
# with weights of ordinary size keep far more (their updates are nearly orthogonal, so a sum keeps >= ~1/sqrt(n) of
# the largest), and float32 rounding leaves ~1e-7, far less.
THRESHOLD = 1e-3
# Below a millionth of the largest input an update is zero for any use (the inputs' own float32 rounding is 6e-8 of
# each entry, summed over a few inputs): `--weights 1,-1` of one adapter measures ~1e-8 there.
ZERO = 1e-6
LISTED = 3  # modules named in the warning line; merge_report.json lists them all


def relative_norm(norm: float, input_norms: list[float]) -> float | None:
    """The output's norm over the largest input's; None when every input is zero (nothing to cancel)."""
    largest = max(input_norms, default=0.0)
    return norm / largest if largest > 0 else None


def is_zero(entry: dict[str, Any]) -> bool:
    """Zero as written (every factor entry 0) or below ZERO of its largest input."""
    return bool(entry.get("zero")) or entry["norm"] <= ZERO * max(entry["input_norms"], default=0.0)


def cancels(entry: dict[str, Any]) -> bool:
    """Far smaller than its largest input, though some input is non-zero and weighted (every weight 0 asks for 0)."""
    relative = entry["relative_norm"]
    weighted = any(weight != 0 for weight in entry["weights"])
    return relative is not None and weighted and (relative < THRESHOLD or is_zero(entry))


def whole_relative_norm(modules: dict[str, dict[str, Any]]) -> float | None:
    """The whole output's norm over the largest whole input's (each summed over its modules)."""
    inputs: dict[int, float] = {}
    for entry in modules.values():
        for source, norm in zip(entry["sources"], entry["input_norms"]):
            inputs[source] = inputs.get(source, 0.0) + norm**2
    output = sum(entry["norm"] ** 2 for entry in modules.values()) ** 0.5
    return relative_norm(output, [total**0.5 for total in inputs.values()])


def cancellation_summary(modules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For merge_report.json: the threshold, the whole merge's relative norm, the modules that cancel, and whether
    every module is zero."""
    return {
        "threshold": THRESHOLD,
        "relative_norm": whole_relative_norm(modules),
        "modules": [name for name, entry in modules.items() if cancels(entry)],
        "zero": bool(modules) and all(is_zero(entry) for entry in modules.values()),
    }


def cancellation_warnings(summary: dict[str, Any], count: int) -> list[str]:
    """One line: the louder one when the whole adapter is zero, else the modules that cancel (where
    merge_report.json has the rest)."""
    return [
        f"{problem} (merge_report.json: cancellation, and each module's relative_norm)"
        for problem in cancellation_problems(summary, count)
    ]


def cancellation_problems(summary: dict[str, Any], count: int) -> list[str]:
    """What cancels, in one line: the louder one when the whole adapter is zero, else the modules that cancel."""
    if summary["zero"]:
        return [
            f"the merged adapter is ZERO: every one of the {count} merged modules is zero, so the adapter changes "
            "nothing: the weights (or alpha) are 0 or tiny, the weighted inputs cancel (--weights 1,-1 of one adapter), "
            "or the inputs' updates are zero (an untrained adapter has B = 0)"
        ]
    names = summary["modules"]
    if not names:
        return []
    listed = ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
    whole = summary["relative_norm"]
    overall = f"; the whole merge keeps {whole:.1e} of its largest input" if whole is not None and whole < THRESHOLD else ""
    return [
        f"{len(names)} of {count} merged modules keep less than {THRESHOLD:g} of their largest input's norm "
        f"({listed}){overall}: the weighted inputs cancel there, or the weights (or alpha) are tiny; check their signs "
        "and sizes"
    ]
