"""Adapters checked before PEFT loads them, so a mistake reads as what it is, not as PEFT's own error.

Before the model loads: the folder, its config and its safetensors header (a missing file used to surface as
"Repo id must be in the form ..."; a truncated one as a raw SafetensorError). After: every LoRA factor against
the module it attaches to, so an adapter of another model names the first module that does not fit instead of a
cut-off state_dict error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from loramerge.adapters import CONFIG_FILE, WEIGHTS_FILE, split_key
from loramerge.errors import LoramergeError, ProblemList
from loramerge.hub.client import resolve_adapter


def check_adapter_folder(path: Path) -> None:
    fix = "pass a PEFT adapter folder (saved with save_pretrained)"
    if not path.is_dir():
        raise LoramergeError(f"adapter {path}: not found; {fix}")
    if not (path / CONFIG_FILE).is_file():
        raise LoramergeError(f"adapter {path}: has no {CONFIG_FILE}; {fix}")
    try:
        json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoramergeError(f"adapter {path / CONFIG_FILE}: not readable JSON ({exc}); re-save the adapter") from None
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise LoramergeError(f"adapter {path}: has no {WEIGHTS_FILE}, so the folder is incomplete; copy or re-save the adapter")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            list(handle.keys())
    except Exception as exc:  # safetensors raises several types for truncated or garbled headers
        reason = " ".join(str(exc).split())[:160]
        raise LoramergeError(f"adapter {weights}: unreadable safetensors file ({reason}); copy or re-save the adapter") from None


def resolve_and_check(adapters: dict[str, Path]) -> dict[str, Path]:
    """name -> local folder: a Hub id org/name[@revision] is downloaded (as merge and export do), a local folder
    that exists wins; then every folder is checked. Hub problems are reported together."""
    problems = ProblemList()
    resolved = {name: found[0] for name, path in adapters.items() if (found := resolve_adapter(str(path), problems))}
    problems.raise_if_any()
    for path in resolved.values():
        check_adapter_folder(path)
    return resolved


def factor_shapes(path: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """{module path: {"A": shape, "B": shape}} of a PEFT LoRA safetensors file."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as handle:
        keys = handle.keys()  # a safetensors handle is not iterable itself
        for key in keys:
            if (split := split_key(key)) is not None:
                module, factor, _ = split
                modules.setdefault(module, {})[factor] = tuple(handle.get_slice(key).get_shape())
    return modules


def check_adapter_fits(path: Path, model: Any, model_spec: str) -> None:
    """Every LoRA module exists in `model` with the in/out features its factors imply."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for module, shapes in sorted(factor_shapes(path).items()):
        try:
            layer = base.get_submodule(module)
        except AttributeError:
            raise LoramergeError(
                f"adapter {path}: module {module} does not exist in --model {model_spec}; the adapter was trained on another model"
            ) from None
        inner = getattr(layer, "base_layer", layer)
        expected = (getattr(inner, "in_features", None), getattr(inner, "out_features", None))
        found = (shapes.get("A", (None, None))[-1], shapes.get("B", (None,))[0])
        if None in expected or expected == found:
            continue
        raise LoramergeError(
            f"adapter {path}: {module} takes {found[0]} -> {found[1]} features but --model {model_spec} has "
            f"{expected[0]} -> {expected[1]}; the adapter was trained on another model (see its adapter_config.json)"
        )
