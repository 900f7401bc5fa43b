"""The PEFT LoRA on-disk contract: read, validate and write adapter folders.

PEFT's format is kept exactly: `adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight` / `.lora_B.weight` (embeddings: `.lora_embedding_A` /
`.lora_embedding_B`). Tensors are read lazily, one module at a time, so memory does not grow with the
number of modules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from loramerge.errors import ProblemList
from loramerge.hashing import sha256_of_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_WEIGHTS_FILE = "adapter_model.bin"
KEY_PREFIX = "base_model.model."
# Key suffix -> (factor, is_embedding). PEFT stores embedding factors as bare parameters.
FACTOR_SUFFIXES: dict[str, tuple[str, bool]] = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}
# Tensors of PEFT features whose merge semantics are not a sum of B @ A products.
UNSUPPORTED_KEY_MARKERS: dict[str, str] = {
    "lora_magnitude_vector": "DoRA magnitude vectors (use_dora)",
    "lora_B.bias": "LoRA bias terms (lora_bias)",
    "token_adapter": "trainable token deltas (trainable_token_indices)",
}


def pattern_value(patterns: Mapping[str, Any], module_name: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches a suffix of the name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return patterns[key]
    return default


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


@dataclass(frozen=True)
class LoraModule:
    """Where one LoRA module's two factors live in one adapter file."""

    name: str
    a_key: str
    b_key: str
    embedding: bool
    rank: int
    in_features: int
    out_features: int
    scale: float


@dataclass
class LoraAdapter:
    """A validated PEFT LoRA adapter folder; tensors stay on disk until read."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule]
    carried: dict[str, tuple[int, ...]]  # full tensors (modules_to_save, saved embeddings) -> shape
    dtypes: set[str] = field(default_factory=set)
    file_sha256: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # repo_id, revision, commit when pulled from the Hub

    @property
    def label(self) -> str:
        """How provenance names the adapter: org/name@commit for a Hub download, else its folder."""
        return f"{self.origin['repo_id']}@{self.origin['commit']}" if self.origin else str(self.path)

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE


def _read_config(path: Path, problems: ProblemList) -> dict[str, Any] | None:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        problems.add(f"{path}: no {CONFIG_FILE}; expected a PEFT LoRA adapter folder (save it with save_pretrained)")
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.add(f"{config_path}: not valid JSON ({exc}); re-save the adapter with PEFT")
        return None
    if not isinstance(config, dict):
        problems.add(f"{config_path}: expected a JSON object, got {type(config).__name__}")
        return None
    return config


def _check_config_features(config_path: Path, config: dict[str, Any], problems: ProblemList) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        problems.add(f"{config_path}: peft_type is {peft_type!r}, only 'LORA' adapters can be merged")
    if config.get("use_dora"):
        problems.add(
            f"{config_path}: use_dora is true; DoRA's magnitude vectors do not add linearly, merge them with the base model instead"
        )
    if config.get("lora_bias"):
        problems.add(f"{config_path}: lora_bias is true; LoRA bias terms are not supported by loramerge")
    if config.get("trainable_token_indices"):
        problems.add(f"{config_path}: trainable_token_indices is set; trainable-token adapters are not supported by loramerge")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        # json reads NaN and Infinity: NaN <= 0 is false, so a NaN lora_alpha passed and merged into NaN factors
        if not isinstance(value, (int, float)) or not 0 < value < math.inf:
            problems.add(f"{config_path}: {key} must be a positive number, got {value!r}")


def split_key(key: str) -> tuple[str, str, bool] | None:
    """'base_model.model.x.lora_A.weight' -> ('x', 'A', False); None for non-factor keys."""
    for suffix, (factor, embedding) in FACTOR_SUFFIXES.items():
        if key.startswith(KEY_PREFIX) and key.endswith(suffix):
            return key[len(KEY_PREFIX) : -len(suffix)], factor, embedding
    return None


def load_adapter(path: Path, problems: ProblemList) -> LoraAdapter | None:
    """Read and validate an adapter's config and tensor index. Adds every problem found to `problems`."""
    if not path.is_dir():
        problems.add(f"{path}: adapter folder not found; pass a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
        return None
    config = _read_config(path, problems)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        if (path / PICKLED_WEIGHTS_FILE).is_file():
            problems.add(
                f"{path}: only pickled {PICKLED_WEIGHTS_FILE} found, which is unsafe to load; convert it with "
                f"`PeftModel.from_pretrained(base, '{path}').save_pretrained('{path}', safe_serialization=True)`"
            )
        else:
            problems.add(f"{path}: no {WEIGHTS_FILE}; the adapter folder is incomplete")
        return None
    if config is None:
        return None
    _check_config_features(path / CONFIG_FILE, config, problems)
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in list(handle.keys())}
            shapes = {key: tuple(piece.get_shape()) for key, piece in slices.items()}
            dtypes = {piece.get_dtype() for piece in slices.values()}
    except Exception as exc:  # safetensors raises several types for truncated or garbled headers
        problems.add(f"{weights_path}: unreadable safetensors file ({type(exc).__name__}: {exc}); re-save or re-download it")
        return None
    modules, carried = _index_tensors(weights_path, config, shapes, problems)
    return LoraAdapter(path=path, config=config, modules=modules, carried=carried, dtypes=dtypes)


