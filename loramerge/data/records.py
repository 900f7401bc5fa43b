"""Training data as files: read task and parallel-sentence files into records (loramerge.data.tokenization turns
records into token ids and batches).

Task files are JSONL, one record a line: {"prompt", "completion"} or {"messages": [{"role", "content"}, ...]},
with an optional "lang"; extra keys are ignored. Pairs files are JSONL {"source", "target", "source_lang"?,
"target_lang"?} or TSV source<TAB>target. Every problem of a file is reported at once, with its line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramerge.errors import LoramergeError

MAX_PROBLEMS = 20  # past this, more lines of the same mistake do not help the user fix the file
ROLES = ("system", "user", "assistant")
TSV_HEADER = "source\ttarget"
TASK_HINT = 'each record needs "prompt" and "completion" strings, or "messages"'
MESSAGE_HINT = 'each message needs a "role" ("system", "user" or "assistant") and a non-empty "content" string'
PAIR_HINT = 'each record needs "source" and "target" strings'
LANG_HINT = 'give a language code such as "de", or leave the key out'
_MISSING = object()


@dataclass(frozen=True)
class TaskRecord:
    """One task example. For chat records `messages` is the conversation (what tokenize_task trains on);
    `completion` is its last assistant message and `prompt` the user message before that ("" if none),
    for display and simple evaluation."""

    prompt: str
    completion: str
    messages: list[dict[str, str]] | None
    lang: str | None
    line: int


@dataclass(frozen=True)
class SentencePair:
    source: str
    target: str
    source_lang: str | None
    target_lang: str | None


def raise_problems(problems: list[str]) -> None:
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more"]
    if problems:
        raise LoramergeError(problems)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise LoramergeError(f"{path}: {'is a folder' if path.is_dir() else 'does not exist'}; give the path of a data file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise LoramergeError(f"{path}: cannot be read ({error.strerror})") from error


def _lines(path: Path, raw: bytes, problems: list[str]) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a UTF-8 file with their 1-based numbers; a problem for each undecodable one.
    Decoding line by line names the line of a bad byte; being a generator keeps the problems in line order."""
    for number, chunk in enumerate(raw.split(b"\n"), 1):
        try:
            text = chunk.decode("utf-8").rstrip("\r")  # files written on Windows end lines with \r\n
        except UnicodeDecodeError as error:
            problems.append(f"{path}:{number}: not valid UTF-8 (byte {error.start + 1} of the line); save the file as UTF-8")
            continue
        text = text.removeprefix("\ufeff") if number == 1 else text  # the byte-order mark some editors write
        if text.strip():
            yield number, text


def _finish(path: Path, records: list[Any], problems: list[str]) -> None:
    raise_problems(problems)
    if not records:
        raise LoramergeError(f"{path}: has no records (it is empty or blank); add one record per line")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _json_object(text: str, where: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"{where}: invalid JSON ({error.msg} at column {error.colno}); each line must be one JSON object")
        return None
    if not isinstance(value, dict):
        problems.append(f"{where}: is {_json_type(value)}, not a JSON object; each line must be one JSON object")
        return None
    return value


def _text(
    obj: dict[str, Any], key: str, where: str, problems: list[str], hint: str, label: str = "", required: bool = True
) -> str | None:
    """obj[key] as a non-blank string; None (with a problem, unless an optional key is absent) otherwise."""
    label = label or f'"{key}"'
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            problems.append(f"{where}: {label} is {'missing' if value is _MISSING else 'null'}; {hint}")
        return None
    if not isinstance(value, str):
        problems.append(f"{where}: {label} must be a string, not {_json_type(value)}; {hint}")
        return None
    if not value.strip():
        problems.append(f"{where}: {label} is empty; {hint}")
        return None
    return value


