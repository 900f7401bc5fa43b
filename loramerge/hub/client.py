"""The Hugging Face Hub: pull adapters by `org/name[@revision]`, push an adapter folder in one commit.

Everything goes through huggingface_hub, so `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_HOME` and the token
(`HF_TOKEN`, else the `hf auth login` file) work as they do for every Hugging Face tool. loramerge never
reads, prints or stores the token; its error messages are built from the failure's kind and status,
not from the library's text, which can carry request details.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from loramerge.adapters import CONFIG_FILE, WEIGHTS_FILE, load_adapter
from loramerge.errors import LoramergeError, ProblemList

HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
ADAPTER_FILES = [CONFIG_FILE, WEIGHTS_FILE, "README.md"]  # all a merge reads, plus the card for provenance
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# A failed push or pull is tried this many more times, waiting BACKOFF, 2 x BACKOFF, ... (at most 30 s) in
# between; huggingface_hub already retries single requests, this covers the calls it does not (the commit).
RETRIES_ENV, BACKOFF_ENV = "LORAMERGE_HUB_RETRIES", "LORAMERGE_HUB_BACKOFF"
Result = TypeVar("Result")


@dataclass(frozen=True)
class HubSnapshot:
    """An adapter downloaded from the Hub: the local snapshot folder and the commit it came from."""

    repo_id: str
    revision: str | None  # as asked for: a branch, tag, commit or None (main)
    commit: str  # the resolved commit sha
    path: Path

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit}"


def parse_hub_ref(text: str) -> tuple[str, str | None] | None:
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None); anything else -> None."""
    match = HUB_REF.match(text)
    return (match["repo"], match["revision"]) if match else None


def check_repo_id(repo_id: str, flag: str) -> None:
    """A repo to push to must be 'namespace/name' and pass huggingface_hub's own id rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    problem = None if repo_id.count("/") == 1 else "expected namespace/name, e.g. my-org/task-align-lora"
    if problem is None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            problem = str(exc).split("\n")[0].rstrip(".")
    if problem is not None:
        raise LoramergeError(f"{flag} {repo_id!r}: not a valid Hub repo id ({problem})")


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def failure_reason(exc: BaseException, uploading: bool = False) -> str:
    """A one-line reason for a Hub failure, without request headers (they may carry the token). An upload has no
    cache to fall back on, so its advice differs from a download's."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled) or (
        isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, OfflineModeIsEnabled)
    ):
        if uploading:
            return "HF_HUB_OFFLINE is set, and an upload needs the network; unset HF_HUB_OFFLINE to push"
        return "HF_HUB_OFFLINE is set and it is not in the local cache; unset HF_HUB_OFFLINE to download it"
    if isinstance(exc, RepositoryNotFoundError):
        return f"no such repository on {endpoint()}, or it is private: log in with `hf auth login` or set HF_TOKEN"
    if isinstance(exc, RevisionNotFoundError):
        return "no such revision (branch, tag or commit) in the repository"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        hint = {
            401: "; the token is missing or invalid: set HF_TOKEN or run `hf auth login`",
            403: "; the token may not write there",
        }
        detail = f": {' '.join(exc.server_message.split())[:200]}" if exc.server_message else ""
        return f"{endpoint()} answered HTTP {status}{detail}{hint.get(status, '')}"
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__
        return failure_reason(cause) if cause is not None else "not found in the local cache"
    if isinstance(exc, EntryNotFoundError):
        return "a required file is missing from the repository"
    if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):
        return "the Hub rejected README.md's metadata (" + " ".join(str(exc).split()[4:])[:300] + ")"
    import httpx2  # huggingface_hub's HTTP client

    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if isinstance(exc, httpx2.TransportError):
        fallback = "" if uploading else ", or set HF_HUB_OFFLINE=1 to use the cache"
        return f"cannot reach {endpoint()} ({detail}); check the network or HF_ENDPOINT{fallback}"
    return f"unexpected answer from {endpoint()} ({detail})"


