"""A local Hugging Face Hub stand-in on 127.0.0.1 for offline tests of pull and push.

It answers the calls huggingface_hub, transformers and peft make (docs/design.md section 5): create repo,
create branch, validate-yaml, preupload, NDJSON commit, resolve (HEAD/GET), model info and tree listing.
Repos live in memory as commits whose sha is the sha1 of their content. Tests can queue faults (HTTP
500, 429 with Retry-After: 0, a dropped connection before or after the request takes effect) for the
next requests whose "METHOD /path" matches a regex. Write calls need the token the server was given.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"
LANGUAGE = re.compile(r"^[a-z]{2,3}$")  # the card normalises languages to ISO 639 codes


def git_blob_sha(content: bytes) -> str:
    """git's object id of a file: what the Hub reports as the oid (and ETag) of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)

    def commit_at(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


@dataclass
class Fault:
    pattern: re.Pattern[str]
    kind: str  # "500" | "429" | "drop" (before acting) | "drop-after" (act, then drop the response)
    remaining: int


class HubState:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.log: list[str] = []  # "METHOD /path -> status" of every request
        self.auth_seen: set[str] = set()  # Authorization headers received, to check the client sent the token
        self.lock = threading.Lock()

    def take_fault(self, request_line: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.pattern.search(request_line):
                    fault.remaining -= 1
                    return fault.kind
        return None

    def new_commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> Commit:
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(parent.encode() + message.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha(files[path]).encode())
        commit = Commit(sha=digest.hexdigest(), files=files, message=message)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: the client reuses connections
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # requests go to state.log instead of stderr

    # --- plumbing -------------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server.state.log.append(f"{self.command} {self.path} -> {status}")

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._reply(status, body, {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}, head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.state.token}"

    def _dispatch(self) -> None:
        state = self.server.state
        path = unquote(urlsplit(self.path).path)
        if self.headers.get("Authorization"):
            state.auth_seen.add(self.headers["Authorization"])
        fault = state.take_fault(f"{self.command} {path}")
        if fault == "500":
            self._body()
            return self._error(500, "Fault", "injected server error", head=self.command == "HEAD")
        if fault == "429":
            self._body()
            return self._reply(429, b'{"error": "rate limited"}', {"Retry-After": "0"}, head=self.command == "HEAD")
        if fault == "drop":
            self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 64))  # mid-request: part of the body
            return self._drop()
        for pattern, handler in ROUTES.get(self.command, []):
            if (match := re.fullmatch(pattern, path)) is not None:
                with state.lock:
                    if fault != "drop-after":
                        return handler(self, **match.groupdict())
                    # the request takes effect but its response is lost: the client's retry must be safe
                    real, self.wfile = self.wfile, io.BytesIO()
                    handler(self, **match.groupdict())
                    self.wfile = real
                    return self._drop()
        self._body()
        state.log.append(f"{self.command} {self.path} -> unknown")
        return self._error(404, "NotFound", f"no route for {self.command} {path}")

    def _drop(self) -> None:
        self.close_connection = True
        self.server.state.log.append(f"{self.command} {self.path} -> dropped")

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    # --- endpoints ------------------------------------------------------------------------------
    def _repo(self, repo: str, head: bool = False) -> Repo | None:
        found = self.server.state.repos.get(repo)
        if found is None or (found.private and not self._authorised()):
            self._error(404, "RepoNotFound", f"Repository {repo} not found", head)
            return None
        return found

    def create_repo(self) -> None:
        payload = json.loads(self._body())
        if not self._authorised():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.server.state.repos:
            body = {"error": "You already created this model repo", "url": f"{self.server.url}/{repo_id}"}
            return self._reply(409, json.dumps(body).encode(), {"Content-Type": "application/json"})
        repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self.server.state.repos[repo_id] = repo
        self.server.state.new_commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit")
        self._json(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})

    def create_branch(self, repo: str, branch: str) -> None:
        payload = json.loads(self._body() or b"{}")
        if not self._authorised():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if (found := self._repo(repo)) is None:
            return None
        if branch in found.branches:
            return self._error(409, "Conflict", f"Branch {branch} already exists")
        start = found.commit_at(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", "Invalid starting point")
        found.branches[branch] = start.sha
        self._json(200, {})

    def validate_yaml(self) -> None:
        content = json.loads(self._body())["content"]
        errors = metadata_errors(content)
        self._json(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})

    def preupload(self, repo: str, revision: str) -> None:
        payload = json.loads(self._body())
        if (found := self._repo(repo)) is None:
            return None
        commit = found.commit_at(revision)
        files = []
        for item in payload["files"]:
            existing = commit.files.get(item["path"]) if commit else None
            oid = git_blob_sha(existing) if existing is not None else None
            files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files})

    def commit(self, repo: str, revision: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._authorised():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if (found := self._repo(repo)) is None:
            return None
        parent = found.commit_at(revision)
        if parent is None or revision not in found.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = dict(parent.files)
        header = next(line["value"] for line in lines if line["key"] == "header")
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif line["key"] != "header":
                return self._error(400, "BadRequest", f"unsupported commit operation {line['key']}")
        new = self.server.state.new_commit(found, revision, files, header["summary"])
        self._json(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{new.sha}", "commitOid": new.sha, "pullRequestUrl": None})

    def resolve(self, repo: str, revision: str, filename: str) -> None:
        head = self.command == "HEAD"
        if (found := self._repo(repo, head)) is None:
            return None
        commit = found.commit_at(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        if filename not in commit.files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist at {revision}", head)
        content = commit.files[filename]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(content)}"', "Content-Type": "application/octet-stream"}
        self._reply(200, content, headers, head)

    def info(self, repo: str, revision: str = "main") -> None:
        if (found := self._repo(repo)) is None:
            return None
        commit = found.commit_at(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        self._json(
            200, {"id": repo, "modelId": repo, "sha": commit.sha, "private": found.private, "siblings": siblings, "tags": []}
        )

    def tree(self, repo: str, revision: str, folder: str = "") -> None:
        if (found := self._repo(repo)) is None:
            return None
        commit = found.commit_at(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        prefix = (folder or "").strip("/") + "/" if (folder or "").strip("/") else ""
        entries = [
            {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
            for path, content in sorted(commit.files.items())
            if path.startswith(prefix)
        ]
        self._json(200, entries)


def metadata_errors(readme: str) -> list[str]:
    """The Hub's model-card metadata rules that loramerge's cards touch."""
    match = re.match(r"^---\n(.*?)\n---\n", readme, re.DOTALL)
    if match is None:
        return ["README.md has no YAML metadata block"]
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if not isinstance(data, dict):
        return ["metadata must be a mapping"]
    errors = []
    for key in ("library_name", "pipeline_tag", "license"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    languages = data.get("language", [])
    for language in [languages] if isinstance(languages, str) else languages:
        if not isinstance(language, str) or not LANGUAGE.match(language):
            errors.append(f'"language" must be ISO 639 codes, got {language!r}')
    if not isinstance(data.get("tags", []), list) or not all(isinstance(t, str) for t in data.get("tags", [])):
        errors.append('"tags" must be a list of strings')
    bases = data.get("base_model", [])
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", base):
            errors.append(f'"base_model" must be Hub model ids, got {base!r}')
    return errors


ROUTES: dict[str, list[tuple[str, Any]]] = {
    "POST": [
        (r"/api/repos/create", HubHandler.create_repo),
        (r"/api/validate-yaml", HubHandler.validate_yaml),
        (rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", HubHandler.create_branch),
        (rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", HubHandler.preupload),
        (rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", HubHandler.commit),
    ],
    "GET": [
        (rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", HubHandler.resolve),
        (rf"/api/models/{REPO}", HubHandler.info),
        (rf"/api/models/{REPO}/revision/(?P<revision>[^/]+)", HubHandler.info),
        (rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.*))?", HubHandler.tree),
    ],
    "HEAD": [(rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", HubHandler.resolve)],
}


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.state = HubState(token)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def inject(self, pattern: str, kind: str, count: int = 1) -> None:
        """Fail the next `count` requests whose "METHOD /path" matches `pattern` (re.search)."""
        self.state.faults.append(Fault(re.compile(pattern), kind, count))

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False, branch: str = "main") -> str:
        """Create a repo holding `files` directly (e.g. a model for --model) and return the commit sha."""
        with self.state.lock:
            repo = self.state.repos.setdefault(repo_id, Repo(private=private))
            return self.state.new_commit(repo, branch, files, "seed").sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.state.repos[repo_id].commit_at(revision)
        assert commit is not None
        return commit.files