def _messages(value: Any, where: str, problems: list[str]) -> list[dict[str, str]] | None:
    if not isinstance(value, list):  # an empty list is reported below, as a conversation without an assistant turn
        problems.append(f'{where}: "messages" must be an array, not {_json_type(value)}; {MESSAGE_HINT}')
        return None
    messages: list[dict[str, str]] = []
    before = len(problems)
    for index, message in enumerate(value):
        label = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: {label} is {_json_type(message)}, not an object; {MESSAGE_HINT}")
            continue
        role = _text(message, "role", where, problems, MESSAGE_HINT, f'{label}["role"]')
        content = _text(message, "content", where, problems, MESSAGE_HINT, f'{label}["content"]')
        if role is not None and role not in ROLES:
            problems.append(f'{where}: {label} has role "{role}"; use "system", "user" or "assistant"')
        elif role is not None and content is not None:
            messages.append({"role": role, "content": content})  # only what chat templates read
    if len(problems) > before:
        return None
    if not any(message["role"] == "assistant" for message in messages):
        problems.append(f'{where}: "messages" has no "assistant" message; the loss is taken on assistant messages, so add one')
        return None
    if messages[0]["role"] == "assistant":
        problems.append(f'{where}: messages[0] is an assistant message; start with a "system" or "user" message for it to answer')
        return None
    return messages


def _task_record(obj: dict[str, Any], where: str, line: int, problems: list[str]) -> TaskRecord | None:
    before = len(problems)
    lang = _text(obj, "lang", where, problems, LANG_HINT, required=False)
    if "messages" in obj:
        if "prompt" in obj or "completion" in obj:
            problems.append(f'{where}: has both "messages" and "prompt"/"completion"; use one form per record')
            return None
        messages = _messages(obj["messages"], where, problems)
        if messages is None or len(problems) > before:
            return None
        last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
        prompt = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
        return TaskRecord(prompt, messages[last]["content"], messages, lang, line)
    if "prompt" not in obj and "completion" not in obj:
        keys = ", ".join(f'"{key}"' for key in obj) or "none"
        problems.append(f"{where}: {TASK_HINT} (found keys: {keys})")
        return None
    prompt = _text(obj, "prompt", where, problems, TASK_HINT)
    completion = _text(obj, "completion", where, problems, TASK_HINT)
    if prompt is None or completion is None or len(problems) > before:
        return None
    return TaskRecord(prompt, completion, None, lang, line)


def read_task_file(path: Path) -> list[TaskRecord]:
    raw, problems = _read_bytes(path), []
    records: list[TaskRecord] = []
    for number, text in _lines(path, raw, problems):
        obj = _json_object(text, f"{path}:{number}", problems)
        record = None if obj is None else _task_record(obj, f"{path}:{number}", number, problems)
        if record is not None:
            records.append(record)
    _finish(path, records, problems)
    return records


def _pair_from_json(text: str, where: str, problems: list[str]) -> SentencePair | None:
    obj = _json_object(text, where, problems)
    if obj is None:
        return None
    before = len(problems)
    source, target = (_text(obj, key, where, problems, PAIR_HINT) for key in ("source", "target"))
    source_lang, target_lang = (
        _text(obj, key, where, problems, LANG_HINT, required=False) for key in ("source_lang", "target_lang")
    )
    if source is None or target is None or len(problems) > before:
        return None
    return SentencePair(source, target, source_lang, target_lang)


def _pair_from_tsv(text: str, where: str, problems: list[str]) -> SentencePair | None:
    cells = text.split("\t")
    if len(cells) != 2:
        problems.append(
            f"{where}: has {len(cells)} tab-separated columns; each line needs exactly two, source<TAB>target (use .jsonl for text with tabs)"
        )
        return None
    # Stray spaces around a cell are never part of the sentence; left in, they would become tokens in the mean pool.
    source, target = (cell.strip() for cell in cells)
    for name, cell in (("source", source), ("target", target)):
        if not cell:
            problems.append(f"{where}: the {name} column is empty; each line needs a source and a target sentence")
    return SentencePair(source, target, None, None) if source and target else None


def read_pairs_file(path: Path) -> list[SentencePair]:
    raw, problems = _read_bytes(path), []
    parse = {".jsonl": _pair_from_json, ".tsv": _pair_from_tsv}.get(path.suffix.lower())
    if parse is None:
        raise LoramergeError(
            f'{path}: unknown pairs format; use .jsonl with "source" and "target" keys, or .tsv with source<TAB>target lines'
        )
    pairs = []
    for number, text in _lines(path, raw, problems):
        pair = (
            None if parse is _pair_from_tsv and (number, text) == (1, TSV_HEADER) else parse(text, f"{path}:{number}", problems)
        )
        if pair is not None:
            pairs.append(pair)
    _finish(path, pairs, problems)
    return pairs
