"""The HTTP API and the analyst's page: ``python -m weibo_sentiment.serve`` (``weibo-sentiment-serve``); see
``weibo_sentiment.serving.api``.

    python -m weibo_sentiment.serve --config configs/quickstart.yaml --ckpt_path last --serve.port 8000
"""

from weibo_sentiment.serving.api import main

if __name__ == "__main__":
    main()
