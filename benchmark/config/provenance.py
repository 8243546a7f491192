"""What a study was trained from and with, kept as study user attributes so that a report
rebuilt later, on another machine, names what trained rather than what renders."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version

from benchmark.config.spec import BenchmarkConfig
from benchmark.schema import COMPARISON_ATTR, CONFIG_FILE_ATTR, CONFIG_SHA256_ATTR, VERSIONS_ATTR

PACKAGES = ("torch", "transformers", "optuna")
UNKNOWN = "unknown"  # what a study stored before these attributes existed shows


def package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = UNKNOWN
    return versions


def study_attrs(config: BenchmarkConfig) -> dict[str, object]:
    """The attributes `study.open_study` stores; a topped-up study keeps the latest run's."""
    source = config.source_file
    return {
        CONFIG_FILE_ATTR: source.name if source is not None else UNKNOWN,
        CONFIG_SHA256_ATTR: hashlib.sha256(source.read_bytes()).hexdigest() if source is not None else UNKNOWN,
        COMPARISON_ATTR: config.comparison,
        VERSIONS_ATTR: package_versions(),
    }
