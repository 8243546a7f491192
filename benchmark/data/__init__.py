"""Datasets: sources (files, pip-installed wheels, the hub cache), splits, and tokenization
into fixed-length batches. Imports config and the root modules."""
