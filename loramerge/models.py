"""Base model and tokenizer from a local folder or a Hub id with an optional revision (`org/name@rev`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loramerge.errors import LoramergeError

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
    if Path(spec).is_dir():
        return ModelSource(location=str(Path(spec)))
    name, _, revision = spec.partition("@")
    if HUB_ID.match(name) and (not _ or revision):
        return ModelSource(location=name, revision=revision or None)
    raise LoramergeError(
        f"--model {spec!r}: not a local model folder and not a Hub id; pass a folder with config.json, or org/name[@revision]"
    )


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source.location, revision=source.revision)
    if tokenizer.pad_token_id is None:
        # Decoder LMs often ship without a pad token; padding positions are masked, so EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(source: ModelSource, dtype: str = "float32") -> PreTrainedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, revision=source.revision, dtype=DTYPES[dtype])
    except OSError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoramergeError(f"--model {source.location}: cannot load ({first_line})") from exc
    model.config.use_cache = False  # training never decodes incrementally; the cache only costs memory
    return model
