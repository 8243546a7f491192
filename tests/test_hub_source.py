"""The hub source through the real `datasets.load_dataset`, pointed at a local directory
(what it does with a hub id, minus the download)."""

from __future__ import annotations

import pytest

from benchmark.config.spec import DatasetSpec
from benchmark.data.dataset import load_dataset
from benchmark.errors import BenchmarkError


def _write_parquet_dataset(directory, splits):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    directory.mkdir()
    for split, (texts, labels) in splits.items():
        Dataset.from_dict({"sentence": texts, "label": labels}, features=features).to_parquet(
            directory / f"{split}.parquet")


def test_class_label_names_and_source_splits_are_used(tmp_path):
    texts = [f"text number {i}" for i in range(40)]
    _write_parquet_dataset(tmp_path / "reviews", {
        "train": (texts, [i % 2 for i in range(40)]),
        "test": (["good", "bad", "fine", "awful"], [1, 0, 1, 0]),
    })
    spec = DatasetSpec(source="hub", id=str(tmp_path / "reviews"), text="sentence")
    data = load_dataset("reviews", spec, seed=0)
    assert data.label_names == ("negative", "positive")
    assert sorted(data.test.texts) == ["awful", "bad", "fine", "good"]
    assert data.test.labels.tolist() == [data.label_names.index("positive" if t in ("good", "fine") else "negative")
                                         for t in data.test.texts]
    assert len(data.validation) == 4 and len(data.train) == 36  # validation cut from train


def test_hidden_test_labels_are_an_error_that_says_how_to_fix_it(tmp_path):
    _write_parquet_dataset(tmp_path / "glue_like", {
        "train": ([f"t{i}" for i in range(20)], [i % 2 for i in range(20)]),
        "test": (["x", "y"], [-1, -1]),  # GLUE-style hidden labels
    })
    spec = DatasetSpec(source="hub", id=str(tmp_path / "glue_like"), text="sentence")
    with pytest.raises(BenchmarkError, match=r"datasets\.glue_like\.label: .*no labels in the test split.*splits"):
        load_dataset("glue_like", spec, seed=0)
    remapped = spec.model_copy(update={"splits": {"train": "train"}})
    assert len(load_dataset("glue_like", remapped, seed=0).test) == 2  # cut from train instead


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = DatasetSpec(source="hub", id="no-such-user/no-such-dataset")
    with pytest.raises(BenchmarkError, match=r"datasets\.missing: could not load 'no-such-user/no-such-dataset'"):
        load_dataset("missing", spec, seed=0)
