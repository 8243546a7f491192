"""Encoders: resolving sources, and classifiers whose every dropout is the sampled one."""

from __future__ import annotations

import time

import pytest
import torch

from benchmark.config import EncoderSpec
from benchmark.encoders import DROPOUT_KEYS, Encoder, HubEncoder, load_classifier, resolve
from benchmark.errors import BenchmarkError
from tests.conftest import ARCHITECTURES

LABEL_NAMES = ("politics", "sports", "tech")


def local(path) -> EncoderSpec:
    return EncoderSpec(source="local", path=path)


def dropout_values(model: torch.nn.Module) -> dict[str, float]:
    """Every nn.Dropout's p, plus any float attribute named like a dropout probability."""
    values = {name: module.p for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)}
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if "dropout" in attribute.lower() and isinstance(value, float):
                values[f"{name}.{attribute}"] = value
    return values


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_resolve_local_encoder(tiny_encoders, model_type):
    encoder = resolve(f"my-{model_type}", local(tiny_encoders[model_type]))
    assert isinstance(encoder, Encoder)
    assert encoder.name == f"my-{model_type}"
    assert encoder.model_type == model_type
    assert encoder.location == str(tiny_encoders[model_type])
    assert encoder.dropout_keys == DROPOUT_KEYS[model_type]


@pytest.mark.parametrize("dropout", [0.0, 0.27])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_dropout_is_the_sampled_value(tiny_encoders, model_type, dropout):
    encoder = resolve(model_type, local(tiny_encoders[model_type]))
    model = load_classifier(encoder, LABEL_NAMES, dropout)

    values = dropout_values(model)
    modules = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)]
    assert len(modules) >= 3, f"{model_type}: expected embedding, layer and head dropouts, found {modules}"
    wrong = {name: p for name, p in values.items() if p != pytest.approx(dropout)}
    assert not wrong, f"{model_type}: dropouts not set to {dropout}: {wrong}"
    for key in encoder.dropout_keys:  # what the config says too, where the class keeps the key
        if hasattr(model.config, key) and getattr(model.config, key) is not None:
            assert getattr(model.config, key) == pytest.approx(dropout), key


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_classifier_head_has_the_labels(tiny_encoders, model_type):
    encoder = resolve(model_type, local(tiny_encoders[model_type]))
    model = load_classifier(encoder, LABEL_NAMES, 0.1)
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "politics", 1: "sports", 2: "tech"}
    assert model.config.label2id == {"politics": 0, "sports": 1, "tech": 2}
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 10, 11, 3]]), attention_mask=torch.ones(1, 4, dtype=torch.long)).logits
    assert logits.shape == (1, 3)


def test_two_label_head(tiny_encoders):
    encoder = resolve("bert", local(tiny_encoders["bert"]))
    model = load_classifier(encoder, ("neg", "pos"), 0.05)
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_local_directory_without_config(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"")
    with pytest.raises(BenchmarkError) as caught:
        resolve("my-encoder", local(empty))
    message = str(caught.value)
    assert "encoders.my-encoder.path" in message and str(empty) in message and "config.json" in message


def test_local_directory_that_does_not_exist(tmp_path):
    with pytest.raises(BenchmarkError, match=r"encoders\.ghost\.path"):
        resolve("ghost", local(tmp_path / "nowhere"))


def test_local_directory_with_broken_config(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json")
    with pytest.raises(BenchmarkError) as caught:
        resolve("broken-one", local(broken))
    assert "encoders.broken-one" in str(caught.value) and str(broken) in str(caught.value)


def test_unknown_offline_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODER_BENCHMARK_CACHE", str(tmp_path))  # nothing may be fetched anyway
    with pytest.raises(BenchmarkError) as caught:
        resolve("mystery", EncoderSpec(source="offline", id="no-such-encoder"))
    message = str(caught.value)
    assert "encoders.mystery" in message and "no-such-encoder" in message
    assert "minilm-l6" in message and "mpnet-base" in message  # the ones there are
    assert not (tmp_path / "assets").exists()


def test_offline_name_defaults_to_the_encoder_key():
    with pytest.raises(BenchmarkError, match="'my-own-model'"):
        resolve("my-own-model", EncoderSpec(source="offline"))


def test_architecture_without_dropout_mapping(tmp_path):
    from transformers import GPT2Config

    directory = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50).save_pretrained(directory)
    with pytest.raises(BenchmarkError) as caught:
        resolve("tiny-gpt", local(directory))
    message = str(caught.value)
    assert "encoders.tiny-gpt" in message
    assert "'gpt2'" in message and "dropout" in message
    assert "bert" in message  # lists the supported ones


def test_hub_encoder_that_does_not_exist_fails_fast_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub library reads the variable at import time, which has happened already
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert HubEncoder("nobody-here/no-such-model-xyz").locate() == "nobody-here/no-such-model-xyz"
    started = time.monotonic()
    with pytest.raises(BenchmarkError) as caught:
        resolve("ghost", EncoderSpec(source="hub", id="nobody-here/no-such-model-xyz"))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "encoders.ghost" in message and "nobody-here/no-such-model-xyz" in message
    assert "local Hugging Face cache" in message
