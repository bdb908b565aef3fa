"""A loopback stand-in for the Hugging Face Hub, enough for ``huggingface_hub.hf_hub_download`` and
``snapshot_download`` (``endpoint=server.url``): ``HEAD/GET /<repo>/resolve/<rev>/<file>``,
``GET /api/models/<repo>/revision/<rev>`` and ``GET /api/models/<repo>/tree/<rev>``.

``HubServer({"owner/name": {"path/in/repo": b"bytes"}}, broken={"path/in/repo"})`` serves real files; a path in
``broken`` is announced with its full size but its GET sends half the bytes and closes the connection (a download
that fails mid-way, every time).
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, repos: dict[str, dict[str, bytes]], broken: set[str] = frozenset()):
        self.repos, self.broken, self.requests = repos, set(broken), []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _find(self):
                path = self.path.split("?", 1)[0]
                hub.requests.append((self.command, path))
                for repo, files in hub.repos.items():
                    for pre in (f"/api/models/{repo}/revision/", f"/api/models/{repo}/tree/"):
                        if path.startswith(pre):
                            return ("info" if "revision" in pre else "tree"), repo, files, None
                    pre = f"/{repo}/resolve/"
                    if path.startswith(pre):
                        name = path[len(pre):].split("/", 1)[1]
                        return "file", repo, files, name
                return None, None, None, None

            def _send(self, code, body=b"", headers=None, length=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                return body

            def do_HEAD(self):
                kind, repo, files, name = self._find()
                if kind != "file" or name not in files:
                    self._send(404, headers={"X-Error-Code": "EntryNotFound"})
                    return
                data = files[name]
                self._send(200, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                           length=len(data))

            def do_GET(self):
                kind, repo, files, name = self._find()
                if kind == "info":
                    body = json.dumps({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]})
                    self.wfile.write(self._send(200, body.encode(), {"Content-Type": "application/json"}))
                elif kind == "tree":
                    body = json.dumps([{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                                       for f, d in files.items()])
                    self.wfile.write(self._send(200, body.encode(), {"Content-Type": "application/json"}))
                elif kind == "file" and name in files:
                    data = files[name]
                    hdr = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                    if name in hub.broken:
                        self._send(200, headers=hdr, length=len(data))
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(self._send(200, data, hdr))
                else:
                    self.wfile.write(self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
