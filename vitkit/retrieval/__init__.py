"""Retrieval: the on-disk vector index, keeping it up to date with folders, and search."""
