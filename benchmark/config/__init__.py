"""The edge: a YAML search space becomes a validated, typed BenchmarkConfig (`spec`), and a
run's provenance (config hash, package versions). Imports only the root modules."""
