"""Encoder sources, and building a classifier whose dropout is the sampled one.

Architectures name their dropout settings differently, so `DROPOUT_KEYS` maps each
model type to every config key that feeds an `nn.Dropout` in its sequence classifier.

A checkpoint is read best the way it was trained to present a sentence: transformers'
sequence classifiers read the [CLS] token's state, while sentence-transformers
checkpoints were trained on the mean of the real tokens' states (`pooling: mean`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from benchmark.config.spec import EncoderSpec
from benchmark.data import assets
from benchmark.errors import BenchmarkError

# sentence-transformers' pooling modes (keys of `1_Pooling/config.json`) we can build.
_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}

_BERT_LIKE = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

DROPOUT_KEYS: dict[str, tuple[str, ...]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "mpnet": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "albert": ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"),
    "distilbert": ("dropout", "attention_dropout", "seq_classif_dropout"),
    "deberta": ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout"),
    "deberta-v2": ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout"),
}


class EncoderSource(Protocol):
    def locate(self) -> str:
        """What `from_pretrained` takes: a local directory or a hub id."""


@dataclass(frozen=True)
class OfflineEncoder:
    asset_name: str
    encoder_name: str

    def locate(self) -> str:
        asset = assets.OFFLINE_ENCODERS.get(self.asset_name)
        if asset is None:
            raise BenchmarkError(
                f"encoders.{self.encoder_name}: no built-in offline encoder '{self.asset_name}'; "
                f"choose one of {', '.join(assets.OFFLINE_ENCODERS)}"
            )
        return str(assets.fetch(asset))


@dataclass(frozen=True)
class HubEncoder:
    id: str

    def locate(self) -> str:
        return self.id


@dataclass(frozen=True)
class LocalEncoder:
    path: Path
    encoder_name: str

    def locate(self) -> str:
        if not (self.path / "config.json").is_file():
            raise BenchmarkError(
                f"encoders.{self.encoder_name}.path: {self.path} is not a model directory "
                f"(no config.json)"
            )
        return str(self.path)


def encoder_source(name: str, spec: EncoderSpec) -> EncoderSource:
    """Where the config's encoder `name` comes from, by its `source`."""
    if spec.source == "hub":
        return HubEncoder(spec.id)
    if spec.source == "local":
        return LocalEncoder(spec.path, name)
    return OfflineEncoder(spec.id or name, name)


@dataclass(frozen=True)
class Encoder:
    """An encoder whose files were found and whose architecture we know how to tune."""

    name: str
    location: str
    model_type: str
    revision: str | None
    trust_remote_code: bool
    pooling: str  # "cls" or "mean"
    max_tokens: int | None  # the longest input its position embeddings hold; None: no limit

    @property
    def dropout_keys(self) -> tuple[str, ...]:
        return DROPOUT_KEYS[self.model_type]


def resolve(name: str, spec: EncoderSpec) -> Encoder:
    """Find the encoder and read its config: cheap, and done before any training."""
    from transformers import AutoConfig

    location = encoder_source(name, spec).locate()
    unreachable = hub_unreachable() if spec.source == "hub" else None
    try:
        # Where the hub is unreachable only the cache is read: the hub would be retried for
        # tens of seconds, with a warning per retry.
        config = AutoConfig.from_pretrained(
            location, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
            local_files_only=unreachable is not None,
        )
    except Exception as exc:  # hub, file and parse errors all mean "cannot use this encoder"
        if unreachable is not None:
            raise BenchmarkError(
                f"encoders.{name}: the Hugging Face hub is unreachable ({unreachable}) and '{location}' is not in "
                "the local Hugging Face cache; connect to the network, or give a local copy (source: local)"
            ) from None
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchmarkError(
            f"encoders.{name}: cannot load the config of '{location}' ({first_line}); "
            f"a hub id needs network access or a copy in the local Hugging Face cache"
        ) from None
    if unreachable is not None:
        from huggingface_hub import constants

        # HF_HUB_OFFLINE as if set before the start: the tokenizer and the weights, here and in
        # every trial, are read from the cache too, with no retries.
        constants.HF_HUB_OFFLINE = True
        print(f"encoders.{name}: the Hugging Face hub is unreachable ({unreachable}); reading the local "
              "Hugging Face cache only", file=sys.stderr, flush=True)
    if config.model_type not in DROPOUT_KEYS:
        raise BenchmarkError(
            f"encoders.{name}: architecture '{config.model_type}' has no dropout mapping; "
            f"supported: {', '.join(sorted(DROPOUT_KEYS))}"
        )
    encoder = Encoder(name, location, config.model_type, spec.revision, spec.trust_remote_code,
                      spec.pooling or declared_pooling(name, location), max_tokens(config))
    try:
        load_tokenizer(encoder)("a first check", "of the tokenizer")
    except Exception as exc:  # e.g. a SentencePiece model without its library
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        missing = _missing_tokenizer_files(Path(location), ["tokenizer_config.json", "tokenizer.json"])
        raise BenchmarkError(f"encoders.{name}: cannot load the tokenizer of '{location}' ({first_line})"
                             f"{f'; {missing}' if missing else ''}") from None
    return encoder