def is_transient(exc: BaseException) -> bool:
    """429, 5xx and dropped or timed-out connections, also when wrapped by a cache fallback."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OfflineModeIsEnabled):
            return False
        if isinstance(seen, HfHubHTTPError) and seen.response is not None:
            return seen.response.status_code in RETRY_STATUS
        if isinstance(seen, httpx2.TransportError):
            # a reset or timed-out connection is worth another try; one that cannot be opened at all
            # (no network, wrong HF_ENDPOINT, a typo'd local path taken for a Hub id) fails at once
            return not isinstance(seen, httpx2.ConnectError)
        seen = seen.__cause__
    return False


def with_retries(action: Callable[[], Result], what: str, uploading: bool = False) -> Result:
    """Run a Hub call; transient failures are retried with exponential backoff, the last becomes one line."""
    retries = int(os.environ.get(RETRIES_ENV, "4"))
    wait = float(os.environ.get(BACKOFF_ENV, "2"))
    for attempt in range(retries + 1):
        try:
            return action()
        except LoramergeError:
            raise
        except Exception as exc:
            if attempt == retries or not is_transient(exc):
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise LoramergeError(f"{what}{tries}: {failure_reason(exc, uploading)}") from exc
        time.sleep(min(wait * 2**attempt, 30.0))
    raise AssertionError("unreachable")


def download_adapter(source: str) -> HubSnapshot:
    """Fetch only an adapter's files (config, weights, card) into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    parsed = parse_hub_ref(source)
    if parsed is None:
        raise LoramergeError(f"{source}: not a local folder and not a Hub id org/name[@revision]")
    repo_id, revision = parsed
    what = f"{source}: no such local folder, and downloading Hub repo {repo_id} failed"
    folder = Path(with_retries(lambda: snapshot_download(repo_id, revision=revision, allow_patterns=ADAPTER_FILES), what))
    return HubSnapshot(repo_id=repo_id, revision=revision, commit=folder.name, path=folder)  # the cache names snapshots by commit


def resolve_adapter(source: str, problems: ProblemList) -> tuple[Path, HubSnapshot | None] | None:
    """A local folder that exists always wins; else a Hub id is downloaded. None: it failed, see `problems`."""
    local = Path(source)
    if local.exists() or parse_hub_ref(source) is None:
        return local, None  # load_adapter reports a missing folder
    try:
        snapshot = download_adapter(source)
    except LoramergeError as exc:
        problems.add(exc.one_line())
        return None
    return snapshot.path, snapshot


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub model was loaded from, read from the cache transformers filled (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent.name if isinstance(found, str) else None


def check_pushable(folder: Path) -> None:
    """Only a complete PEFT LoRA adapter goes to the Hub: a readable config and safetensors weights."""
    problems = ProblemList()
    if load_adapter(folder, problems) is None and not problems.problems:
        problems.add(f"{folder}: not a PEFT LoRA adapter folder")
    if problems.problems:
        raise LoramergeError([f"refusing to push: {problem}" for problem in problems.problems])


def folder_files(folder: Path) -> list[Path]:
    """The files to upload: everything but hidden files and folders (.git, .cache, staging leftovers)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def push_folder(
    folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None, commit_message: str | None = None
) -> str:
    """Create `repo_id` if needed and upload `folder` in one commit; returns the commit URL.

    A retried commit is safe: the Hub reports the files it already holds, and unchanged files are not
    committed again, so a commit whose response was lost is not duplicated.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    check_repo_id(repo_id, "repo id")
    check_pushable(folder)
    files = folder_files(folder)
    api = HfApi()  # per call: HfApi reads HF_ENDPOINT when it is made

    def attempt() -> str:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path.relative_to(folder).as_posix(), path) for path in files]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {folder.name} with loramerge",
            revision=revision,
        )
        return info.commit_url

    return with_retries(attempt, f"push of {folder} to {repo_id} failed", uploading=True)
