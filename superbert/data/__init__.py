"""Pre-training data: the shard format and its dataset (`shards.py`), the masking collator
(`masking.py`), and corpus -> shards generation (`config.py`, `generate.py`: generate_data.py)."""
