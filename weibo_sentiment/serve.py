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
import threading
from contextlib import suppress
from typing import Any, Optional

import litserve as ls
from fastapi import Header, HTTPException

from weibo_sentiment.api_checks import API_KEY_ENV, RequestBodyCheck, checked_texts, is_loopback, key_is_valid, max_body_bytes
from weibo_sentiment.config import inference_parser
from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.predictor import SentimentPredictor, load_predictor
from weibo_sentiment.settings import ServeSettings
from weibo_sentiment.stopping import exit_when_stopped, handle_stop_signals
from weibo_sentiment.webpage import add_page

API_PATH = "/api/sentiment"


class SentimentAPI(ls.LitAPI):
    """Validates requests, labels all texts of a batch of requests in one forward pass, and shapes the answers."""

    def __init__(self, argv: list[str], settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=API_PATH)
        self.argv = argv  # each worker process parses the same arguments and loads its own model
        self.settings = settings

    def setup(self, device: str) -> None:
        # A Ctrl-C in a terminal reaches every process of the group: the server's main process stops this worker
        # after the requests in flight are answered.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        parser = api_parser()
        self.predictor: SentimentPredictor = load_predictor(parser, parser.parse_args(self.argv), device)

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
        rows = self.predictor.predict(texts)
        answers, start = [], 0
        for request_texts, single in requests:
            answers.append((rows[start : start + len(request_texts)], single))
            start += len(request_texts)
        return answers if isinstance(inputs, list) else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: tuple[list[dict[str, Any]], bool]) -> dict[str, Any]:
        rows, single = output
        if single:
            return rows[0]
        positive = sum(row["label"] == 1 for row in rows)
        summary = {"count": len(rows), "positive": positive, "negative": len(rows) - positive,
                   "positive_ratio": positive / len(rows)}  # fmt: skip
        return {"results": rows, "summary": summary}


class DrainingServer(ls.LitServer):
    """LitServer that stops in the order that lets requests in flight finish.

    First the HTTP servers stop accepting and answer what they hold (uvicorn's graceful shutdown, up to
    ``drain_seconds``) while the model workers still run, then the workers and the queues between them stop.
    (LitServe's own order closes the queues first, so requests in flight would wait for nothing.) A worker that dies
    is restarted meanwhile; the restarting stops before shutting down, so that no worker outlives the server.
    """

    def __init__(self, *args: Any, drain_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, restart_workers=True, **kwargs)
        self.uvicorn_graceful_timeout = drain_seconds
        self.monitor_internal = 0.5  # how often dead workers are looked for (/health is 503 from then until ready)
        self.stop_signal: Optional[int] = None
        self._serving = self._stopping = False

    def on_stop_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM or SIGINT in the main process: shut down now, or as soon as starting up is over."""
        self.stop_signal = self.stop_signal or signum
        if self._serving:
            raise KeyboardInterrupt  # LitServer.run() turns it into its shutdown

    def _start_server(self, *args: Any, **kwargs: Any) -> Any:
        workers = super()._start_server(*args, **kwargs)
        self._serving = True
        if self.stop_signal is not None:  # asked to stop while the workers were loading the model
            self._shutdown_event.set()
        return workers

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict, shutdown_reason: str = "normal") -> None:
        if self._stopping:
            return
        self._stopping = True
        # The worker monitor's loop ends when the event is set. Set from a thread of its own: the main thread's
        # connection to the manager may still wait on the event (the wait that the signal interrupted).
        setter = threading.Thread(target=set_ignoring_errors, args=(self._shutdown_event,), daemon=True)
        setter.start()
        setter.join(timeout=5)
        for thread in threading.enumerate():
            if thread.name == "litserve-monitoring" and thread is not threading.current_thread():
                thread.join(timeout=5)
        for server in uvicorn_workers.values():  # stop accepting, finish requests in flight
            server.terminate()
        for server in uvicorn_workers.values():
            stop_process(server, self.uvicorn_graceful_timeout + 5)
        with suppress(Exception):
            self._transport.close(send_sentinel=False)
        for worker in self.inference_workers:
            worker.terminate()
        for worker in self.inference_workers:
            stop_process(worker, 10)
        manager.shutdown()


def set_ignoring_errors(event: Any) -> None:
    with suppress(Exception):  # the manager may already be gone
        event.set()


def stop_process(process: Any, timeout: float) -> None:
    """Wait up to ``timeout`` for a process that was asked to stop, then kill it."""
    process.join(timeout=timeout)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


def api_parser():  # noqa: ANN201 - jsonargparse's ArgumentParser
    return inference_parser(__doc__.splitlines()[0])


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
        # Load once here, so that a bad path or model fails in one line before serving (and an ONNX export is cached
        # for the workers); the workers load their own.
        mode = load_predictor(parser, config).engine.mode
    shown = {**vars(config.serve), "api_key": "(set)" if settings.api_key else None}  # the key itself is never logged
    print(f"serving {API_PATH} on http://{settings.host}:{settings.port} ({mode}) with {shown}", flush=True)
    server = DrainingServer(SentimentAPI(argv, settings), accelerator="auto", workers_per_device=settings.workers,
                            timeout=settings.request_timeout,
                            middlewares=[(RequestBodyCheck, {"path": API_PATH, "max_bytes": max_body_bytes(settings)})],
                            drain_seconds=settings.drain_seconds)  # fmt: skip
    add_page(server.app, settings, API_PATH)
    handle_stop_signals(server.on_stop_signal)
    server.run(host=settings.host, port=settings.port, generate_client_file=False)
    if server.stop_signal is not None:
        print(f"stopped by {signal.Signals(server.stop_signal).name}: requests in flight answered, workers stopped",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
