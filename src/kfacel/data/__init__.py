"""Corpora to tasks: readers, records, candidate generation, task files, batches."""
