"""Scales that overflow: every factor that multiplies an update, checked against that update before any work.

Input i's update B_i A_i enters a merge multiplied by its scale s_i (lora_alpha / r, or / sqrt(r) with rsLoRA,
from its adapter_config.json), its weight w_i and the method's own factors: `alpha` (tsv, iso_c, iso_cts) and
1 / `density` (DARE rescales the entries it keeps). Every one is finite (the recipe refuses NaN and infinity),
yet their product can make an update no float holds: `alpha: 1e308` ended in NaN inside an SVD, an error that
said the program broke (issue 35). The factor norms measured before any work (inputs.measure_inputs) bound what
each method computes; a merge whose bound does not fit float32 (the dtype every method works in) or the output
dtype is refused, naming the factor that makes it so, its value, and what would fit. Bounds are kept as natural
logs: alpha 1e308 times a norm of 7 is not a float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from loramerge.adapters import CONFIG_FILE, LoraAdapter
from loramerge.merge.layer_weights import weight_and_key
from loramerge.merge.lowrank import FactorNorms
from loramerge.merge.methods import METHODS, MethodSettings
from loramerge.merge.recipe import MergeRecipe

FLOAT32_MAX = torch.finfo(torch.float32).max
# The dense methods' randomised SVD multiplies the merged update by a Gaussian probe whose spectral norm is about
# sqrt(in) + sqrt(k) (~130 for 14336 input features), and Iso-CTS' isotropic values can reach twice the bound
# below: 2^10 covers both. It costs nothing real: an update of norm 3.3e35 is no trained adapter's.
FLOAT32_HEADROOM = 1024.0

FactorKind = Literal["key", "inverse", "config", "tensors"]


@dataclass(frozen=True)
class Factor:
    """One number that multiplies an input's update, named as the user sets it."""

    label: str  # 'alpha', 'sources.1.weight (out/align)', 'out/a/adapter_config.json: the scale lora_alpha / r', ...
    value: float  # as given (for `density`, the density)
    multiplier: float  # what it multiplies the update's norm by (for `density`, 1 / density)
    kind: FactorKind


@dataclass(frozen=True)
class Term:
    """One input of one module: its factors (the tensors' own size last) and log k, k = |their product|."""

    factors: list[Factor]
    norms: FactorNorms
    log_k: float


@dataclass(frozen=True)
class Excess:
    """A module whose bound exceeds a limit (natural logs), and the factor blamed."""

    factor: Factor
    module: str
    bound: float
    limit: float
    where: str


def log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


def log_sum(logs: list[float]) -> float:
    """log(sum(exp(x))) without leaving float range."""
    top = max(logs, default=-math.inf)
    return top if top == -math.inf else top + math.log(sum(math.exp(x - top) for x in logs))


def size(norms: FactorNorms) -> float:
    """What an input's factor norms bound: its update (||B A|| <= ||B|| ||A||) and its B factor alone."""
    return max(norms.b * norms.a, norms.b)


def log_bound(method: str, terms: list[Term]) -> float:
    """log of an upper bound of the Frobenius norm, so of every entry, of what `method` computes and writes for one
    module.

    Every method's update is at most the sum of the scaled inputs' norms (the triangle inequality; TIES and DARE
    keep, rescale and add entries of them; tsv and Iso keep singular values of them); B is counted alone too,
    because cat writes w_i s_i B_i as it is. PEFT's `linear` multiplies sqrt(k_i) into both factors and adds cross
    terms B_i A_j, so its bound is the product of the summed factor norms."""
    if method == "linear":
        b = log_sum([term.log_k / 2 + log(term.norms.b) for term in terms])
        a = log_sum([term.log_k / 2 + log(term.norms.a) for term in terms])
        return max(b + a, b, a)
    return log_sum([term.log_k + log(size(term.norms)) for term in terms])


def scientific(natural_log: float) -> str:
    """exp(natural_log) as '6.8e+308', also beyond float range."""
    if natural_log == -math.inf:
        return "0"
    exponent10 = natural_log / math.log(10)
    exponent = math.floor(exponent10)
    return f"{10 ** (exponent10 - exponent):.2g}e{exponent:+03d}"


def method_factors(method: str, settings: MethodSettings) -> list[Factor]:
    """The factors the method itself multiplies every update by."""
    keys = METHODS[method].keys
    factors = []
    if "alpha" in keys:
        factors.append(Factor("alpha", settings.alpha, abs(settings.alpha), "key"))
    if "dare_rescale" in keys:  # inverse_density divides by p; l1 rescales by about as much where few entries survive
        factors.append(Factor("density", settings.density, 1.0 / settings.density, "inverse"))
    return factors