HUB_PROBE_S = 3.0  # a connection to the hub takes well under a second where it works


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, found within HUB_PROBE_S; None where it can,
    where HF_HUB_OFFLINE already has every load read the cache alone (failing at once), and
    behind a proxy, which a direct connection would not go through."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in (
            "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
    except OSError as error:
        return f"{host}:{port}: {error.strerror or str(error) or type(error).__name__}"
    return None


# Architectures whose position ids start after the padding id (transformers'
# `create_position_ids_from_input_ids`): the first padding_idx + 1 positions hold no token.
# Their embeddings take the padding id from the config, but MPNet's fix it at 1.
_PADDING_IDX = {"roberta": lambda config: config.pad_token_id, "xlm-roberta": lambda config: config.pad_token_id,
                "camembert": lambda config: config.pad_token_id, "mpnet": lambda config: 1}


def max_tokens(config) -> int | None:
    """The longest input (special tokens included) that the model's position embeddings
    can index; longer inputs fail inside the embedding layer. None where positions are
    relative only (DeBERTa without `position_biased_input`)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None or not getattr(config, "position_biased_input", True):
        return None
    padding_idx = _PADDING_IDX.get(config.model_type)
    if padding_idx is not None:
        positions -= padding_idx(config) + 1
    return positions


def declared_pooling(name: str, location: str) -> str:
    """The pooling a sentence-transformers checkpoint declares; [CLS] when it declares none.

    Only a local directory is read: a hub id's folder is not reachable without the cache.
    """
    path = Path(location) / "1_Pooling" / "config.json"
    if not path.is_file():
        return "cls"
    try:
        declared = json.loads(path.read_text())
        enabled = sorted(key for key, value in declared.items() if key.startswith("pooling_mode_") and value)
    except (OSError, ValueError, AttributeError) as exc:
        raise BenchmarkError(f"encoders.{name}: cannot read the pooling of {path} ({exc}); "
                             f"set the encoder's `pooling` (cls or mean)") from None
    if len(enabled) == 1 and enabled[0] in _POOLING_MODES:
        return _POOLING_MODES[enabled[0]]
    # Another head than the one the checkpoint was trained with would be a silent handicap.
    raise BenchmarkError(
        f"encoders.{name}: {path} declares the pooling {', '.join(enabled) or 'none'}; only "
        f"{' or '.join(_POOLING_MODES)} alone can be built: set the encoder's `pooling` (cls or mean)"
    )


# A model's own tokenizer leaves almost no token of text in a language it covers unknown
# (measured: none of the 126,607 tokens of 200 texts of each offline dataset, for both
# offline encoders); above half, the model would read mostly [UNK], train to chance and
# still finish "successfully".
UNKNOWN_TOKEN_LIMIT = 0.5
# Texts per dataset: thousands of tokens, which tell "almost none" from "most" whatever the
# draw, in a fraction of a second (0.5 s for 200 BBC articles, the longest texts).
VOCABULARY_SAMPLE = 200


def unknown_token_fraction(tokenizer, texts: list[str]) -> float:
    """The share of the texts' tokens that are the unknown token. A text that yields no
    token at all (what an empty byte-level vocabulary does) counts as one unknown token."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    unknown = 0 if tokenizer.unk_token_id is None else sum(ids.count(tokenizer.unk_token_id) for ids in encoded)
    dropped = sum(1 for ids in encoded if not ids)
    total = sum(len(ids) for ids in encoded) + dropped
    return (unknown + dropped) / total if total else 0.0


