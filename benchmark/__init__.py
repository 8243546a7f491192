"""Hyperparameter search and model comparison for fine-tuned text encoders.

The folders are the pipeline's stages, bottom to top; each imports only from the folders
below it and from the root modules (errors, files, schema, redaction), which import none:

    config    YAML -> typed, validated BenchmarkConfig; provenance of a run
    data      dataset sources, offline assets, splits, tokenization
    train     encoders, the training loop, metrics, precision, reference baselines
    tracking  where a trial's curves go (console, Neptune, MLflow, optuna-dashboard notes)
    search    Optuna: trial, study, pruning, sampling, storage, final evaluation
    report    leaderboards, statistics and the HTML report, rebuilt from the storage
    cli.py    the command line on top of them all
"""
