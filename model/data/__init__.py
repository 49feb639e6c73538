"""Training data: what a run reads and its random windows (``corpus``), the prepared shard folder
(``shards``), and ``gpt-prepare`` (``prepare``, ``cli``) with its sources and parallel encoders."""
