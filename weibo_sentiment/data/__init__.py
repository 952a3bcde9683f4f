"""Posts from files to batches, one concern per module, in the order a post flows through them:
``readers`` (files to posts), ``tokenizer`` (posts to token ids), ``batching`` (token ids to padded batches) and
``datamodule`` (Lightning's view of all three for fit, validate, test and predict)."""
