"""An HTTP proxy in front of an S3 endpoint that fails, resets, delays and counts requests.

Clients (boto3, DuckDB's httpfs) use the proxy's URL as their S3 endpoint. Every request is
forwarded unchanged (method, path, query, headers including the signature, body) and the
answer is streamed back, so the upstream server sees exactly what the client sent; only the
framing of a body (Content-Length or chunked) is re-encoded, never its bytes. Fault rules
decide per request, by S3 operation, whether to answer with an S3 error instead, drop the
connection with a TCP reset, delay, or hold it until the test releases it. Path-style
addressing only (the proxy is an IP).
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import struct
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Iterable, Iterator
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

logger = logging.getLogger(__name__)

_BLOCK = 64 * 1024
# Hop-by-hop headers belong to one connection, not to the request; "expect" is answered by
# the proxy itself (100 Continue) and botocore does not sign it.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
)
_BUCKET_SUBRESOURCES = {
    "versioning": "Versioning",
    "policy": "Policy",
    "lifecycle": "LifecycleConfiguration",
    "tagging": "Tagging",
    "acl": "Acl",
    "cors": "Cors",
    "encryption": "Encryption",
    "location": "Location",
    "notification": "NotificationConfiguration",
    "website": "Website",
}


def s3_operation(method: str, target: str, headers: Message) -> str:
    """The S3 API operation a path-style REST request performs (e.g. "PutObject", "UploadPartCopy")."""
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    bucket, _, key = split.path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method}Service"
    if key:
        return _object_operation(method, query, "x-amz-copy-source" in headers)
    return _bucket_operation(method, query)


def _object_operation(method: str, query: dict[str, list[str]], copy: bool) -> str:
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        if "tagging" in query:
            return "PutObjectTagging"
        if "acl" in query:
            return "PutObjectAcl"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        for name, operation in (
            ("uploads", "CreateMultipartUpload"),
            ("uploadId", "CompleteMultipartUpload"),
            ("restore", "RestoreObject"),
            ("select", "SelectObjectContent"),
        ):
            if name in query:
                return operation
        return "PostObject"
    if method == "GET":
        for name, operation in (
            ("uploadId", "ListParts"),
            ("tagging", "GetObjectTagging"),
            ("acl", "GetObjectAcl"),
            ("attributes", "GetObjectAttributes"),
        ):
            if name in query:
                return operation
        return "GetObject"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DeleteObjectTagging" if "tagging" in query else "DeleteObject"
    return "HeadObject" if method == "HEAD" else f"{method}Object"


def _bucket_operation(method: str, query: dict[str, list[str]]) -> str:
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST":
        return "DeleteObjects" if "delete" in query else "PostBucket"
    subresource = next((_BUCKET_SUBRESOURCES[name] for name in query if name in _BUCKET_SUBRESOURCES), None)
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method, method)
    if subresource:
        return f"{verb}Bucket{subresource}"
    if method == "GET":
        if "list-type" in query:
            return "ListObjectsV2"
        if "uploads" in query:
            return "ListMultipartUploads"
        return "ListObjectVersions" if "versions" in query else "ListObjects"
    return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, f"{method}Bucket")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the proxy saw it; header names are lower-case."""

    operation: str
    method: str
    target: str
    headers: dict[str, str]
    body_bytes: int
    fault: str | None


class Hold:
    """A request the proxy keeps waiting: ``reached`` is set when it arrives, ``release()`` forwards it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait_for_release(self, timeout: float) -> None:
        self.reached.set()
        self._released.wait(timeout)


@dataclass
class _Rule:
    kind: str  # "fail" | "reset" | "delay" | "hold"
    operations: frozenset[str] | None
    remaining: int | None  # None: until clear()
    probability: float = 1.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    status: int = 503
    code: str = "ServiceUnavailable"
    seconds: float = 0.0
    path_contains: str | None = None
    hold: Hold | None = None

    def fires(self, operation: str, target: str) -> bool:
        if self.operations is not None and operation not in self.operations:
            return False
        if self.path_contains is not None and self.path_contains not in target:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


class FaultProxy:
    """A threaded forwarding proxy on 127.0.0.1 with fault rules and per-operation counters.

    Rules are checked in the order they were added; the first that fires decides the fate of
    a request. Every request is counted, faulted or not. Thread safe.
    """

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.hostname:
            raise ValueError(f"FaultProxy forwards to plain http endpoints only, got {upstream_url!r}")
        self.upstream_host = upstream.hostname
        self.upstream_port = upstream.port or 80
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._counts: dict[str, int] = {}
        self._bytes_received = 0
        self._requests: list[RecordedRequest] = []
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_client_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail_next(
        self,
        n: int,
        status: int = 503,
        code: str = "ServiceUnavailable",
        operations: Iterable[str] | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with an S3 error (not forwarded)."""
        self._add(_Rule("fail", _operations(operations), n, status=status, code=code))

    def fail_always(
        self, status: int = 503, code: str = "ServiceUnavailable", operations: Iterable[str] | None = None
    ) -> None:
        self._add(_Rule("fail", _operations(operations), None, status=status, code=code))

    def fail_fraction(
        self,
        p: float,
        status: int = 503,
        code: str = "ServiceUnavailable",
        seed: int = 0,
        operations: Iterable[str] | None = None,
    ) -> None:
        """Fail each matching request with probability ``p``; the same seed gives the same pattern."""
        self._add(_Rule("fail", _operations(operations), None, p, random.Random(seed), status=status, code=code))

    def reset_next(self, n: int, operations: Iterable[str] | None = None) -> None:
        """Read the next ``n`` matching requests, then drop the connection with a TCP RST, unanswered."""
        self._add(_Rule("reset", _operations(operations), n))

    def delay_next(self, n: int, seconds: float, operations: Iterable[str] | None = None) -> None:
        """Hold the next ``n`` matching requests for ``seconds`` before forwarding them."""
        self._add(_Rule("delay", _operations(operations), n, seconds=seconds))

    def hold_next(self, operations: Iterable[str], path_contains: str, timeout: float = 120.0) -> Hold:
        """Keep the next matching request (operation and a part of its path) waiting until released.

        The request is forwarded unchanged once ``release()`` is called, or after ``timeout``
        seconds, so a test that fails never leaves a client hanging.
        """
        hold = Hold()
        self._add(_Rule("hold", _operations(operations), 1, seconds=timeout, path_contains=path_contains, hold=hold))
        return hold

    def clear(self) -> None:
        """Remove every fault rule (counters are kept)."""
        with self._lock:
            self._rules.clear()

    def count(self, op: str | None = None) -> int:
        with self._lock:
            return sum(self._counts.values()) if op is None else self._counts.get(op, 0)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def bytes_received(self) -> int:
        """Request body bytes the clients sent (after removing chunked framing)."""
        with self._lock:
            return self._bytes_received

    def requests(self, op: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if op is None or r.operation == op]

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._bytes_received = 0
            self._requests.clear()

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _admit(self, operation: str, target: str) -> _Rule | None:
        """Count a request and pick the rule that decides its fate."""
        with self._lock:
            self._counts[operation] = self._counts.get(operation, 0) + 1
            return next((rule for rule in self._rules if rule.fires(operation, target)), None)

    def _add_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes_received += n

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _operations(operations: Iterable[str] | None) -> frozenset[str] | None:
    return None if operations is None else frozenset(operations)


