"""Running: the one runner, torchrun and --shard, progress on stderr, benchmarking."""