def input_term(
    recipe: MergeRecipe, adapter: LoraAdapter, index: int, name: str, num_layers: int, norms: FactorNorms, shared: list[Factor]
) -> Term:
    """One input's factors on one module: the method's, its weight, its scale, and its tensors' own size."""
    source = recipe.sources[index]
    weight, key = weight_and_key(source, name, num_layers)
    scale = adapter.modules[name].scale
    divisor = "sqrt(r)" if adapter.config.get("use_rslora") else "r"
    factors = [
        *shared,
        Factor(f"sources.{index}.{key} ({source.path})", weight, abs(weight), "key"),
        Factor(f"{adapter.path / CONFIG_FILE}: the scale lora_alpha / {divisor}", scale, abs(scale), "config"),
    ]
    tensors = Factor(f"{adapter.weights_path}: ||B|| ||A|| of a module", norms.b * norms.a, size(norms), "tensors")
    return Term([*factors, tensors], norms, sum(log(factor.multiplier) for factor in factors))


def culprit(terms: list[Term]) -> Factor:
    """The largest factor of the largest scaled input: the one that makes the update too large. The tensors' own
    size is a factor too: tensors that large come from a corrupt or diverged adapter."""
    largest = max(terms, key=lambda term: term.log_k + log(size(term.norms)))
    return max(largest.factors, key=lambda factor: factor.multiplier)


def limits(dtype: torch.dtype) -> list[tuple[float, str]]:
    """(log of the largest allowed bound, what it is): float32, which every method works in, and a narrower output
    dtype (float16)."""
    work = FLOAT32_MAX / FLOAT32_HEADROOM
    found = [
        (
            math.log(work),
            f"float32's largest value {FLOAT32_MAX:.2g} over the {FLOAT32_HEADROOM:g}x headroom a merge's products need",
        )
    ]
    if (largest := torch.finfo(dtype).max) < work:
        found.append((math.log(largest), f"{str(dtype).removeprefix('torch.')}'s largest value, the output dtype"))
    return found


def module_excess(method: str, name: str, terms: list[Term], dtype: torch.dtype) -> Excess | None:
    bound = log_bound(method, terms)
    for limit, where in limits(dtype):
        if bound > limit:
            return Excess(culprit(terms), name, bound, limit, where)
    return None


def scale_problems(
    recipe: MergeRecipe,
    adapters: list[LoraAdapter],
    names: list[str],
    measured: dict[tuple[int, str], FactorNorms],
    settings: MethodSettings,
    dtype: torch.dtype,
    num_layers: int,
) -> list[str]:
    """One line per factor that makes some module's update too large for float32 or the output dtype."""
    shared = method_factors(recipe.method, settings)
    blamed: dict[str, list[Excess]] = {}
    for name in names:
        terms = [
            input_term(recipe, adapter, index, name, num_layers, measured[index, name], shared)
            for index, adapter in enumerate(adapters)
            if name in adapter.modules
        ]
        if (excess := module_excess(recipe.method, name, terms, dtype)) is not None:
            blamed.setdefault(excess.factor.label, []).append(excess)
    return [describe(excesses) for excesses in blamed.values()]


def advice(factor: Factor, log_fits: float) -> str:
    """How to fix it; log_fits < 0 is the log of the share of the bound that fits."""
    if factor.kind == "key":
        return f"give it a magnitude below {scientific(log(abs(factor.value)) + log_fits)}"
    if factor.kind == "inverse":
        return f"give it above {scientific(min(log(factor.value) - log_fits, 0.0))}"
    if factor.kind == "config":
        return "lower lora_alpha there: no trained adapter's scale is that large"
    return "the adapter is corrupt or diverged"


def describe(excesses: list[Excess]) -> str:
    """One line for the modules one factor makes too large, with the worst of them."""
    worst = max(excesses, key=lambda excess: excess.bound - excess.limit)
    factor = worst.factor
    count = f"{len(excesses)} module{'s' if len(excesses) > 1 else ''}"
    return (
        f"{factor.label} = {factor.value:.3g} makes the update of {count} too large to represent: {worst.module} would "
        f"reach a norm of up to {scientific(worst.bound)}, beyond {scientific(worst.limit)} ({worst.where}); "
        f"{advice(factor, worst.limit - worst.bound)}"
    )
