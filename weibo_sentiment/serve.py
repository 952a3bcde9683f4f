"""The HTTP sentiment API, served by LitServe (request batching, worker processes, a health endpoint).

    python -m weibo_sentiment.serve --config configs/quickstart.yaml --ckpt_path last.ckpt --port 8000
    curl -s localhost:8000/api/sentiment -H 'Content-Type: application/json' -d '{"text": "好开心[哈哈]"}'

``POST /api/sentiment`` takes ``{"text": "..."}`` or ``{"texts": [...]}``; ``GET /health`` answers ``ok`` once the
model is loaded. Requests that arrive together (up to ``max_batch_size`` of them, waiting at most
``batch_timeout`` seconds) share one forward pass. Settings come from the config's ``serve:`` section, then flags.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from weibo_sentiment.errors import UserError, exit_on_user_error
from weibo_sentiment.inference import SentimentPredictor, add_model_arguments, predictor_from_arguments, read_config

API_PATH = "/api/sentiment"


@dataclass
class ServeSettings:
    """The HTTP API's settings (the ``serve:`` section of a config)."""

    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0 to serve other machines
    port: int = 8000
    max_batch_size: int = 32  # requests answered by one forward pass at most
    batch_timeout: float = 0.01  # seconds a request may wait for others to share its forward pass
    workers: int = 1  # model worker processes
    max_texts: int = 256  # texts per request at most
    max_chars: int = 10_000  # characters per text at most (longer: rejected; the model reads 128 tokens)


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

    def __init__(self, model_args: argparse.Namespace, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout, api_path=API_PATH)
        self.model_args = model_args
        self.settings = settings

    def setup(self, device: str) -> None:
        self.predictor: SentimentPredictor = predictor_from_arguments(self.model_args, device)

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


def settings_from(config: dict[str, Any], args: argparse.Namespace) -> ServeSettings:
    section = config.get("serve") or {}
    known = {field.name for field in fields(ServeSettings)}
    if not isinstance(section, dict) or set(section) - known:
        unknown = ", ".join(sorted(set(section) - known)) if isinstance(section, dict) else "not a mapping"
        raise UserError(f"{args.config}: serve section: {unknown} (known: {', '.join(sorted(known))})")
    settings = ServeSettings(**section)
    for field in fields(ServeSettings):
        if getattr(args, field.name) is not None:
            setattr(settings, field.name, getattr(args, field.name))
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    for field in fields(ServeSettings):
        parser.add_argument(f"--{field.name}", type=type(field.default),
                            help=f"default: {field.default} (or the config's serve.{field.name})")  # fmt: skip
    args = parser.parse_args(argv)
    with exit_on_user_error():
        settings = settings_from(read_config(args.config), args)
        predictor_from_arguments(args)  # load once here, so a bad path or model fails with one line before serving
    print(f"serving {API_PATH} on http://{settings.host}:{settings.port} with {asdict(settings)}", flush=True)
    server = ls.LitServer(SentimentAPI(args, settings), accelerator="auto", workers_per_device=settings.workers,
                          middlewares=[RejectNonJson])  # fmt: skip
    server.run(host=settings.host, port=settings.port, generate_client_file=False)


if __name__ == "__main__":
    main()
