"""What every request passes before any route sees it, cheapest check first.

1. ``Host``: a server without a key answers only to the names it is bound to, so a
   page on another site cannot reach it by pointing its own name at 127.0.0.1 (DNS
   rebinding). 400 otherwise.
2. The API key, before the body is read: a client without it gets 401 at once, not
   a 408 after a slow upload.
3. Requests in progress per key (per client address on a keyless server): 429 above
   ``max_requests_per_key``, so one client cannot take every slot of the queue.
4. ``Content-Type: application/json`` on ``POST /v1/...`` (415 otherwise): a form
   (``text/plain``) or a ``no-cors`` fetch from another site cannot send it without
   a CORS preflight, which this server never grants.
5. The body, read whole within a size cap (413) and a time limit (408); the app then
   sees it as if it had just arrived.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import secrets

from tutorlm.serve.schema import ApiError

OPEN_PATHS = frozenset({"/health"})
"""Paths that need no key (load balancers probe them)."""

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def presented_key(authorization: str) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or HTTP Basic (any user, password KEY).

    Basic lets a browser reach the page: it asks for the key once and then sends it
    with every request to the server, the page's API calls included.
    """
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def check_key(api_key: str | None, authorization: str, *, page: bool) -> None:
    """Nothing when no key is set or the right one is presented; else a 401 whose
    challenge fits the client: Basic for the page (the browser asks), Bearer for the API."""
    if not api_key:
        return
    presented = presented_key(authorization)
    if presented is not None and secrets.compare_digest(presented.encode(), api_key.encode()):
        return
    challenge = 'Basic realm="tutorlm"' if page else "Bearer"
    message = (
        "this page needs the server's API key (user name: anything, password: the key)"
        if page
        else "missing or wrong API key: send the header 'Authorization: Bearer KEY'"
    )
    raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": challenge})


def allowed_host_names(host: str, api_key: str | None) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``host`` answers to; None: any.

    A keyed server checks the key instead; a keyless one on every interface
    (``--insecure-no-key --host 0.0.0.0``) is open to whoever reaches it anyway.
    """
    if api_key or host in WILDCARD_HOSTS:
        return None
    return LOOPBACK_NAMES | {host.strip("[]").lower()}


def host_name(value: str) -> str:
    """``[::1]:8000`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0].rstrip(".") if ":" in value else value.rstrip(".")


class RequestGuard:
    """ASGI middleware: the five checks of this module, in order.

    Args:
        app: the app behind the guard.
        config: a ``ServeConfig`` (caps, time limits, bound host).
        api_key: the server's key, or None.
    """

    def __init__(self, app, *, config, api_key: str | None):
        self.app, self.config, self.api_key = app, config, api_key
        self.hosts = allowed_host_names(config.host, api_key)
        self.in_progress: collections.Counter[str] = collections.Counter()
        """Requests in progress per key (or client address), for ``max_requests_per_key``."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check_host(headers.get("host", ""))
            path = scope["path"]
            if path not in OPEN_PATHS:
                page = not path.startswith("/v1/")
                check_key(self.api_key, headers.get("authorization", ""), page=page)
            if scope["method"] == "POST" and path.startswith("/v1/"):
                self._check_content_type(headers.get("content-type", ""))
        except ApiError as error:
            return await error.response()(scope, receive, send)
        if not scope["path"].startswith("/v1/"):
            return await self._with_body(scope, receive, send, headers)
        who = self._who(scope, headers)
        if self.in_progress[who] >= self.config.max_requests_per_key:
            error = ApiError(
                429,
                f"{self.in_progress[who]} requests of this client are in progress; this "
                f"server allows {self.config.max_requests_per_key} at once",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
            return await error.response()(scope, receive, send)
        self.in_progress[who] += 1
        try:
            return await self._with_body(scope, receive, send, headers)
        finally:
            self.in_progress[who] -= 1
            if not self.in_progress[who]:
                del self.in_progress[who]

    def _check_host(self, value: str) -> None:
        if self.hosts is None or host_name(value) in self.hosts:
            return
        raise ApiError(
            400,
            f"Host {value!r} is not a name of this server; a server without an API key "
            f"answers only to {', '.join(sorted(self.hosts))}",
            code="invalid_host",
        )

    @staticmethod
    def _check_content_type(value: str) -> None:
        if value.partition(";")[0].strip().lower() == "application/json":
            return
        raise ApiError(
            415,
            f"Content-Type {value or '(none)'!r}: this API accepts only application/json",
            code="unsupported_media_type",
        )

    def _who(self, scope, headers: dict[str, str]) -> str:
        key = presented_key(headers.get("authorization", ""))
        if self.api_key and key:
            return f"key:{key}"
        client = scope.get("client") or ("unknown", 0)
        return f"address:{client[0]}"

    async def _with_body(self, scope, receive, send, headers: dict[str, str]):
        declared = headers.get("content-length")
        max_bytes = self.config.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            error = ApiError(413, self._too_large(declared), code="body_too_large")
            return await error.response()(scope, receive, send)
        timeout_s = self.config.body_timeout_s
        try:
            body = await asyncio.wait_for(self._read(receive), timeout=timeout_s)
        except ApiError as error:
            return await error.response()(scope, receive, send)
        except TimeoutError:
            error = ApiError(408, f"request body not received within {timeout_s:g} s")
            return await error.response()(scope, receive, send)
        if body is None:  # the client left
            return None
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _too_large(self, size: str) -> str:
        return (
            f"request body is {size} bytes; this server accepts at most "
            f"{self.config.max_body_bytes}"
        )

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise ApiError(413, self._too_large(f"over {size}"), code="body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
