"""Optuna: sampling and running a trial, the per-dataset study, pruning, samplers, storage,
preflight checks and the final evaluation; Optuna's private API only in `optuna_internals`.
Imports tracking, train, data, config and the root modules."""
