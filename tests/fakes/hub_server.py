"""A fake Hugging Face Hub on 127.0.0.1, for tests that drive a real `HfApi`.

Usage:
    with serve_hub(require_token="hf_test") as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test")
        api.create_repo("me/adapter", exist_ok=True)
        ...
        hub.repo("me/adapter").tags["v1"]
        hub.fail_next(2, status=503)  # the next two requests fail
        hub.hang()                      # hold every request (past any client timeout) ...
        hub.release(status=401)         # ... until released: held ones get a 401, later ones pass

It speaks just the part of the Hub API that huggingface_hub 2.4 uses for:
create_repo, create_commit / upload_folder (validate-yaml, preupload, commit),
create_tag, list_repo_refs, repo_info / model_info / dataset_info,
list_repo_tree / list_repo_files, and hf_hub_download (HEAD + GET on
`/{repo_id}/resolve/{revision}/{path}`, `/datasets/...` for datasets).

Uploads are steered to the simplest path: preupload answers `uploadMode:
"regular"` for every file, so the client sends content inline (base64) in the
NDJSON commit payload and never negotiates LFS or Xet. Downloads send no Xet
headers, so hf_hub_download falls back to a plain HTTP GET.

Repos live in memory: each is a list of commits (snapshots: every commit holds
the full file tree), branches (`main` first; create_branch adds more, and commits go
to any of them), and tags.

It also plays the Jobs API that `run_job`, `inspect_job`, `fetch_job_logs` and
`cancel_job` call (`/api/jobs/{namespace}[/{id}[/logs|/cancel]]`). What a submitted job
does is `job_mode`: "run" runs its command here (`python` is this interpreter, the
working directory `job_cwd`, the job's env and secrets in its environment) and its output
becomes the logs; "fail" ends in ERROR after a traceback; "hang" runs until cancelled.
Every job is SCHEDULING first, then RUNNING, then COMPLETED, ERROR or CANCELED.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# /api/{type}s/{ns}/{name}[/{action}[/{rest}]]
_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(preupload|commit|tag|refs|revision|tree|branch)(?:/(.*))?)?$")
# /{ns}/{name}/resolve/{rev}/{path} for models, /datasets/... and /spaces/... otherwise
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_JOBS = re.compile(r"^/api/jobs/([^/]+)(?:/([^/]+)(?:/(logs|cancel))?)?$")
JOB_MODES = ("run", "fail", "hang")
BAD_CREDENTIALS = "Invalid credentials in Authorization header"  # the Hub's exact wording; the client keys on it


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1, which is what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class RecordedRequest:
    method: str
    path: str  # as sent, query string included
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Commit:
    id: str  # 40 hex digits, like a git sha
    message: str
    files: dict[str, bytes]  # the whole tree at this commit
    parent: str | None = None


@dataclass
class Repo:
    repo_id: str
    repo_type: str  # "model", "dataset" or "space"
    private: bool = False
    commits: list[Commit] = field(default_factory=list)  # oldest first
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit id
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit id; `main` is there once created

    @property
    def head(self) -> Commit:
        """The commit `main` points at."""
        return self.commit(self.branches["main"])

    def commit(self, commit_id: str) -> Commit:
        return next(c for c in self.commits if c.id == commit_id)

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag, a full commit id or a 7+ character prefix."""
        if revision in self.branches:
            return self.commit(self.branches[revision])
        if revision in self.tags:
            return self.commit(self.tags[revision])
        if len(revision) >= 7:
            return next((c for c in self.commits if c.id.startswith(revision)), None)
        return None


