"""Corpora to batches: readers, records, the training alias table, tokenizers, collation."""
