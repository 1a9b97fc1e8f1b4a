"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1: the part of its API that huggingface_hub
uses to check a token, create a repo and commit files (regular files inline, LFS files through the
batch API and a PUT to an upload URL that points back here), and to read a model (repo info, file
tree, file downloads). Enough for push and loading tests, no network.

Why a fake and not the real Hub: the tests run offline (CI, HF_HUB_OFFLINE=1) and must not need
an account or a token; and only a server we control can prove what was sent — every request and
its Authorization header are recorded (`hub.requests`, `hub.authorizations`), so a test can prove
a token never reached the Hub — and can answer any status on any path (`hub.fail_with`). It
speaks the LFS protocol only (the tests set HF_HUB_DISABLE_XET, see `allow_local_hub`): the Xet
upload path of huggingface_hub is the library's own and is not exercised here.
Public repos are readable without a token, like the real Hub; everything else needs `hub.token`.

Endpoints (see huggingface_hub hf_api.py create_repo / create_commit / model_info / list_repo_tree,
_commit_api.py, lfs.py, file_download.py):
  GET  /api/whoami-v2
  POST /api/repos/create                          {"name", "organization", "visibility"?}
  GET  /api/models/{ns}/{name}[/revision/{rev}]    repo info: id, sha, private, siblings
  GET  /api/models/{ns}/{name}/tree/{rev}          file list (one page)
  HEAD|GET /{ns}/{name}/resolve/{rev}/{path}       a file, with X-Repo-Commit and ETag
  POST /api/validate-yaml                          README.md metadata check
  POST /api/models/{ns}/{name}/preupload/{rev}     -> uploadMode per file ("lfs" above 10 kB)
  POST /{ns}/{name}.git/info/lfs/objects/batch     -> upload action: PUT /lfs-upload/{oid}
  PUT  /lfs-upload/{oid}
  POST /api/models/{ns}/{name}/commit/{rev}        NDJSON: header, file (base64), lfsFile (oid)
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 10_000


def allow_local_hub(monkeypatch) -> None:
    """Let huggingface_hub talk to 127.0.0.1 (tests run with HF_HUB_OFFLINE=1), over plain LFS, with no
    token from the environment."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


class FakeHub:
    """Start with `with FakeHub(token="hf_x") as hub:`; `hub.endpoint` is the URL to use.
    `hub.repos[repo_id]` maps committed paths to bytes; `hub.fail_with` forces a status code."""

    def __init__(self, token: str, role: str = "write", user: str = "tester"):
        self.token, self.role, self.user = token, role, user
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.blobs: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []   # the Authorization header of every request
        self.fail_with: dict[str, int] = {}      # path prefix -> HTTP status to answer instead

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):          # quiet
                pass

            def _reply(self, status: int, body: dict | None = None):
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _reply_empty(self, status: int, headers: dict[str, str]):
                """Headers only (a body, if any, is written by the caller after this)."""
                self.send_response(status)
                headers = {"Content-Length": "0", **headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self, method: str):
                path = self.path.split("?")[0]
                hub.requests.append(f"{method} {path}")
                hub.authorizations.append(self.headers.get("Authorization"))
                body = self._body()
                for prefix, status in hub.fail_with.items():
                    if path.startswith(prefix):
                        return self._reply(status, {"error": f"forced {status}"})
                if hub.read_route(self, method, path):
                    return None
                if path.startswith("/lfs-upload/"):       # pre-signed upload URL: no auth, like S3
                    oid = path.rsplit("/", 1)[1]
                    if hashlib.sha256(body).hexdigest() != oid:
                        return self._reply(400, {"error": "sha256 mismatch"})
                    hub.blobs[oid] = body
                    return self._reply(200)
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return hub.route(self, method, path, body)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_HEAD(self):
                self._handle("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_model(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        """A model repo to read (as if pushed earlier), public unless `private`."""
        self.repos[repo_id] = dict(files)
        self.private[repo_id] = private

    def _sha(self, repo_id: str) -> str:
        return hashlib.sha1(json.dumps(sorted(self.repos[repo_id])).encode() + repo_id.encode()).hexdigest()

    def read_route(self, h, method: str, path: str) -> bool:
        """Repo info, file tree and downloads; False for any other request (handled by `route`)."""
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) >= 4 and parts[:2] == ["api", "models"] and \
                (len(parts) == 4 or parts[4] in ("revision", "tree")):
            kind = "tree" if len(parts) > 4 and parts[4] == "tree" else "info"
            repo_id = f"{parts[2]}/{parts[3]}"
        elif method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            kind, repo_id = "file", f"{parts[0]}/{parts[1]}"
        else:
            return False
        authorized = h.headers.get("Authorization") == f"Bearer {self.token}"
        if repo_id not in self.repos or (self.private.get(repo_id) and not authorized):
            # the real Hub answers a private repo like a missing one: 401 without a valid token, else 404
            h._reply_empty(404 if authorized else 401, {"X-Error-Code": "RepoNotFound"})
            return True
        files, sha = self.repos[repo_id], self._sha(repo_id)
        if kind == "info":
            h._reply(200, {"id": repo_id, "sha": sha, "private": bool(self.private.get(repo_id)),
                           "siblings": [{"rfilename": name} for name in sorted(files)]})
        elif kind == "tree":
            h._reply(200, [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                           for name, data in sorted(files.items())])
        elif "/".join(parts[4:]) not in files:
            h._reply_empty(404, {"X-Error-Code": "EntryNotFound"})
        else:
            data = files["/".join(parts[4:])]
            h._reply_empty(200, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                                 "Content-Length": str(len(data))})
            if method == "GET":
                h.wfile.write(data)
        return True

    def route(self, h, method: str, path: str, body: bytes):
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/api/whoami-v2":
            return h._reply(200, {"name": self.user, "type": "user", "auth": {"accessToken": {"role": self.role}}})
        if self.role == "read" and method != "GET":
            return h._reply(403, {"error": "You don't have the rights to write"})
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or self.user}/{req['name']}"
            if repo_id in self.repos:
                return h._reply(409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"})
            self.repos[repo_id] = {}
            self.private[repo_id] = req.get("visibility") == "private" or bool(req.get("private"))
            return h._reply(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return h._reply(200, {"errors": [], "warnings": []})
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return h._reply(200, {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                             "uploadMode": "lfs" if f["size"] > LFS_THRESHOLD else "regular"}
                                            for f in files]})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return h._reply(200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"{self.endpoint}/lfs-upload/{o['oid']}"}}} for o in objects]})
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
            repo_id = f"{parts[2]}/{parts[3]}"
            if repo_id not in self.repos:
                return h._reply(404, {"error": "Repository not found"})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {}
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    if value["oid"] not in self.blobs:
                        return h._reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    files[value["path"]] = self.blobs[value["oid"]]
            self.repos[repo_id].update(files)
            self.commits.append({"repo": repo_id, "summary": lines[0]["value"]["summary"], "files": sorted(files)})
            oid = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
            return h._reply(200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                                  "pullRequestUrl": None})
        return h._reply(404, {"error": f"not implemented in FakeHub: {method} {path}"})
