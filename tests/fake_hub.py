"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1: the part of its API that huggingface_hub
uses to check a token, create a repo and commit files (regular files inline, LFS files through the
batch API and a PUT to an upload URL that points back here). Enough for push tests, no network.

Endpoints (see huggingface_hub hf_api.py create_repo / create_commit, _commit_api.py, lfs.py):
  GET  /api/whoami-v2
  POST /api/repos/create                          {"name", "organization", "visibility"?}
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
        self.fail_with: dict[str, int] = {}      # path prefix -> HTTP status to answer instead

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):          # quiet
                pass

            def _reply(self, status: int, body: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self, method: str):
                path = self.path.split("?")[0]
                hub.requests.append(f"{method} {path}")
                body = self._body()
                for prefix, status in hub.fail_with.items():
                    if path.startswith(prefix):
                        return self._reply(status, {"error": f"forced {status}"})
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

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
