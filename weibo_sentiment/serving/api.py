"""The HTTP sentiment API, served by LitServe (request batching, worker processes, a health endpoint).

    python -m weibo_sentiment.serve --config configs/quickstart.yaml --ckpt_path last --serve.port 8000
    curl -s localhost:8000/api/sentiment -H 'Content-Type: application/json' -d '{"text": "好开心[哈哈]"}'

``GET /`` is a page for analysts (paste posts or choose a file; a table, a summary, a CSV to download).
``POST /api/sentiment`` takes ``{"text": "..."}`` or ``{"texts": [...]}``; ``GET /health`` answers ``ok`` while every
model worker is ready (503 before, and while a worker that died is restarted). Requests that arrive together (up to
``max_batch_size`` of them, waiting at most ``batch_timeout`` seconds) share one forward pass. Settings come from
the config's ``serve:`` section, then flags (``--serve.port 8001``); the model from its ``model:`` and ``data:``
sections, as for ``main.py``.

Stopping: SIGTERM or Ctrl-C stops accepting connections, lets requests in flight finish (``serve.drain_seconds``),
then stops the model workers; every process of the server exits, and the server exits 0. Served on an address other
than loopback, every request needs the API key (``serve.api_key`` or WEIBO_SENTIMENT_API_KEY).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

import litserve as ls
from fastapi import Header, HTTPException

from weibo_sentiment.serving.checks import API_KEY_ENV, RequestBodyCheck, checked_texts, is_loopback, key_is_valid, max_body_bytes
from weibo_sentiment.compat import DrainingServer
from weibo_sentiment.processes import children_die_with_this_process, die_with_parent
from weibo_sentiment.config_parser import inference_parser, source_from_config
from weibo_sentiment.inference.analyzer import SentimentAnalyzer
from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.inference.model_source import ModelSource
from weibo_sentiment.inference.outputs import summarize
from weibo_sentiment.settings import ServeSettings
from weibo_sentiment.stopping import exit_when_stopped, handle_stop_signals
from weibo_sentiment.serving.webpage import add_page

API_PATH = "/api/sentiment"


class SentimentAPI(ls.LitAPI):
    """Validates requests, labels all texts of a batch of requests in one forward pass, and shapes the answers."""

    def __init__(self, config: Any, source: ModelSource, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=API_PATH)
        # Each worker process loads its own copy of the model the main process resolved (``last`` once, for all:
        # a restarted worker loads the same model as its siblings, whatever fit wrote since).
        self.config, self.source, self.settings = config, source, settings

    def setup(self, device: str) -> None:
        # LitServe starts this worker, and restarts a dead one from its monitoring thread: watched, not tied to that
        # thread by the kernel (weibo_sentiment.processes).
        die_with_parent(kernel=False)
        # A Ctrl-C in a terminal reaches every process of the group: the server's main process stops this worker
        # after the requests in flight are answered.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.analyzer = SentimentAnalyzer.from_config(self.config, self.source, device)

    def authorize(self, x_api_key: Optional[str] = Header(default=None),
                  authorization: Optional[str] = Header(default=None)) -> None:  # fmt: skip
        """LitServe's hook for who may call: run before a request is queued for the model (and for /health)."""
        if not key_is_valid(self.settings.api_key, x_api_key, authorization):
            raise HTTPException(401, "missing or wrong API key: send it as X-API-Key: KEY (or Authorization: Bearer KEY)")

    def decode_request(self, request) -> tuple[list[str], bool]:  # noqa: ANN001 - unannotated: LitServe passes the JSON body
        return checked_texts(request, self.settings)

    def batch(self, inputs: list[tuple[list[str], bool]]) -> list[tuple[list[str], bool]]:
        return inputs

    def predict(self, inputs: Any) -> Any:
        requests = inputs if isinstance(inputs, list) else [inputs]  # max_batch_size 1 passes one request
        texts = [text for request_texts, _ in requests for text in request_texts]
        rows = [row.to_dict() for row in self.analyzer.predict(texts)]
        answers, start = [], 0
        for request_texts, single in requests:
            answers.append((rows[start : start + len(request_texts)], single, request_texts))
            start += len(request_texts)
        return answers if isinstance(inputs, list) else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: tuple[list[dict[str, Any]], bool, list[str]]) -> dict[str, Any]:
        rows, single, texts = output
        if single:
            return rows[0]
        summary = summarize(rows, texts)
        return {"results": rows, "summary": summary.as_dict(), "report": summary.report()}


def api_parser():  # noqa: ANN201 - jsonargparse's ArgumentParser
    return inference_parser(__doc__.splitlines()[0], serves=True)


def checked_settings(config: Any) -> ServeSettings:
    settings = ServeSettings(**vars(config.serve))
    settings.api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
    if settings.host not in ("127.0.0.1", "0.0.0.0", "::"):
        raise UserError(f"serve.host {settings.host!r}: serve on 127.0.0.1 (this machine only), 0.0.0.0 or :: "
                        "(every network interface)")  # fmt: skip
    if not 1024 <= settings.port <= 65535:
        raise UserError(f"serve.port {settings.port}: use a port from 1024 to 65535")
    if not is_loopback(settings.host) and not settings.api_key:
        raise UserError(f"serve.host {settings.host} lets other machines call the API: set an API key "
                        f"(environment variable {API_KEY_ENV}, or serve.api_key), or serve on 127.0.0.1")  # fmt: skip
    return settings


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = api_parser()
    with exit_when_stopped(), exit_on_user_error():
        config = parser.parse_args(argv)
        settings = checked_settings(config)
        # Resolve and load once here, so that a bad path or model fails in one line before serving (and an ONNX
        # export is cached for the workers); the workers load their own copy of this same source.
        source = source_from_config(config)
        with SentimentAnalyzer.from_config(config, source) as analyzer:
            mode = analyzer.mode
    shown = {**vars(config.serve), "api_key": "(set)" if settings.api_key else None}  # the key itself is never logged
    print(f"serving {source.describe()} ({mode}) at {API_PATH} on http://{settings.host}:{settings.port} with {shown}",
          flush=True)  # fmt: skip
    server = DrainingServer(SentimentAPI(config, source, settings), accelerator="auto", workers_per_device=settings.workers,
                            timeout=settings.request_timeout, drain_seconds=settings.drain_seconds)  # fmt: skip
    # Added last, so outermost, around LitServe's GZip too: a refusal goes out at once, whole and with its length,
    # while the rest of its body is dropped; gzip would stream it, and a client would wait for the stream's end.
    server.app.add_middleware(RequestBodyCheck, path=API_PATH, max_bytes=max_body_bytes(settings),
                              body_seconds=settings.request_timeout)  # fmt: skip
    add_page(server.app, settings, API_PATH)
    handle_stop_signals(server.on_stop_signal)
    children_die_with_this_process()  # LitServe's HTTP servers and manager, forked by run()
    server.run(host=settings.host, port=settings.port, generate_client_file=False)
    if server.stop_signal is not None:
        print(f"stopped by {signal.Signals(server.stop_signal).name}: requests in flight answered, workers stopped",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
