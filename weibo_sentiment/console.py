"""An interactive console: type a post, read its sentiment and confidence; the model is loaded once.

    python -m weibo_sentiment.console --config configs/quickstart.yaml --ckpt_path last
    echo 好开心[哈哈] | python -m weibo_sentiment.console --config configs/quickstart.yaml --ckpt_path last

One post per line; ``q``, ``quit`` or the end of input leaves (exit 0); Ctrl-C or SIGTERM stops it (exit 130 or
143). Works on a terminal and on piped input.
"""

from __future__ import annotations

import sys

from weibo_sentiment.config_parser import inference_parser
from weibo_sentiment.errors import exit_on_user_error
from weibo_sentiment.inference.analyzer import SentimentAnalyzer, SentimentRow
from weibo_sentiment.stopping import exit_when_stopped

QUIT = {"q", "quit"}


def describe(row: SentimentRow) -> str:
    """One line for one post: sentiment, confidence, and the emoticon tags it may rest on."""
    line = f"{row.sentiment}  confidence {row.confidence:.2f}"
    if row.emoticons:
        line += f"  (emoticons: {row.emoticons})"
    return line + ("  (truncated to the model's window)" if row.truncated else "")


def main(argv: list[str] | None = None) -> None:
    parser = inference_parser(__doc__.splitlines()[0])
    with exit_when_stopped():  # Ctrl-C or SIGTERM: one line, exit 130 or 143, no traceback
        with exit_on_user_error():
            analyzer = SentimentAnalyzer.from_config(parser.parse_args(argv))
        print(f"Labelling with {analyzer.source.describe()} ({analyzer.mode})", file=sys.stderr, flush=True)
        interactive = sys.stdin.isatty()
        if interactive:
            print("Type a Weibo post and press Enter (q to quit).")
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:  # end of input
                break
            post = line.strip()
            if post.lower() in QUIT:
                break
            if not post:
                print("empty post: type some text, or q to quit", flush=True)
                continue
            print(describe(analyzer.predict([post])[0]), flush=True)


if __name__ == "__main__":
    main()
