"""The HTTP sentiment API, served by LitServe (request batching, worker processes, a health endpoint).

    python -m weibo_sentiment.serve --config configs/quickstart.yaml --ckpt_path last --serve.port 8000
    curl -s localhost:8000/api/sentiment -H 'Content-Type: application/json' -d '{"text": "好开心[哈哈]"}'

``POST /api/sentiment`` takes ``{"text": "..."}`` or ``{"texts": [...]}``; ``GET /health`` answers ``ok`` once the
model is loaded. Requests that arrive together (up to ``max_batch_size`` of them, waiting at most
``batch_timeout`` seconds) share one forward pass. Settings come from the config's ``serve:`` section, then flags
(``--serve.port 8001``); the model from its ``model:`` and ``data:`` sections, as for ``main.py``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from weibo_sentiment.config import inference_parser
from weibo_sentiment.settings import ServeSettings
from weibo_sentiment.errors import exit_on_user_error
from weibo_sentiment.predictor import SentimentPredictor, load_predictor

API_PATH = "/api/sentiment"


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


class SentimentAPI(ls.LitAPI):
    """Validates requests, labels all texts of a batch of requests in one forward pass, and shapes the answers."""

    def __init__(self, argv: list[str], settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=API_PATH)
        self.argv = argv  # each worker process parses the same arguments and loads its own model
        self.settings = settings

    def setup(self, device: str) -> None:
        parser = api_parser()
        self.predictor: SentimentPredictor = load_predictor(parser, parser.parse_args(self.argv), device)

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


class RejectNonJson(BaseHTTPMiddleware):
    """LitServe answers a body that is not JSON with a 500; it is the client's mistake: 400, with a reason."""

    async def dispatch(self, request, call_next):  # noqa: ANN001, ANN201 - Starlette's middleware signature
        if request.method == "POST" and request.url.path == API_PATH:
            try:
                json.loads(await request.body())
            except ValueError:
                return JSONResponse({"detail": "the request body is not JSON"}, status_code=400)
        return await call_next(request)


def api_parser():  # noqa: ANN201 - jsonargparse's ArgumentParser
    return inference_parser(__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = api_parser()
    with exit_on_user_error():
        config = parser.parse_args(argv)
        settings = ServeSettings(**vars(config.serve))
        # Load once here, so that a bad path or model fails in one line before serving (and an ONNX export is cached
        # for the workers); the workers load their own.
        mode = load_predictor(parser, config).engine.mode
    print(f"serving {API_PATH} on http://{settings.host}:{settings.port} ({mode}) with {vars(config.serve)}", flush=True)
    server = ls.LitServer(SentimentAPI(argv, settings), accelerator="auto", workers_per_device=settings.workers,
                          middlewares=[RejectNonJson])  # fmt: skip
    server.run(host=settings.host, port=settings.port, generate_client_file=False)


if __name__ == "__main__":
    main()
