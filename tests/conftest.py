"""Fixtures: tiny random-initialized encoders of several architectures, a tokenizer
trained here on the test texts, and small learnable datasets. No network anywhere."""

from __future__ import annotations

import os

# The tests reach no server but their own on loopback: no hub look-ups, no telemetry.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")

from pathlib import Path

import pytest

from benchmark.search.preflight import quiet_libraries
from tests.helpers import ARCHITECTURES, FILLER, make_texts

# Architectures whose tokenizer hands the model segment ids, as their real ones do.
SEGMENT_IDS = {"bert", "albert", "electra", "deberta-v2"}


def train_tokenizer(directory: Path, model_input_names: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = list(make_texts(300, seed=1)["text"]) + [" ".join(FILLER)]
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_input_names=model_input_names,
    )
    fast.save_pretrained(directory)
    return fast


def tiny_config(model_type: str, vocab_size: int, pad_token_id: int):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, max_position_embeddings=160)
    if model_type == "distilbert":
        return AutoConfig.for_model("distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if model_type == "albert":
        sizes["embedding_size"] = 16
    if model_type == "electra":
        sizes["embedding_size"] = 32
    if model_type in ("roberta", "bert", "electra", "albert"):
        sizes["type_vocab_size"] = 2
    return AutoConfig.for_model(model_type, **sizes, **common)


def build_tiny_encoder(directory: Path, model_type: str) -> Path:
    """A random-initialized `model_type` encoder saved as a local model directory."""
    import torch
    from transformers import AutoModel

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model_type in SEGMENT_IDS else [])
    tokenizer = train_tokenizer(directory, names)
    config = tiny_config(model_type, len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    quiet_libraries()


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    """Model type -> local directory of a tiny encoder with its tokenizer."""
    root = tmp_path_factory.mktemp("encoders")
    return {model_type: build_tiny_encoder(root / model_type, model_type) for model_type in ARCHITECTURES}


@pytest.fixture(scope="session")
def half_saved(tiny_encoders, tmp_path_factory) -> dict:
    """torch dtype -> the tiny BERT saved in it (fp16, bf16), as a user's local copy might be."""
    import shutil

    import torch
    from transformers import AutoModel

    copies = {}
    for dtype in (torch.float16, torch.bfloat16):
        directory = tmp_path_factory.mktemp(str(dtype).removeprefix("torch."))
        shutil.copytree(tiny_encoders["bert"], directory, dirs_exist_ok=True)
        AutoModel.from_pretrained(directory).to(dtype).save_pretrained(directory)
        copies[dtype] = directory
    return copies


@pytest.fixture()
def topics_csv(tmp_path) -> Path:
    path = tmp_path / "topics.csv"
    make_texts(150, seed=2).to_csv(path, index=False)
    return path
