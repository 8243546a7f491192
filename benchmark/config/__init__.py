"""The edge: a YAML search space becomes a validated, typed BenchmarkConfig (`spec`), built
with the hyperparameters declared once in `hyperparameters`, and a run's provenance (config
hash, package versions). Imports only the root modules."""
