"""Encoders: resolving sources, and classifiers whose every dropout is the sampled one."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from benchmark.config.spec import EncoderSpec
from benchmark.errors import BenchmarkError
from benchmark.train.encoders import (
    DROPOUT_KEYS,
    Encoder,
    HubEncoder,
    MeanPoolingClassifier,
    check_vocabulary,
    load_classifier,
    load_tokenizer,
    resolve,
    unknown_token_fraction,
)
from tests.helpers import ARCHITECTURES, make_texts, run_cli, write_config

LABEL_NAMES = ("politics", "sports", "tech")


def local(path, pooling=None) -> EncoderSpec:
    return EncoderSpec(source="local", path=path, pooling=pooling)


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


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("dropout", [0.0, 0.27])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_dropout_is_the_sampled_value(tiny_encoders, model_type, dropout, pooling):
    encoder = resolve(model_type, local(tiny_encoders[model_type], pooling))
    model = load_classifier(encoder, LABEL_NAMES, dropout)

    values = dropout_values(model)
    modules = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)]
    assert len(modules) >= 3, f"{model_type}: expected embedding, layer and head dropouts, found {modules}"
    wrong = {name: p for name, p in values.items() if p != pytest.approx(dropout)}
    assert not wrong, f"{model_type}: dropouts not set to {dropout}: {wrong}"
    for key in encoder.dropout_keys:  # what the config says too, where the class keeps the key
        if hasattr(model.config, key) and getattr(model.config, key) is not None:
            assert getattr(model.config, key) == pytest.approx(dropout), key


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_classifier_head_has_the_labels(tiny_encoders, model_type, pooling):
    encoder = resolve(model_type, local(tiny_encoders[model_type], pooling))
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


# --- pooling -------------------------------------------------------------------


def with_pooling_config(tmp_path, tiny_encoders, modes: dict | None):
    """A copy of the tiny BERT, with `modes` as its sentence-transformers pooling config."""
    directory = shutil.copytree(tiny_encoders["bert"], tmp_path / "st-bert")
    if modes is not None:
        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
             "pooling_mode_max_tokens": False, **modes}))
    return directory


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_states(tiny_encoders, model_type):
    encoder = resolve(model_type, local(tiny_encoders[model_type], "mean"))
    assert encoder.pooling == "mean"
    model = load_classifier(encoder, LABEL_NAMES, 0.1).eval()
    assert isinstance(model, MeanPoolingClassifier)
    pad = model.config.pad_token_id
    # the second row is 3 real tokens and 2 of padding
    input_ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, pad, pad]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        expected_mean = torch.stack([hidden[0].sum(0) / 5, hidden[1, :3].sum(0) / 3])
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        alone = model(input_ids=input_ids[1:, :3], attention_mask=attention_mask[1:, :3]).logits
        head = model.classifier
        model.classifier = torch.nn.Identity()
        pooled = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert not torch.allclose(hidden[1, 3], torch.zeros_like(hidden[1, 3]))  # padding has states to leave out
    torch.testing.assert_close(pooled, expected_mean)
    torch.testing.assert_close(logits, expected_mean @ head.weight.T + head.bias)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-4)  # padding changes nothing
    assert logits.shape == (2, 3)


def test_mean_pooling_head_is_seeded_and_gives_a_loss(tiny_encoders):
    encoder = resolve("bert", local(tiny_encoders["bert"], "mean"))
    heads = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        heads.append(load_classifier(encoder, LABEL_NAMES, 0.0).classifier.weight.detach())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
    assert heads[0].std().item() == pytest.approx(0.02, rel=0.3)  # drawn like transformers' own head
    model = load_classifier(encoder, LABEL_NAMES, 0.0).eval()
    inputs = dict(input_ids=torch.tensor([[2, 10, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    output = model(**inputs, labels=torch.tensor([2]))  # as transformers' Trainer calls it
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, torch.tensor([2])))


@pytest.mark.parametrize(("modes", "expected"), [
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_cls_token": True}, "cls"),
    (None, "cls"),  # no 1_Pooling/config.json: transformers' own [CLS] head
])
def test_pooling_defaults_to_what_the_checkpoint_declares(tmp_path, tiny_encoders, modes, expected):
    encoder = resolve("st", local(with_pooling_config(tmp_path, tiny_encoders, modes)))
    assert encoder.pooling == expected
    model = load_classifier(encoder, LABEL_NAMES, 0.1)
    assert isinstance(model, MeanPoolingClassifier) == (expected == "mean")


def test_explicit_pooling_overrides_the_declared_one(tmp_path, tiny_encoders):
    directory = with_pooling_config(tmp_path, tiny_encoders, {"pooling_mode_mean_tokens": True})
    encoder = resolve("st-cls", local(directory, "cls"))
    assert encoder.pooling == "cls"
    assert not isinstance(load_classifier(encoder, LABEL_NAMES, 0.1), MeanPoolingClassifier)


def test_unsupported_declared_pooling_is_an_error_unless_set(tmp_path, tiny_encoders):
    directory = with_pooling_config(tmp_path, tiny_encoders, {"pooling_mode_max_tokens": True})
    with pytest.raises(BenchmarkError) as caught:
        resolve("st-max", local(directory))
    message = str(caught.value)
    assert "encoders.st-max" in message and "1_Pooling" in message and "pooling_mode_max_tokens" in message
    assert "`pooling`" in message
    assert resolve("st-max", local(directory, "mean")).pooling == "mean"


def test_pooling_must_be_cls_or_mean(tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        EncoderSpec(source="local", path=tmp_path, pooling="max")


# --- the tokenizer knows the dataset's words ---------------------------------------------


def _without_tokenizer_files(tiny_encoders, model_type, tmp_path):
    bare = tmp_path / f"bare-{model_type}"
    bare.mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(tiny_encoders[model_type] / file, bare / file)
    return bare


@pytest.mark.parametrize(("model_type", "files", "tokenizer_class", "unknown"), [
    ("bert", "tokenizer_config.json, vocab.txt, tokenizer.json", "BertTokenizer", " [UNK]"),
    # byte-level BPE with an empty vocabulary turns every text into no token at all
    ("roberta", "tokenizer_config.json, vocab.json, merges.txt, tokenizer.json", "RobertaTokenizer", " <unk>"),
])
def test_folder_without_tokenizer_files_is_refused_naming_the_missing_files(tiny_encoders, tmp_path, model_type,
                                                                             files, tokenizer_class, unknown):
    bare = _without_tokenizer_files(tiny_encoders, model_type, tmp_path)
    encoder = resolve("bare", local(bare))  # transformers falls back to an empty tokenizer: no error yet
    texts = list(make_texts(200, seed=0)["text"])
    with pytest.raises(BenchmarkError) as caught:
        check_vocabulary(encoder, load_tokenizer(encoder), "topics", texts)
    assert str(caught.value) == (
        f"encoders.bare: 100% of the tokens of 200 sample texts of dataset topics map to its tokenizer's unknown "
        f"token{unknown} or to no token at all, so the model would train on next to nothing; {bare} has none of "
        f"the tokenizer files {files}, so transformers built an empty {tokenizer_class} from config.json: save "
        f"the model's tokenizer into the folder (tokenizer.save_pretrained)")


def test_a_vocabulary_that_lacks_the_texts_words_is_refused(tiny_encoders):
    encoder = resolve("bert", local(tiny_encoders["bert"]))
    greek = ["καλημέρα κόσμε", "goal ωμέγα match"]  # tokens: [UNK] [UNK], goal [UNK] match: 3 of 5
    with pytest.raises(BenchmarkError) as caught:
        check_vocabulary(encoder, load_tokenizer(encoder), "greek", greek)
    message = str(caught.value)
    assert message.startswith("encoders.bert: 60% of the tokens of 2 sample texts of dataset greek")
    assert (f"is the tokenizer in {tiny_encoders['bert']} (tokenizer_config.json, tokenizer.json) the model's own, "
            f"and does its vocabulary cover the dataset's language?") in message


def test_unknown_token_fraction_counts_unknown_tokens_among_all(tiny_encoders):
    tokenizer = load_tokenizer(resolve("bert", local(tiny_encoders["bert"])))
    # goal match | goal [UNK]: one of four; exactly half is still accepted
    assert unknown_token_fraction(tokenizer, ["goal match", "goal ωμέγα"]) == 1 / 4
    check_vocabulary(resolve("bert", local(tiny_encoders["bert"])), tokenizer, "half", ["goal ωμέγα"])
    assert unknown_token_fraction(tokenizer, list(make_texts(200, seed=0)["text"])) == 0.0


def test_a_run_with_a_folder_without_tokenizer_files_exits_2_before_training(tiny_encoders, tmp_path, capsys):

    bare = _without_tokenizer_files(tiny_encoders, "bert", tmp_path)
    config = write_config(tmp_path, {"bert": bare}, encoders=("bert",))
    results = tmp_path / "results"
    assert run_cli("--study", "--config", str(config), "--results-dir", str(results), "--datasets", "topics") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [line for line in err.splitlines() if "encoders.bert: 100% of the tokens" in line]
    assert len(errors) == 1 and "precision:" not in err and "Traceback" not in err


def test_a_tokenizer_that_fails_to_load_from_a_bare_folder_names_the_missing_files(tiny_encoders, tmp_path):
    # mpnet's fallback tokenizer cannot even be built without a vocabulary
    bare = _without_tokenizer_files(tiny_encoders, "mpnet", tmp_path)
    with pytest.raises(BenchmarkError) as caught:
        resolve("bare", local(bare))
    assert str(caught.value).startswith(f"encoders.bare: cannot load the tokenizer of '{bare}' (")
    assert str(caught.value).endswith(f"); {bare} has none of the tokenizer files tokenizer_config.json, "
                                      f"tokenizer.json: save the model's tokenizer into the folder "
                                      f"(tokenizer.save_pretrained)")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_loads_in_fp32(half_saved, dtype, pooling):
    from transformers import AutoModel

    encoder = resolve("half", local(half_saved[dtype], pooling))
    model = load_classifier(encoder, LABEL_NAMES, 0.1)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    saved = AutoModel.from_pretrained(half_saved[dtype]).state_dict()
    backbone = (model.backbone if pooling == "mean" else model.bert).state_dict()
    name = "embeddings.word_embeddings.weight"
    assert saved[name].dtype == dtype and torch.equal(backbone[name], saved[name].float())


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pretrained_weights_stay_in_host_memory_and_every_model_gets_its_own_copy(tiny_encoders, tmp_path, pooling):
    directory = tmp_path / "bert"
    shutil.copytree(tiny_encoders["bert"], directory)
    encoder = resolve("bert", local(directory, pooling))
    torch.manual_seed(3)
    first = load_classifier(encoder, LABEL_NAMES, 0.1)
    loaded = {name: parameter.detach().clone() for name, parameter in first.named_parameters()}
    (directory / "model.safetensors").unlink()  # later trials read nothing from disk
    with torch.no_grad():  # as training changes a model in place
        for parameter in first.parameters():
            parameter.add_(1.0)
    torch.manual_seed(3)
    second = load_classifier(encoder, LABEL_NAMES, 0.1)
    # The same weights, and the same head from the same seed, whether they were cached before or not.
    assert loaded.keys() == dict(second.named_parameters()).keys()
    for name, parameter in second.named_parameters():
        assert torch.equal(parameter, loaded[name]), name
