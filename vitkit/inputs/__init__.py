"""Inputs: discovery (files, folders, globs, lists), safe decoding, and the batched dataloader."""
