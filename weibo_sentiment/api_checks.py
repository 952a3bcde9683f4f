"""What the HTTP API checks before a request reaches the model: who sent it, how big it is, and what it holds.

- ``RequestBodyCheck`` (ASGI middleware): a body over ``serve.max_body_bytes`` is answered 413 at once, from its
  ``Content-Length`` before a byte of it is read, or, sent in chunks without one, as soon as it passes the limit;
  a body that is not JSON is answered 400 (LitServe would answer 500).
- ``key_is_valid``: the API key, compared in constant time, from ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
- ``checked_texts``: the texts of a JSON body, each a non-empty string within ``max_chars``, at most ``max_texts``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any, Optional

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weibo_sentiment.settings import ServeSettings

JSON_BYTES_PER_CHAR = 6  # the most a character takes in a JSON string: \uXXXX (json.dumps' default escapes CJK)
API_KEY_ENV = "WEIBO_SENTIMENT_API_KEY"


def max_body_bytes(settings: ServeSettings) -> int:
    """``serve.max_body_bytes``, or what ``max_texts`` texts of ``max_chars`` characters can take as JSON."""
    if settings.max_body_bytes is not None:
        return settings.max_body_bytes
    return settings.max_texts * (settings.max_chars * JSON_BYTES_PER_CHAR + 16) + 1024


def is_loopback(host: str) -> bool:
    """Whether serving on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_is_valid(expected: Optional[str], x_api_key: Optional[str], authorization: Optional[str]) -> bool:
    """No key configured: every request passes. Otherwise the request must carry that key."""
    if not expected:
        return True
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class RequestBodyCheck:
    """ASGI middleware for POSTs to ``path``: bounds the body's size before reading it, and checks it is JSON."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._answer(send, 413, f"the request body has {int(declared)} bytes; at most {self.max_bytes} "
                                          "(serve.max_body_bytes)")  # fmt: skip
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._answer(send, 413, f"the request body passed {self.max_bytes} bytes "
                                              "(serve.max_body_bytes)")  # fmt: skip
                return
            if not message.get("more_body", False):
                break
        try:
            json.loads(body)
        except ValueError:
            await self._answer(send, 400, "the request body is not JSON")
            return
        await self.app(scope, self._replay(bytes(body), receive), send)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """The body already read, then whatever the connection says next (a disconnect)."""
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    @staticmethod
    async def _answer(send: Send, status: int, detail: str) -> None:
        payload = json.dumps({"detail": detail}).encode()
        # Connection: close, so that a client still sending an oversized body is not kept reading from.
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})


def checked_texts(request: Any, settings: ServeSettings) -> tuple[list[str], bool]:
    """The texts of a request body, and whether it was a single ``text``; a bad body is an HTTP error."""
    if not isinstance(request, dict) or ("text" in request) == ("texts" in request):
        raise HTTPException(422, 'send a JSON object with either "text": "..." or "texts": ["...", ...]')
    single = "text" in request
    texts = [request["text"]] if single else request["texts"]
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise HTTPException(422, '"text" must be a string and "texts" a list of strings')
    if not texts:
        raise HTTPException(422, '"texts" is empty: send at least one text')
    if len(texts) > settings.max_texts:
        raise HTTPException(413, f"{len(texts)} texts in one request; at most {settings.max_texts} (serve.max_texts)")
    for index, text in enumerate(texts):
        where = "text" if single else f"texts[{index}]"
        if not text.strip():
            raise HTTPException(422, f"{where} is empty")
        if len(text) > settings.max_chars:
            raise HTTPException(413, f"{where} has {len(text)} characters; at most {settings.max_chars} (serve.max_chars)")
    return texts, single
