"""Fine-tune a Chinese GPT-2 with LoRA on Weibo sentiment, then label posts.

    python main.py fit --config configs/quickstart.yaml
    python main.py predict --config configs/quickstart.yaml --ckpt_path last \
        --data.predict_path data/sample/posts.csv --predict_writer.output_path predictions.csv
"""

from weibo_sentiment.cli import main

if __name__ == "__main__":
    main()