def check_vocabulary(encoder: Encoder, tokenizer, dataset_name: str, texts: list[str]) -> None:
    """Refuse a tokenizer that does not know the dataset's words.

    A local folder without tokenizer files still loads: transformers falls back to the
    tokenizer class named by config.json and builds it with an empty vocabulary, so every
    word becomes [UNK] (or, byte-level, nothing).
    """
    fraction = unknown_token_fraction(tokenizer, texts)
    if fraction <= UNKNOWN_TOKEN_LIMIT:
        return
    folder = Path(encoder.location)
    files = ["tokenizer_config.json", *dict.fromkeys(getattr(tokenizer, "vocab_files_names", {}).values())]
    present = [file for file in files if (folder / file).is_file()]
    where = f" in {folder} ({', '.join(present)})" if present else ""
    hint = (_missing_tokenizer_files(folder, files, f", so transformers built an empty {type(tokenizer).__name__} "
                                                    f"from config.json")
            or f"is the tokenizer{where} the model's own, and does its vocabulary cover the dataset's language?")
    raise BenchmarkError(
        f"encoders.{encoder.name}: {fraction:.0%} of the tokens of {len(texts)} sample texts of dataset "
        f"{dataset_name} map to its tokenizer's unknown token{f' {tokenizer.unk_token}' if tokenizer.unk_token else ''} "
        f"or to no token at all, so the model would train on next to nothing; {hint}"
    )


def _missing_tokenizer_files(folder: Path, files: list[str], consequence: str = "") -> str | None:
    """What to do when a local model folder has none of the files a tokenizer is read from."""
    if not folder.is_dir() or any((folder / file).is_file() for file in files):
        return None
    return (f"{folder} has none of the tokenizer files {', '.join(files)}{consequence}: save the model's "
            f"tokenizer into the folder (tokenizer.save_pretrained)")


def load_tokenizer(encoder: Encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        encoder.location, revision=encoder.revision, trust_remote_code=encoder.trust_remote_code
    )


def load_classifier(encoder: Encoder, label_names: tuple[str, ...], dropout: float):
    """A sequence classifier with a fresh head, the encoder's pooling, and every dropout set to `dropout`,
    in fp32 (see `pretrained_weights`)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(
        encoder.location,
        revision=encoder.revision,
        trust_remote_code=encoder.trust_remote_code,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={label: index for index, label in enumerate(label_names)},
        **{key: dropout for key in encoder.dropout_keys},
    )
    mean = encoder.pooling == "mean"
    model_class, weights = pretrained_weights(encoder, AutoModel if mean else AutoModelForSequenceClassification)
    # Copies: training must not change the weights that later trials start from. What the
    # weights do not hold (the fresh head) transformers draws from the global generator.
    model = model_class.from_pretrained(None, config=config, state_dict={key: tensor.clone() for key, tensor in
                                                                         weights.items()}, dtype=torch.float32)
    return MeanPoolingClassifier(model, dropout) if mean else model


# Per encoder: the class its checkpoint loads as, and its pretrained weights in fp32 host
# memory, read from disk once per process; every later model of the encoder is built from them.
_PRETRAINED: dict[tuple[Encoder, type], tuple[type, dict[str, torch.Tensor]]] = {}


def pretrained_weights(encoder: Encoder, auto_class: type) -> tuple[type, dict[str, torch.Tensor]]:
    """The checkpoint's weights as `auto_class` loads them, always in fp32: transformers would
    otherwise keep the dtype a checkpoint was saved in, and an fp16 or bf16 copy would train in
    it (or fail in a LayerNorm with "mixed dtype") while the trial says fp32. The compute
    precision is autocast's alone (see train/precision.py)."""
    key = (encoder, auto_class)
    if key not in _PRETRAINED:
        # The head this load draws for itself must not move the trial's seeded generator, or
        # a trial's model would depend on whether the weights were cached before it.
        with torch.random.fork_rng(devices=[]):
            model, loading = auto_class.from_pretrained(
                encoder.location, revision=encoder.revision, trust_remote_code=encoder.trust_remote_code,
                dtype=torch.float32, output_loading_info=True)
        missing = set(loading["missing_keys"])
        # Cloned: the loaded tensors may map the checkpoint file, which must not be needed again.
        _PRETRAINED[key] = (type(model), {name: tensor.detach().clone() for name, tensor in
                                          model.state_dict().items() if name not in missing})
    return _PRETRAINED[key]


class MeanPoolingClassifier(torch.nn.Module):
    """A backbone's last hidden states averaged over the real (unmasked) tokens, then
    dropout and a fresh linear head: a drop-in for transformers' sequence classifiers."""

    def __init__(self, backbone, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(self.config.hidden_size, self.config.num_labels)
        # Drawn as transformers draws its heads' linear layers, so a head's start is no confound.
        torch.nn.init.normal_(self.classifier.weight, std=getattr(self.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        # Pooled in fp32: bf16's 8-bit mantissa is coarse for a sum over dozens of tokens.
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
