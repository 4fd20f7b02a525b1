"""A local HTTP webhook (stdlib http.server in a thread) that keeps every request it receives.

Stands in for Slack: SQLMesh's ``slack_webhook`` notification target posts its JSON message
to whatever URL it is given, here ``http://127.0.0.1:<port>/hook``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    """Answers every POST with 200 ``ok`` (what Slack answers) and records its JSON body."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received, lock = self.received, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's spelling)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def texts(self) -> list[str]:
        """Each message as one string: its text and every block's text, so assertions need not know Slack's layout."""
        return [json.dumps(message, ensure_ascii=False) for message in self.received]