@dataclass
class FakeJob:
    """One submitted job: its spec as the client sent it, its stage, its log lines."""

    id: str
    namespace: str
    spec: dict[str, Any]
    stage: str = "SCHEDULING"
    message: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (ISO timestamp, line)
    stages: list[str] = field(default_factory=lambda: ["SCHEDULING"])  # every stage it went through
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        self.logs.append((stamp, line.rstrip("\n")))

    def move(self, stage: str, message: str | None = None) -> None:
        self.stage, self.message = stage, message
        self.stages.append(stage)

    def info(self) -> dict[str, Any]:
        image = {"spaceId": self.spec["spaceId"]} if "spaceId" in self.spec else {"dockerImage": self.spec.get("dockerImage")}
        return {
            "id": self.id, "createdAt": "2025-01-01T00:00:00.000Z", **image,
            "command": self.spec.get("command"), "arguments": self.spec.get("arguments", []),
            "environment": self.spec.get("environment", {}),
            "secrets": {name: None for name in self.spec.get("secrets") or {}},  # names only, as the Hub answers
            "flavor": self.spec.get("flavor"), "labels": self.spec.get("labels"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": "0" * 24, "name": self.namespace, "type": "user"},
        }


@dataclass
class _Fault:
    remaining: int
    status: int
    path_contains: str | None


@dataclass
class _Hang:
    path_contains: str | None
    released: threading.Event = field(default_factory=threading.Event)
    status: int | None = None  # the answer once released; None: served normally
    held: int = 0


@dataclass
class FakeHub:
    """Behaviour knobs and in-memory state; read by the handler threads on every request."""

    require_token: str | None = None  # every request needs `Authorization: Bearer <this>`, else 401
    delay_s: float = 0.0  # wait before answering every request (for client timeouts)
    requests: list[RecordedRequest] = field(default_factory=list)
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (repo_type, repo_id) -> Repo

    _faults: list[_Fault] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _commit_counter: int = field(default=0, init=False, repr=False)
    _httpd: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _hang: _Hang | None = field(default=None, init=False, repr=False)
    job_mode: str = "run"  # what a submitted job does (module docstring)
    job_cwd: str | None = None  # working directory of a "run" job (the project root: its image's WORKDIR)
    jobs: dict[str, FakeJob] = field(default_factory=dict)

    # --- test-facing API -------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, status: int = 500, *, path_contains: str | None = None) -> None:
        """Answer the next n requests (only those whose path contains path_contains, if given) with status."""
        with self._lock:
            self._faults.append(_Fault(n, status, path_contains))

    def hang(self, *, path_contains: str | None = None) -> None:
        """Hold every request (whose path contains path_contains, if given) open, unanswered, until release()."""
        with self._lock:
            self._hang = _Hang(path_contains)

    def release(self, status: int | None = None) -> int:
        """End the hang: held requests get `status` (None: a normal answer); returns how many were held."""
        with self._lock:
            hang, self._hang = self._hang, None
        if hang is None:
            return 0
        hang.status = status
        hang.released.set()
        return hang.held

    def held(self) -> int:
        """Requests being held by hang() right now."""
        with self._lock:
            return self._hang.held if self._hang is not None else 0

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.delay_s = 0.0

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def has_repo(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self.repos

    def requests_to(self, fragment: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path contains fragment (and with that method, if given)."""
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    def job(self, job_id: str | None = None) -> FakeJob:
        """A job by id, or the only one submitted so far."""
        if job_id is None:
            [job] = self.jobs.values()
            return job
        return self.jobs[job_id]

    def start(self) -> FakeHub:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a handler stuck in delay_s must not block shutdown
        serve = lambda: self._httpd.serve_forever(poll_interval=0.02)  # noqa: E731
        threading.Thread(target=serve, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in delay_s
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    # --- state changes (called by the handler, under _lock) -------------------

    def _take_fault(self, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.path_contains is None or fault.path_contains in path):
                    fault.remaining -= 1
                    return fault.status
        return None

    def _new_commit(self, repo: Repo, message: str, files: dict[str, bytes], branch: str = "main") -> Commit:
        self._commit_counter += 1
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_type}/{repo.repo_id}/{parent}/{message}/{self._commit_counter}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), message, files, parent)
        repo.commits.append(commit)
        repo.branches[branch] = commit.id
        return commit

    def _submit(self, namespace: str, spec: dict[str, Any]) -> FakeJob:
        if self.job_mode not in JOB_MODES:
            raise ValueError(f"job_mode must be one of {JOB_MODES}")
        with self._lock:
            job = FakeJob(f"{len(self.jobs) + 1:024x}", namespace, spec)
            self.jobs[job.id] = job
        threading.Thread(target=_run_job, args=(job, self.job_mode, self.job_cwd), name=f"fake-job-{job.id[-4:]}",
                         daemon=True).start()
        return job


def _run_job(job: FakeJob, mode: str, cwd: str | None) -> None:
    """The life of a job: scheduled briefly, then what its mode says."""
    if job.cancel_requested.wait(0.2):
        return job.move("CANCELED", "Job was cancelled")
    job.move("RUNNING")
    if mode == "fail":
        for line in ("Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory."):
            job.log(line)
        return job.move("ERROR", "Job failed with exit code: 1")
    if mode == "hang":
        job.log("loading the model ...")
        job.cancel_requested.wait()
        return job.move("CANCELED", "Job was cancelled")
    _execute(job, cwd)


def _kill_on_cancel(job: FakeJob, proc: subprocess.Popen) -> None:
    while not job.cancel_requested.wait(0.1):
        if proc.poll() is not None:
            return
    try:
        os.killpg(proc.pid, 9)  # its whole session: `accelerate launch` has children
    except ProcessLookupError:
        pass


def _execute(job: FakeJob, cwd: str | None) -> None:
    command = list(job.spec["command"])
    command[0] = sys.executable if command[0] == "python" else command[0]  # the image's python is this one
    # A job container is online and sees only the token it was given as a secret.
    host = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")}
    env = {**host, **job.spec.get("environment", {}), **(job.spec.get("secrets") or {})}
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    threading.Thread(target=_kill_on_cancel, args=(job, proc), daemon=True).start()
    for line in proc.stdout:
        job.log(line)
    code = proc.wait()
    if job.cancel_requested.is_set():
        return job.move("CANCELED", "Job was cancelled")
    job.move("COMPLETED" if code == 0 else "ERROR", None if code == 0 else f"Job failed with exit code: {code}")


@contextmanager
def serve_hub(**config: Any) -> Iterator[FakeHub]:
    """Run a FakeHub(**config) for the duration of the block."""
    hub = FakeHub(**config).start()
    try:
        yield hub
    finally:
        hub.stop()


class _HubError(Exception):
    """Raised inside a route: becomes an error response with the Hub's error headers."""

    def __init__(self, status: int, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        fake = hub

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    # --- plumbing ----------------------------------------------------------

    def _handle(self) -> None:
        # One request per connection: huggingface_hub shares one pooled client for the
        # whole process, and keep-alive sockets to a stopped fake would leak between tests.
        self.close_connection = True
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.fake.requests.append(RecordedRequest(self.command, self.path, headers, body))

        if self.fake.delay_s and self.fake._stopping.wait(self.fake.delay_s):
            return  # shutting down; the client gave up long ago
        try:
            self._wait_if_hanging(self.path)
            self._dispatch(urlsplit(self.path), headers, body)
        except _HubError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and closed; nothing to tell it

    def _wait_if_hanging(self, path: str) -> None:
        with self.fake._lock:
            hang = self.fake._hang
            if hang is None or (hang.path_contains is not None and hang.path_contains not in path):
                return
            hang.held += 1
        while not hang.released.wait(0.05):
            if self.fake._stopping.is_set():
                raise BrokenPipeError  # shutting down: drop the connection without an answer
        with self.fake._lock:
            hang.held -= 1
        if hang.status is not None:
            raise _HubError(hang.status, BAD_CREDENTIALS if hang.status == 401 else f"injected fault: HTTP {hang.status}")

    def _dispatch(self, url: Any, headers: dict[str, str], body: bytes) -> None:
        status = self.fake._take_fault(url.path)
        if status is not None:
            raise _HubError(status, f"injected fault: HTTP {status}")
        if self.fake.require_token is not None and headers.get("authorization") != f"Bearer {self.fake.require_token}":
            raise _HubError(401, BAD_CREDENTIALS)

        path, query = unquote(url.path), parse_qs(url.query)
        if self.command == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if self.command == "POST" and path == "/api/validate-yaml":
            return self._send_json(200, {"errors": [], "warnings": []})
        if match := _JOBS.match(path):
            return self._jobs_api(*match.groups(), body)
        # Match on the raw path: revisions and file paths arrive %-quoted ("refs%2Fpr%2F1").
        if match := _API_REPO.match(url.path):
            return self._repo_api(match, query, body)
        if self.command in ("GET", "HEAD") and (match := _RESOLVE.match(url.path)):
            return self._resolve(match)
        raise _HubError(404, f"no route {self.command} {path}")

    def _lookup(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.fake.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # --- routes -------------------------------------------------------------

    def _create_repo(self, payload: dict[str, Any]) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.fake.endpoint}/{prefix}{repo_id}"
        with self.fake._lock:
            if (repo_type, repo_id) in self.fake.repos:
                return self._send_json(409, {"error": "You already created this repo", "url": url})
            repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private")
            # The Hub starts every repo with one commit holding .gitattributes, so `main` always resolves.
            self.fake._new_commit(repo, "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self.fake.repos[(repo_type, repo_id)] = repo
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_api(self, match: re.Match[str], query: dict[str, list[str]], body: bytes) -> None:
        kind, repo_id, action, raw_rest = match.groups()
        repo = self._lookup(_REPO_TYPES[kind], repo_id)
        if action == "tree" and self.command == "GET" and raw_rest:
            revision, _, folder = raw_rest.partition("/")  # the revision is quoted on its own
            return self._tree(repo, unquote(revision), unquote(folder), query)
        rest = unquote(raw_rest) if raw_rest is not None else None
        if action is None and self.command == "GET":
            return self._send_json(200, self._info(repo, repo.head))
        if action == "revision" and self.command == "GET" and rest:
            return self._send_json(200, self._info(repo, self._revision(repo, rest)))
        if action == "refs" and self.command == "GET":
            return self._send_json(200, self._refs(repo))
        if action == "preupload" and self.command == "POST" and rest:
            return self._preupload(repo, rest, json.loads(body))
        if action == "commit" and self.command == "POST" and rest:
            return self._commit(repo, rest, body)
        if action == "tag" and self.command == "POST" and rest:
            return self._tag(repo, rest, json.loads(body))
        if action == "tag" and self.command == "DELETE" and rest:
            return self._delete_tag(repo, rest)
        if action == "branch" and self.command == "POST" and rest:
            return self._create_branch(repo, rest, json.loads(body or b"{}"))
        raise _HubError(404, f"no route {self.command} {self.path}")

    # --- jobs -----------------------------------------------------------------

    def _jobs_api(self, namespace: str, job_id: str | None, action: str | None, body: bytes) -> None:
        if job_id is None and self.command == "POST":
            return self._send_json(200, self.fake._submit(namespace, json.loads(body)).info())
        job = self.fake.jobs.get(job_id or "")
        if job is None or job.namespace != namespace:
            raise _HubError(404, f"Job {job_id} not found")
        if action is None and self.command == "GET":
            return self._send_json(200, job.info())
        if action == "cancel" and self.command == "POST":
            job.cancel_requested.set()
            return self._send_json(200, {})
        if action == "logs" and self.command == "GET":
            events = "".join(f"data: {json.dumps({'timestamp': ts, 'data': line})}\n\n" for ts, line in list(job.logs))
            return self._send(200, events.encode(), {"Content-Type": "text/event-stream"})
        raise _HubError(404, f"no route {self.command} {self.path}")

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        return {
            "id": repo.repo_id,
            "sha": commit.id,
            "private": repo.private,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def _refs(self, repo: Repo) -> dict[str, Any]:
        def ref(name: str, kind: str, target: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": target}

        return {
            "branches": [ref(name, "heads", target) for name, target in sorted(repo.branches.items())],
            "tags": [ref(name, "tags", target) for name, target in sorted(repo.tags.items())],
            "converts": [],
            "pullRequests": [],
        }

    def _tree(self, repo: Repo, revision: str, prefix: str, query: dict[str, list[str]]) -> None:
        commit = self._revision(repo, revision)
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, content in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            head, sep, _ = path[len(base):].partition("/")
            if sep and not recursive:  # a subfolder: list it once, not its files
                entries.setdefault(base + head, {"type": "directory", "path": base + head, "oid": "0" * 40})
            else:
                entries[path] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
        self._send_json(200, list(entries.values()))

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> None:
        current = self._revision(repo, revision).files
        # "regular" for everything: content then comes inline in the commit, no LFS/Xet upload.
        # The oid of an existing file lets the client drop unchanged files, as the Hub does.
        files = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_oid(current[item["path"]]) if item["path"] in current else None,
            }
            for item in payload["files"]
        ]
        self._send_json(200, {"files": files, "commitOid": self._revision(repo, revision).id})

    def _commit(self, repo: Repo, revision: str, body: bytes) -> None:
        if revision not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            raise _HubError(400, "commit payload has no header")
        with self.fake._lock:
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.branches[revision]:
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commit(repo.branches[revision]).files)
            for line in lines:
                self._apply(files, line["key"], line["value"])
            commit = self.fake._new_commit(repo, header["summary"], files, branch=revision)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        commit_url = f"{self.fake.endpoint}/{prefix}{repo.repo_id}/commit/{commit.id}"
        self._send_json(200, {"commitUrl": commit_url, "commitOid": commit.id, "pullRequestUrl": None, "success": True})

    @staticmethod
    def _apply(files: dict[str, bytes], key: str, value: dict[str, Any]) -> None:
        if key == "header":
            return
        if key == "file":
            if value.get("encoding") != "base64":
                raise _HubError(400, f"unsupported encoding {value.get('encoding')!r}")
            files[value["path"]] = base64.b64decode(value["content"])
        elif key == "deletedFile":
            if files.pop(value["path"], None) is None:
                raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            folder = value["path"].rstrip("/") + "/"
            for path in [p for p in files if p.startswith(folder)]:
                del files[path]
        else:  # lfsFile: never happens, preupload always says "regular"
            raise _HubError(400, f"fake hub does not support {key!r} operations")

    def _tag(self, repo: Repo, revision: str, payload: dict[str, Any]) -> None:
        commit = self._revision(repo, revision)
        with self.fake._lock:
            if payload["tag"] in repo.tags or payload["tag"] == "main":
                raise _HubError(409, f"Tag {payload['tag']} already exists")
            repo.tags[payload["tag"]] = commit.id
        self._send_json(200, {})

    def _create_branch(self, repo: Repo, branch: str, payload: dict[str, Any]) -> None:
        start = self._revision(repo, payload.get("startingPoint") or "main")
        with self.fake._lock:
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = start.id
        self._send_json(200, {})

    def _delete_tag(self, repo: Repo, tag: str) -> None:
        with self.fake._lock:
            if repo.tags.pop(tag, None) is None:
                raise _HubError(404, f"Tag {tag} not found", "RevisionNotFound")
        self._send_json(200, {})

    def _resolve(self, match: re.Match[str]) -> None:
        kind, repo_id, revision, path = match.groups()
        repo = self._lookup(_REPO_TYPES[kind] if kind else "model", repo_id)
        commit = self._revision(repo, unquote(revision))
        content = commit.files.get(unquote(path))
        if content is None:
            raise _HubError(404, "Entry not found", "EntryNotFound")
        headers = {
            "X-Repo-Commit": commit.id,  # hf_hub_download refuses a file without it
            "ETag": f'"{git_blob_oid(content)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, content, headers)

    # --- responses ------------------------------------------------------------

    def _send_error(self, err: _HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.error_code:
            headers["X-Error-Code"] = err.error_code
        self._send_json(err.status, {"error": err.message}, headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))  # also on HEAD: the client reads the size from it
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
