"""What the HTTP API checks before a request reaches the model: who sent it, how big it is, and what it holds.

- ``RequestBodyCheck`` (ASGI middleware): a body over ``serve.max_body_bytes`` is answered 413 at once, from its
  ``Content-Length`` before a byte of it is read, or, sent in chunks without one, as soon as it passes the limit;
  a body not whole within ``serve.request_timeout`` 408; a form 415; a body that is not JSON, or nests too deeply,
  400 (LitServe would answer 500). The rest of a refused body is read and dropped, within bounds, before closing.
- ``key_is_valid``: the API key, compared in constant time, from ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
- ``checked_texts``: the texts of a JSON body, each a non-empty string of Unicode within ``max_chars``, at most
  ``max_texts``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
from typing import Any, Optional

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weibo_sentiment.settings import ServeSettings

JSON_BYTES_PER_CHAR = 6  # the most a character takes in a JSON string: \uXXXX (json.dumps' default escapes CJK)
API_KEY_ENV = "WEIBO_SENTIMENT_API_KEY"
# Arrays and objects in one another: the API's bodies need 2; Python's parser and the pickling of a request for the
# model workers fail at a few hundred (measured: 473), which LitServe would answer 500.
MAX_JSON_DEPTH = 32
TOO_DEEP = f"the request body nests arrays or objects more than {MAX_JSON_DEPTH} deep"
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a string of valid JSON, escapes and all
BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")  # a valid body's pairs match, so one kind of bracket is enough
NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str that json.loads made, pairs are already one character
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Lingering close: what of a refused body is read and dropped, at most, so that its sender can read the answer. More
# than the 57 MB that a client was seen to send.
LINGER_MAX_BYTES = 64 * 2**20
LINGER_MAX_SECONDS = 5.0


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


class Refused(Exception):
    """A request that ``RequestBodyCheck`` answers ``status`` with ``{"detail": detail}``, before the API sees it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class RequestBodyCheck:
    """ASGI middleware for POSTs to ``path``: bounds the body's size and the time it takes to arrive, and checks that
    it is JSON the API can read, so that no body reaches LitServe that it would answer 500.

    A refused request is answered at once, then the rest of its body is read and dropped, for at most
    ``LINGER_MAX_BYTES`` and ``LINGER_MAX_SECONDS``, before the connection closes (nginx's "lingering close"): a client
    that sends its whole body before it reads the answer (Python's urllib.request) would otherwise have its
    connection reset mid-body and never read the answer. Nothing of what is dropped is kept.
    """

    def __init__(self, app: ASGIApp, path: str, max_bytes: int, body_seconds: float) -> None:
        self.app, self.path, self.max_bytes, self.body_seconds = app, path, max_bytes, body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        body, complete = bytearray(), False
        try:
            self._check_headers(dict(scope["headers"]))
            deadline = asyncio.get_running_loop().time() + self.body_seconds
            while not complete:
                message = await self._next_message(receive, deadline)
                if message["type"] == "http.disconnect":
                    return  # the client left: there is nobody to answer
                body += message.get("body", b"")
                complete = not message.get("more_body", False)
                if len(body) > self.max_bytes:
                    raise Refused(413, f"the request body passed {self.max_bytes} bytes (serve.max_body_bytes)")
            check_json(bytes(body))
        except Refused as refused:
            await answer_then_drop_body(refused, send, receive, body_left=not complete)
            return
        await self.app(scope, self._replay(bytes(body), receive), send)

    def _check_headers(self, headers: dict[bytes, bytes]) -> None:
        # LitServe reads a body that says it is a form as a form, which needs a package this project does not
        # install (a 500), and the API takes JSON only.
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if media_type in FORM_MEDIA_TYPES:
            raise Refused(415, f"the request body is {media_type}: send JSON, with Content-Type: application/json")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise Refused(413, f"the request body has {int(declared)} bytes; at most {self.max_bytes} "
                               "(serve.max_body_bytes)")  # fmt: skip

    async def _next_message(self, receive: Receive, deadline: float) -> Message:
        """The next piece of the body; a client that sends it too slowly, or stops, is answered 408."""
        try:
            return await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0))
        except asyncio.TimeoutError:
            raise Refused(408, f"the request body did not arrive whole within {self.body_seconds:g} s "
                               "(serve.request_timeout)") from None  # fmt: skip

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


def check_json(body: bytes) -> None:
    """A body that is not JSON, or JSON that Python or the queue to the model workers cannot take, is ``Refused``
    400 with the reason."""
    if not body.strip():
        raise Refused(400, 'the request body is empty: send JSON, {"text": "..."} or {"texts": ["...", ...]}')
    try:
        text = body.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); a byte order mark may lead, as Python allows
    except UnicodeDecodeError as err:
        raise Refused(400, f"the request body is not UTF-8 (byte {err.start}): send JSON as UTF-8") from None
    try:
        json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as err:
        raise Refused(400, f"the request body is not JSON: {err}") from None
    except RecursionError:
        raise Refused(400, TOO_DEEP) from None
    except ValueError:  # the only other error of json.loads: an integer over Python's limit of digits
        raise Refused(400, "the request body holds a number with too many digits to read") from None
    if nests_deeper_than(body, MAX_JSON_DEPTH):
        raise Refused(400, TOO_DEEP)


def refuse_constant(name: str) -> Any:
    """``json.loads`` reads NaN and Infinity, which JSON has not; no answer could carry them back."""
    raise Refused(400, f"the request body holds {name}, which is not JSON")


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether a valid JSON body nests arrays and objects more than ``limit`` deep, in steps of C speed: its strings
    removed and its brackets alone kept, each round drops the innermost pairs, one level."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the common case, at once
    brackets = JSON_STRING.sub(b"", body).translate(BRACKETS_ONLY, delete=NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


async def answer_then_drop_body(refused: Refused, send: Send, receive: Receive, body_left: bool) -> None:
    """Send the whole answer at once; while ``body_left``, end the response (whereupon uvicorn closes the connection)
    only after the rest of the body is read and dropped, within ``LINGER_MAX_BYTES`` and ``LINGER_MAX_SECONDS``."""
    payload = json.dumps({"detail": refused.detail}).encode()
    # Connection: close, so that what is left of the body after the lingering is never read as the next request.
    await send({"type": "http.response.start", "status": refused.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload, "more_body": body_left})
    if not body_left:
        return
    loop = asyncio.get_running_loop()
    deadline, dropped = loop.time() + LINGER_MAX_SECONDS, 0
    while dropped <= LINGER_MAX_BYTES:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            break
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
        dropped += len(message.get("body", b""))
    await send({"type": "http.response.body", "body": b""})


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
        # JSON's escapes let a lone surrogate ("\ud800") in: no character, which the tokenizer refuses (a 500).
        surrogate = LONE_SURROGATE.search(text)
        if surrogate:
            raise HTTPException(422, f"{where} holds a lone surrogate, \\u{ord(surrogate.group()):04x}, at character "
                                     f"{surrogate.start()}: no Unicode character (one beyond \\uffff is escaped as a "
                                     "pair, such as \\ud83d\\ude00)")  # fmt: skip
    return texts, single
