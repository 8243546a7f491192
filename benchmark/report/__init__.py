"""Leaderboards, statistics, the cross-dataset ranking and the HTML report, rebuilt from the
Optuna storage alone. Imports config, train's metrics and baselines and the root modules, never torch."""