def _index_tensors(
    weights_path: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]], problems: ProblemList
) -> tuple[dict[str, LoraModule], dict[str, tuple[int, ...]]]:
    factors: dict[str, dict[str, str]] = {}
    embedding_modules: set[str] = set()
    carried: dict[str, tuple[int, ...]] = {}
    for key in shapes:
        unsupported = next((what for marker, what in UNSUPPORTED_KEY_MARKERS.items() if marker in key), None)
        if unsupported:
            problems.add(f"{weights_path}: tensor {key} holds {unsupported}, which loramerge does not support")
            continue
        split = split_key(key)
        if split is None:
            if "lora_" in key or not key.startswith(KEY_PREFIX):
                problems.add(
                    f"{weights_path}: unrecognised tensor key {key!r}; expected PEFT LoRA keys such as base_model.model.<module>.lora_A.weight"
                )
            else:
                carried[key] = shapes[key]
            continue
        name, factor, embedding = split
        factors.setdefault(name, {})[factor] = key
        if embedding:
            embedding_modules.add(name)
    modules: dict[str, LoraModule] = {}
    for name, pair in sorted(factors.items()):
        module = _build_module(weights_path, config, name, pair, name in embedding_modules, shapes, problems)
        if module is not None:
            modules[name] = module
    if not modules:
        problems.add(f"{weights_path}: holds no LoRA factors (lora_A / lora_B tensors)")
    return modules, carried


def _build_module(
    weights_path: Path,
    config: dict[str, Any],
    name: str,
    pair: dict[str, str],
    embedding: bool,
    shapes: dict[str, tuple[int, ...]],
    problems: ProblemList,
) -> LoraModule | None:
    if set(pair) != {"A", "B"}:
        missing = "B" if "A" in pair else "A"
        problems.add(f"{weights_path}: module {name} has no lora_{missing} tensor; the file is incomplete")
        return None
    a_shape, b_shape = shapes[pair["A"]], shapes[pair["B"]]
    if len(a_shape) != 2 or len(b_shape) != 2:
        problems.add(
            f"{weights_path}: module {name} has {len(a_shape)}-D factors; only linear and embedding LoRA layers can be merged"
        )
        return None
    if a_shape[0] != b_shape[1]:
        problems.add(f"{weights_path}: module {name}: lora_A has rank {a_shape[0]} but lora_B has rank {b_shape[1]}")
        return None
    rank = a_shape[0]
    configured_rank = pattern_value(config.get("rank_pattern") or {}, name, config.get("r"))
    if configured_rank != rank:
        problems.add(
            f"{weights_path}: module {name} has rank {rank} but adapter_config.json gives r={configured_rank}; fix r or rank_pattern"
        )
        return None
    alpha = pattern_value(config.get("alpha_pattern") or {}, name, config.get("lora_alpha"))
    scale = lora_scale(float(alpha), rank, bool(config.get("use_rslora")))
    return LoraModule(
        name=name,
        a_key=pair["A"],
        b_key=pair["B"],
        embedding=embedding,
        rank=rank,
        in_features=a_shape[1],
        out_features=b_shape[0],
        scale=scale,
    )


def hash_adapter_files(adapter: LoraAdapter) -> None:
    """Record the sha256 of the files that define the adapter (for provenance in the model card)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        adapter.file_sha256[name] = sha256_of_file(adapter.path / name)
