"""What one dataset's study carries from its checks (search/preflight.py) to its trials, its
final evaluation and its warm start."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.config.spec import BenchmarkConfig
from benchmark.data.dataset import TextClassificationData
from benchmark.data.tokenization import TokenizationCache
from benchmark.tracking.base import Tracker
from benchmark.train.encoders import Encoder
from benchmark.train.precision import EncoderPrecision


@dataclass
class DatasetStudy:
    """Everything one dataset's study needs, checked before its first trial."""

    study_name: str
    config: BenchmarkConfig
    data: TextClassificationData
    metric: str
    encoders: dict[str, Encoder]
    tokenization: TokenizationCache
    tracker: Tracker
    device: torch.device
    # Per encoder of this run, the precision its trials train in: the study's stored choice
    # (see `preflight.record_precisions`).
    precisions: dict[str, EncoderPrecision]
    # The `encoder` parameter's choices in the study: all the encoders it may ever compare,
    # fixed when it was created (see `preflight.encoder_choices`); `encoders` are this run's.
    encoder_choices: tuple[str, ...]
