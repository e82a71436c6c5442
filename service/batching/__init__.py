"""Dynamic batching per model: the tile queue, the batcher and its model thread, admission, the
traced model calls, warm-up and the registry of served models."""
