"""Outputs: records, writers (table|json|jsonl|csv), task files under --out-dir, images, HTML sheets."""