def _error_body(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode("utf-8")


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS for seconds.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def track(self, client: socket.socket, open_: bool) -> None:
        with self._clients_lock:
            (self._clients.add if open_ else self._clients.discard)(client)

    def close_client_connections(self) -> None:
        """Kick keep-alive clients off, so a stopped proxy really stops forwarding."""
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            with suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """A connection marked for reset is closed without the FIN a graceful shutdown sends."""
        try:
            linger = struct.unpack("ii", request.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        except OSError:
            linger = (0, 0)
        if linger == (1, 0):
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self.server.track(self.connection, True)

    def finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        self.server.track(self.connection, False)
        with suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("fault proxy: " + format, *args)

    def _proxy(self) -> None:
        operation = s3_operation(self.command, self.path, self.headers)
        rule = self.server.proxy._admit(operation, self.path)
        fault = rule.kind if rule else None
        if rule is not None and rule.kind == "delay":
            time.sleep(rule.seconds)
        if rule is not None and rule.hold is not None:
            rule.hold.wait_for_release(rule.seconds)
        if rule is not None and rule.kind in ("fail", "reset"):
            self._record(operation, self._drain_body(), fault)
            if rule.kind == "fail":
                self._answer_error(rule.status, rule.code, "Injected by FaultProxy")
            else:
                self._reset()
        else:
            self._forward(operation, fault)

    def _record(self, operation: str, body_bytes: int, fault: str | None) -> None:
        """Recorded before the client gets an answer, so a test sees every request it has made."""
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.proxy._record(RecordedRequest(operation, self.command, self.path, headers, body_bytes, fault))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _proxy

    def _body(self) -> Iterator[bytes]:
        """The request body as the client sent it, without chunked framing; counted as it arrives."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = self._dechunk()
        else:
            chunks = self._read_exactly(int(self.headers.get("Content-Length") or 0))
        for chunk in chunks:
            self.server.proxy._add_bytes(len(chunk))
            yield chunk

    def _read_exactly(self, length: int) -> Iterator[bytes]:
        while length > 0:
            data = self.rfile.read(min(length, _BLOCK))
            if not data:
                raise ConnectionError("client closed the connection inside a request body")
            length -= len(data)
            yield data

    def _dechunk(self) -> Iterator[bytes]:
        self._trailers: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            yield from self._read_exactly(size)
            self.rfile.readline()
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            self._trailers.append(line)

    def _drain_body(self) -> int:
        """Consume a request that will not be forwarded, so the connection stays usable."""
        return sum(len(chunk) for chunk in self._body())

    def _answer_error(self, status: int, code: str, message: str) -> None:
        body = b"" if self.command == "HEAD" else _error_body(code, message, self.path)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "fault-proxy")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _upstream_connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            proxy = self.server.proxy
            self._upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=300)
        return self._upstream

    def _forward(self, operation: str, fault: str | None) -> None:
        sent = 0
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        upstream = self._upstream_connection()
        try:
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        upstream.putheader(name, value)
                if chunked:
                    upstream.putheader("Transfer-Encoding", "chunked")
                upstream.endheaders()
                for chunk in self._body():
                    sent += len(chunk)
                    upstream.send(b"%X\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if chunked:
                    upstream.send(b"0\r\n" + b"".join(self._trailers) + b"\r\n")
            finally:
                self._record(operation, sent, fault)
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._drop_upstream()
            self.close_connection = True
            with suppress(OSError):
                self._answer_error(502, "BadGateway", f"FaultProxy could not forward the request: {exc}")
            return
        self._relay(response)

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        length = response.getheader("Content-Length")
        if bodiless or length is not None:
            framing = None
        elif response.chunked:
            framing = "chunked"
            self.send_header("Transfer-Encoding", "chunked")
        else:
            framing = "close"
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if not bodiless:
                self._stream(response, chunked=framing == "chunked")
        except OSError:
            self.close_connection = True
            self._drop_upstream()
            return
        response.close()
        if response.will_close:
            self._drop_upstream()

    def _stream(self, response: http.client.HTTPResponse, chunked: bool) -> None:
        while data := response.read(_BLOCK):
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
