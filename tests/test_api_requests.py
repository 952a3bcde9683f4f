"""Malformed requests to the HTTP API, each kind on one real server: every one gets a 4xx with a JSON reason
(``{"detail": ...}``), none a 500 or a traceback in the server's log, the server keeps serving, and text that can be
labelled is labelled. Kinds: JSON's structure and depth, escapes and Unicode, types, sizes, methods, content types,
bodies sent in chunks, slowly, or left unfinished."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time

import pytest

from test_serve import call, post
from test_stopping import output, start_server, stopped, tiny_model
from weibo_sentiment.serving.checks import MAX_JSON_DEPTH, max_body_bytes
from weibo_sentiment.settings import ServeSettings

pytestmark = pytest.mark.e2e  # every test here starts processes of ours (see pyproject.toml)

MAX_TEXTS, MAX_CHARS, BODY_SECONDS = 8, 100, 5
MAX_BODY_BYTES = max_body_bytes(ServeSettings(max_texts=MAX_TEXTS, max_chars=MAX_CHARS))
TOO_DEEP = f"more than {MAX_JSON_DEPTH} deep"
SERVER_FAILED = ("Traceback", '" 500', "Internal Server Error", "Exception in ASGI application")


@pytest.fixture(scope="module")
def server(trained: dict, tiny_gpt2: str, tmp_path_factory: pytest.TempPathFactory):
    process, base = start_server(tiny_model(trained, tiny_gpt2), tmp_path_factory.mktemp("api-requests"),
                                 "--serve.max_texts", str(MAX_TEXTS), "--serve.max_chars", str(MAX_CHARS),
                                 "--serve.request_timeout", str(BODY_SECONDS))  # fmt: skip
    yield {"process": process, "base": base, "url": f"{base}/api/sentiment", "port": int(base.rsplit(":", 1)[1])}
    assert stopped(process, signal.SIGTERM, timeout=60)[0] == 0


def server_log(server: dict) -> str:
    return "".join(output(server["process"]))


@pytest.fixture(autouse=True)
def no_server_failure_logged(server: dict):
    """What the server logged during each test: no traceback, no 500 (so that a failure names its request)."""
    logged_before = len(server_log(server))
    yield
    logged = server_log(server)[logged_before:]
    assert not [sign for sign in SERVER_FAILED if sign in logged], logged[-3000:]


def exchange(server: dict, method: str, body: bytes | None, content_type: str | None) -> tuple[int, str, bytes]:
    """One request (its whole body sent before the answer is read); the status, content type and body answered."""
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    try:
        connection.request(method, "/api/sentiment", body=body,
                           headers={"Content-Type": content_type} if content_type else {})  # fmt: skip
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def reason(content_type: str, payload: bytes) -> str:
    """The ``detail`` of a JSON error answer, and nothing else in it."""
    assert content_type.startswith("application/json"), (content_type, payload)
    answer = json.loads(payload)
    assert set(answer) == {"detail"} and isinstance(answer["detail"], str), answer
    return answer["detail"]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


JSON = "application/json"
MALFORMED = [
    # JSON's structure and depth
    pytest.param("POST", b"{text: '\xe5\xa5\xbd'}", JSON, 400, "not JSON: Expecting property name", id="not-json"),
    pytest.param("POST", '{"text": "好开心'.encode(), JSON, 400, "not JSON: Unterminated string", id="truncated"),
    pytest.param("POST", b'{"text": "a"} {"text": "b"}', JSON, 400, "not JSON: Extra data", id="two-values"),
    pytest.param("POST", b'{"text": "a\nb"}', JSON, 400, "not JSON: Invalid control character", id="raw-newline"),
    pytest.param("POST", rb'{"text": "\x41"}', JSON, 400, "not JSON: Invalid \\escape", id="invalid-escape"),
    pytest.param("POST", '["好开心"]'.encode(), JSON, 422, 'either "text"', id="top-level-array"),
    pytest.param("POST", '"好开心"'.encode(), JSON, 422, 'either "text"', id="top-level-string"),
    pytest.param("POST", b"42", JSON, 422, 'either "text"', id="top-level-number"),
    pytest.param("POST", b"null", JSON, 422, 'either "text"', id="top-level-null"),
    pytest.param("POST", b'{"text": "a", "texts": ["b"]}', JSON, 422, 'either "text"', id="text-and-texts"),
    pytest.param("POST", b'{"text": ' + nested(2_000) + b"}", JSON, 400, TOO_DEEP, id="deeper-than-the-parser"),
    pytest.param("POST", b'{"text": ' + nested(600) + b"}", JSON, 400, TOO_DEEP, id="deeper-than-pickling"),
    pytest.param("POST", b'{"text": "a", "x": ' + nested(MAX_JSON_DEPTH + 1) + b"}", JSON, 400, TOO_DEEP,
                 id="too-deep-under-an-unread-key"),  # fmt: skip
    pytest.param("POST", b'{"text": NaN}', JSON, 400, "NaN, which is not JSON", id="nan"),
    pytest.param("POST", b'{"text": "a", "x": -Infinity}', JSON, 400, "-Infinity, which is not JSON", id="infinity"),
    pytest.param("POST", b'{"text": "a", "x": ' + b"9" * 5000 + b"}", JSON, 400, "too many digits", id="huge-integer"),
    # escapes and Unicode
    pytest.param("POST", rb'{"text": "\ud800"}', JSON, 422, "text holds a lone surrogate, \\ud800",
                 id="lone-surrogate"),
    pytest.param("POST", rb'{"texts": ["a", "b\udc00"]}', JSON, 422, "texts[1] holds a lone surrogate, \\udc00, at "
                 "character 1", id="lone-low-surrogate-in-list"),  # fmt: skip
    pytest.param("POST", rb'{"text": "\ude00\ud83d"}', JSON, 422, "lone surrogate", id="surrogates-reversed"),
    pytest.param("POST", b'{"text": "\xff"}', JSON, 400, "not UTF-8 (byte 10)", id="invalid-utf-8"),
    pytest.param("POST", b'{"text": "\xc0\xaf"}', JSON, 400, "not UTF-8", id="overlong-utf-8"),
    pytest.param("POST", b'{"text": "\xed\xa0\x80"}', JSON, 400, "not UTF-8", id="surrogate-in-utf-8"),
    pytest.param("POST", '{"text": "好开心"}'.encode("utf-16"), JSON, 400, "not UTF-8", id="utf-16"),
    pytest.param("POST", '{"text": "café"}'.encode("latin-1"), "application/json; charset=latin-1", 400, "not UTF-8",
                 id="latin-1-as-declared"),  # fmt: skip
    # types
    *[pytest.param("POST", body, JSON, 422, "must be a string", id=name) for name, body in [
        ("text-null", b'{"text": null}'), ("text-number", b'{"text": 1}'), ("text-bool", b'{"text": true}'),
        ("text-object", b'{"text": {"text": "a"}}'), ("text-list", b'{"text": ["a"]}'),
        ("texts-string", b'{"texts": "a"}'), ("texts-mixed", b'{"texts": ["a", 1]}'),
        ("texts-null-item", b'{"texts": ["a", null]}'), ("texts-nested", b'{"texts": [["a"]]}'),
        ("texts-object", b'{"texts": {"0": "a"}}')]],  # fmt: skip
    # sizes
    pytest.param("POST", b"", JSON, 400, "the request body is empty", id="empty-body"),
    pytest.param("POST", b" \r\n", JSON, 400, "the request body is empty", id="blank-body"),
    pytest.param("POST", b'{"texts": []}', JSON, 422, '"texts" is empty', id="empty-list"),
    pytest.param("POST", b'{"text": ""}', JSON, 422, "text is empty", id="empty-text"),
    pytest.param("POST", b'{"texts": ["a", " \\n\\t"]}', JSON, 422, "texts[1] is empty", id="blank-text-in-list"),
    pytest.param("POST", json.dumps({"texts": ["a"] * (MAX_TEXTS + 1)}).encode(), JSON, 413, f"at most {MAX_TEXTS} "
                 "(serve.max_texts)", id="too-many-texts"),  # fmt: skip
    pytest.param("POST", json.dumps({"text": "好" * (MAX_CHARS + 1)}).encode(), JSON, 413, f"at most {MAX_CHARS} "
                 "(serve.max_chars)", id="too-long-text"),  # fmt: skip
    pytest.param("POST", b'{"text": "a", "x": "' + b"a" * MAX_BODY_BYTES + b'"}', JSON, 413,
                 f"at most {MAX_BODY_BYTES} (serve.max_body_bytes)", id="body-over-max-body-bytes"),  # fmt: skip
    # methods
    *[pytest.param(method, None, None, 405, "Method Not Allowed", id=method) for method in ("GET", "DELETE")],
    *[pytest.param(method, b'{"text": "a"}', JSON, 405, "Method Not Allowed", id=method)
      for method in ("PUT", "PATCH")],
    # content types
    pytest.param("POST", "text=好开心".encode(), "application/x-www-form-urlencoded", 415,
                 "application/x-www-form-urlencoded: send JSON, with Content-Type: application/json", id="form"),
    pytest.param("POST", b'{"text": "a"}', "application/x-www-form-urlencoded", 415, "send JSON", id="json-as-form"),
    pytest.param("POST", b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\na\r\n--x--\r\n',
                 "multipart/form-data; boundary=x", 415, "multipart/form-data: send JSON", id="multipart"),
]


@pytest.mark.parametrize(("method", "body", "content_type", "status", "says"), MALFORMED)
def test_a_malformed_request_gets_a_4xx_with_a_json_reason(
    server: dict, method: str, body: bytes | None, content_type: str | None, status: int, says: str
) -> None:
    got, answered_type, payload = exchange(server, method, body, content_type)
    assert (got, says in reason(answered_type, payload)) == (status, True), payload


LABELLED = [
    pytest.param(rb'{"text": "\u597d\u5f00\u5fc3 \"\\/\b\f\n\r\t[\u54c8\u54c8]"}', JSON, id="escapes"),
    pytest.param(rb'{"text": "\ud83d\ude00 \u597d"}', JSON, id="escaped-surrogate-pair"),
    pytest.param('{"text": "😀🎉 好开心"}'.encode(), JSON, id="emoji"),
    pytest.param(rb'{"text": "\u597d\u0000\u5f00\u5fc3"}', JSON, id="nul-inside"),
    pytest.param(rb'{"text": "\u0000"}', JSON, id="nul-alone"),
    pytest.param('{"text": "\u200b好\u200d"}'.encode(), JSON, id="zero-width"),
    pytest.param('{"text": 5, "text": "好开心"}'.encode(), JSON, id="duplicate-key-last-wins"),
    pytest.param('{"text": "好开心", "lang": "zh", "n": 1e400}'.encode(), JSON, id="unread-keys"),
    pytest.param('\ufeff{"text": "好开心"}'.encode(), JSON, id="byte-order-mark"),
    pytest.param('{"text": "好开心"}'.encode(), None, id="no-content-type"),
    pytest.param('{"text": "好开心"}'.encode(), "text/plain", id="text-plain"),
    pytest.param('{"text": "好开心"}'.encode(), "application/json; charset=utf-8", id="charset-utf-8"),
    pytest.param(json.dumps({"text": "好" * MAX_CHARS}).encode(), JSON, id="longest-text"),
]


@pytest.mark.parametrize(("body", "content_type"), LABELLED)
def test_text_that_can_be_labelled_is_labelled_as_its_text(server: dict, body: bytes, content_type: str | None) -> None:
    status, _, payload = exchange(server, "POST", body, content_type)
    assert status == 200, payload
    text = json.loads(body.decode("utf-8-sig"))["text"]
    assert_labelled_as(server, json.loads(payload), text)


def assert_labelled_as(server: dict, answer: dict, text: str) -> None:
    """``answer`` is what a plain request for ``text`` is answered."""
    status, expected = post(server["url"], {"text": text})
    assert status == 200 and answer["label"] == expected["label"] and answer["emoticons"] == expected["emoticons"]
    assert answer["prob_positive"] == pytest.approx(expected["prob_positive"], abs=1e-5)


def raw_exchange(server: dict, head: bytes, pieces: list[bytes], pause: float = 0) -> tuple[int, dict]:
    """A request written by hand: ``head`` (request line and headers), then ``pieces`` of body, ``pause`` s apart;
    the status and JSON body answered."""
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
        sock.sendall(head + b"\r\n")
        for piece in pieces:
            time.sleep(pause)
            sock.sendall(piece)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def post_head(*headers: str) -> bytes:
    return "".join(f"{line}\r\n" for line in ("POST /api/sentiment HTTP/1.1", "Host: 127.0.0.1", *headers)).encode()


def chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body (an empty one ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_chunked_body_is_read_whole_and_checked_alike(server: dict) -> None:
    chunked = post_head("Content-Type: application/json", "Transfer-Encoding: chunked")
    status, answer = raw_exchange(server, chunked, [chunk(b'{"text":'), chunk(' "好开心"}'.encode()), chunk(b"")])
    assert status == 200
    assert_labelled_as(server, answer, "好开心")
    assert raw_exchange(server, chunked, [chunk(b"{te"), chunk(b"")]) == (
        400, {"detail": "the request body is not JSON: Expecting property name enclosed in double quotes: line 1 "
                        "column 2 (char 1)"})  # fmt: skip
    status, answer = raw_exchange(server, chunked, [chunk(rb'{"text": "\ud800"}'), chunk(b"")])
    assert status == 422 and "lone surrogate" in answer["detail"]


def test_a_slow_body_that_arrives_whole_in_time_is_labelled(server: dict) -> None:
    body = '{"text": "好开心"}'.encode()
    head = post_head("Content-Type: application/json", f"Content-Length: {len(body)}")
    status, answer = raw_exchange(server, head, [body[:5], body[5:11], body[11:]], pause=0.5)
    assert status == 200
    assert_labelled_as(server, answer, "好开心")


def test_a_body_that_stops_arriving_is_answered_408(server: dict) -> None:
    started = time.monotonic()
    status, answer = raw_exchange(server, post_head("Content-Type: application/json", "Content-Length: 40"),
                                  [b'{"text": "a'])  # fmt: skip
    assert (status, answer) == (408, {"detail": f"the request body did not arrive whole within {BODY_SECONDS} s "
                                                "(serve.request_timeout)"})  # fmt: skip
    assert BODY_SECONDS <= time.monotonic() - started < BODY_SECONDS + 3


@pytest.mark.parametrize(("framing", "part"), [("Content-Length: 100", b'{"text": "a'),
                                               ("Transfer-Encoding: chunked", b'64\r\n{"text": "a')])  # fmt: skip
def test_a_client_that_leaves_mid_body_troubles_no_one(server: dict, framing: str, part: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
        sock.sendall(post_head("Content-Type: application/json", framing) + b"\r\n" + part)
        time.sleep(0.3)  # the server is waiting for the rest
    assert post(server["url"], {"text": "好开心"})[0] == 200


def test_broken_http_framing_is_answered_400_by_uvicorn_before_the_api(server: dict) -> None:
    """The one answer that is not JSON: uvicorn's parser refuses the request before any of the app sees it."""
    for head, body in [(post_head("Transfer-Encoding: chunked"), b"zz\r\n{}\r\n0\r\n\r\n"),
                       (post_head("Content-Length: abc"), b"{}")]:  # fmt: skip
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
            sock.sendall(head + b"\r\n" + body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert (response.status, response.read()) == (400, b"Invalid HTTP request received.")


def test_after_all_of_them_the_server_is_healthy_and_its_log_clean(server: dict) -> None:
    assert call(f"{server['base']}/health")[0] == 200
    status, answer = post(server["url"], {"texts": ["好开心[哈哈]", "太难过了[泪]"]})
    assert status == 200 and answer["summary"]["count"] == 2
    assert not [sign for sign in SERVER_FAILED if sign in server_log(server)]
