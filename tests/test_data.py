"""Dataset preparation: file sources, label ids, stratified splits and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.config import DatasetSpec
from benchmark.data import SPLITS, load_dataset, prepare, stratified_split
from benchmark.errors import BenchmarkError
from tests.conftest import make_texts

LABELS = ("politics", "sports", "tech")  # make_texts' classes, in sorted order


def numbered(n: int, seed: int = 0) -> pd.DataFrame:
    """make_texts with a unique id in front of every text, so examples can be traced."""
    frame = make_texts(n, seed)
    frame["text"] = [f"doc{i} {text}" for i, text in enumerate(frame["text"])]
    return frame


def file_spec(path: Path, **fields) -> DatasetSpec:
    return DatasetSpec(source="file", path=path, **fields)


def spec(**fields) -> DatasetSpec:
    return DatasetSpec(source="file", path=Path("unused.csv"), **fields)


def all_texts(data) -> list[str]:
    return [text for split in SPLITS for text in getattr(data, split).texts]


def error_of(call) -> str:
    with pytest.raises(BenchmarkError) as caught:
        call()
    return str(caught.value)


# --- file formats ------------------------------------------------------------


def _write(frame: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_file_formats_load_the_same_data(tmp_path, suffix):
    frame = numbered(90, seed=1)
    path = _write(frame, tmp_path / f"topics{suffix}")
    data = load_dataset("topics", file_spec(path), seed=0)

    assert data.name == "topics"
    assert data.label_names == LABELS
    assert data.num_labels == 3
    assert sorted(all_texts(data)) == sorted(frame["text"])
    assert sum(len(getattr(data, split)) for split in SPLITS) == 90
    # each text keeps its own label
    truth = dict(zip(frame["text"], frame["label"]))
    for split in SPLITS:
        part = getattr(data, split)
        assert part.labels.dtype == np.int64
        assert part.text_pairs is None
        for text, label_id in zip(part.texts, part.labels):
            assert data.label_names[label_id] == truth[text]


def test_same_data_from_csv_jsonl_parquet_gives_identical_splits(tmp_path):
    frame = numbered(60, seed=2)
    results = [
        load_dataset("d", file_spec(_write(frame, tmp_path / f"d{suffix}")), seed=5)
        for suffix in (".csv", ".jsonl", ".parquet")
    ]
    for other in results[1:]:
        for split in SPLITS:
            assert getattr(other, split).texts == getattr(results[0], split).texts
            assert getattr(other, split).labels.tolist() == getattr(results[0], split).labels.tolist()


def test_string_labels_map_to_sorted_ids(topics_csv):
    data = load_dataset("topics", file_spec(topics_csv), seed=0)
    assert data.label_names == ("politics", "sports", "tech")
    frame = pd.read_csv(topics_csv)
    truth = dict(zip(frame["text"], frame["label"]))
    ids = {name: index for index, name in enumerate(data.label_names)}
    for text, label in zip(data.train.texts, data.train.labels):
        assert label == ids[truth[text]]


def test_integer_labels_are_recorded_as_strings():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [7, 3] * 20})
    data = prepare("ints", {"train": frame}, spec(), seed=0)
    assert data.label_names == ("3", "7")
    assert set(data.train.labels.tolist()) == {0, 1}


def test_custom_column_names(tmp_path):
    frame = numbered(60).rename(columns={"text": "body", "label": "topic"})
    path = _write(frame, tmp_path / "custom.csv")
    data = load_dataset("custom", file_spec(path, text="body", label="topic"), seed=0)
    assert data.label_names == LABELS
    assert sorted(all_texts(data)) == sorted(frame["body"])


def test_rows_without_label_are_dropped():
    frame = numbered(60)
    frame.loc[[0, 1, 2], "label"] = None
    data = prepare("gaps", {"train": frame}, spec(), seed=0)
    assert sum(len(getattr(data, s)) for s in SPLITS) == 57
    assert not {"doc0", "doc1", "doc2"} & {t.split()[0] for t in all_texts(data)}


# --- stratified splits -----------------------------------------------------------


def test_every_class_in_every_split_with_about_the_right_proportions(topics_csv):
    # 150 rows, 50 per class; test = round(0.1 * 150) = 15 (5 per class), then
    # validation = round(0.1 * 135) = 14 cut from the remaining 135 -> train 121.
    data = load_dataset("topics", file_spec(topics_csv), seed=0)
    assert (len(data.train), len(data.validation), len(data.test)) == (121, 14, 15)
    for split in SPLITS:
        counts = np.bincount(getattr(data, split).labels, minlength=3)
        assert (counts > 0).all(), split
        # stratified: class shares within one example of equal thirds
        assert counts.max() - counts.min() <= 1, (split, counts)


def test_split_fractions_are_honoured(tmp_path):
    path = _write(numbered(300), tmp_path / "d.csv")
    data = load_dataset("d", file_spec(path, split_fractions={"validation": 0.2, "test": 0.3}), seed=0)
    # test = round(0.3 * 300) = 90; validation = round(0.2 * 210) = 42; train = 168
    assert (len(data.train), len(data.validation), len(data.test)) == (168, 42, 90)
    assert np.bincount(data.test.labels).tolist() == [30, 30, 30]


def test_splits_are_disjoint_and_cover_every_example(tmp_path):
    frame = numbered(150, seed=3)
    data = load_dataset("d", file_spec(_write(frame, tmp_path / "d.csv")), seed=1)
    seen = [set(getattr(data, split).texts) for split in SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert seen[0] | seen[1] | seen[2] == set(frame["text"])


def test_splits_are_deterministic_per_seed_and_differ_between_seeds(tmp_path):
    path = _write(numbered(150), tmp_path / "d.csv")
    first = load_dataset("d", file_spec(path), seed=3)
    again = load_dataset("d", file_spec(path), seed=3)
    other = load_dataset("d", file_spec(path), seed=4)
    for split in SPLITS:
        assert getattr(first, split).texts == getattr(again, split).texts
        assert getattr(first, split).labels.tolist() == getattr(again, split).labels.tolist()
    assert set(first.test.texts) != set(other.test.texts)
    assert set(first.validation.texts) != set(other.validation.texts)


def test_text_pairs_are_carried_through_aligned(tmp_path):
    frame = numbered(90)
    frame["second"] = [f"pair-of {text.split()[0]}" for text in frame["text"]]
    path = _write(frame, tmp_path / "pairs.jsonl")
    data = load_dataset("pairs", file_spec(path, text_pair="second"), seed=0)
    for split in SPLITS:
        part = getattr(data, split)
        assert part.text_pairs is not None and len(part.text_pairs) == len(part.texts)
        for text, pair in zip(part.texts, part.text_pairs):
            assert pair == f"pair-of {text.split()[0]}"


def test_source_splits_are_used_as_given():
    frames = {"train": numbered(60, seed=1), "validation": numbered(12, seed=2), "test": numbered(9, seed=3)}
    data = prepare("d", frames, spec(), seed=0)
    assert data.train.texts == tuple(frames["train"]["text"])
    assert data.validation.texts == tuple(frames["validation"]["text"])
    assert data.test.texts == tuple(frames["test"]["text"])


def test_dev_is_an_alias_for_validation():
    frames = {"train": numbered(60, seed=1), "dev": numbered(12, seed=2)}
    data = prepare("d", frames, spec(), seed=0)
    assert data.validation.texts == tuple(frames["dev"]["text"])
    assert len(data.train) + len(data.test) == 60  # test cut from train: round(0.1 * 60) = 6
    assert len(data.test) == 6


def test_explicit_splits_mapping():
    frames = {"trn": numbered(60, seed=1), "held": numbered(12, seed=2), "final": numbered(9, seed=3),
              "validation": numbered(30, seed=4)}
    data = prepare("d", frames, spec(splits={"train": "trn", "validation": "held", "test": "final"}), seed=0)
    assert data.train.texts == tuple(frames["trn"]["text"])
    assert data.validation.texts == tuple(frames["held"]["text"])
    assert data.test.texts == tuple(frames["final"]["text"])


def test_partial_splits_mapping_cuts_the_rest_from_train():
    # An explicit mapping leaves unnamed splits to be cut from train, even when the
    # source has a split called "validation".
    frames = {"trn": numbered(60, seed=1), "validation": numbered(30, seed=4)}
    data = prepare("d", frames, spec(splits={"train": "trn"}), seed=0)
    assert set(all_texts(data)) == set(frames["trn"]["text"])
    # test = round(0.1 * 60) = 6, validation = round(0.1 * 54) = 5, train = 49
    assert (len(data.train), len(data.validation), len(data.test)) == (49, 5, 6)


def test_splits_mapping_to_an_absent_split():
    message = error_of(lambda: prepare("d", {"train": numbered(30)}, spec(splits={"test": "heldout"}), seed=0))
    assert "datasets.d.splits.test" in message and "heldout" in message and "train" in message


def test_no_train_split():
    message = error_of(lambda: prepare("d", {"test": numbered(30)}, spec(), seed=0))
    assert "datasets.d" in message and "no train split" in message and "test" in message


def test_max_train_and_validation_examples_subsample_stratified(tmp_path):
    path = _write(numbered(300), tmp_path / "d.csv")
    full = load_dataset("d", file_spec(path), seed=0)
    small = load_dataset("d", file_spec(path, max_train_examples=30, max_validation_examples=12), seed=0)
    assert len(small.train) == 30
    assert len(small.validation) == 12
    assert np.bincount(small.train.labels).tolist() == [10, 10, 10]
    assert np.bincount(small.validation.labels).tolist() == [4, 4, 4]
    # subsets of the full splits; the test split is never limited
    assert set(small.train.texts) <= set(full.train.texts)
    assert set(small.validation.texts) <= set(full.validation.texts)
    assert small.test.texts == full.test.texts


def test_max_examples_above_the_split_size_changes_nothing(tmp_path):
    path = _write(numbered(60), tmp_path / "d.csv")
    full = load_dataset("d", file_spec(path), seed=0)
    capped = load_dataset("d", file_spec(path, max_train_examples=10_000, max_validation_examples=10_000), seed=0)
    assert capped.train.texts == full.train.texts
    assert capped.validation.texts == full.validation.texts


def test_max_train_examples_is_not_exceeded_by_rounding():
    # classes of 14, 14 and 12 capped at 10: per-class quotas 3.5, 3.5, 3.0 would round to 11.
    labels = ["a"] * 14 + ["b"] * 14 + ["c"] * 12
    train = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": labels})
    held = pd.DataFrame({"text": ["x", "y", "z"], "label": ["a", "b", "c"]})
    final = pd.DataFrame({"text": ["u", "v", "w"], "label": ["a", "b", "c"]})
    data = prepare("d", {"train": train, "validation": held, "test": final}, spec(max_train_examples=10), seed=0)
    assert len(data.train) == 10
    assert sorted(np.bincount(data.train.labels).tolist()) == [3, 3, 4]


# --- stratified_split itself ---------------------------------------------------------


def test_stratified_split_partitions_and_stratifies():
    labels = np.array([0] * 40 + [1] * 30 + [2] * 30)
    rest, taken = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert len(taken) == 20 and len(rest) == 80
    assert np.intersect1d(rest, taken).size == 0
    assert np.union1d(rest, taken).tolist() == list(range(100))
    assert np.bincount(labels[taken]).tolist() == [8, 6, 6]
    assert (np.diff(rest) > 0).all() and (np.diff(taken) > 0).all()  # sorted indices


def test_stratified_split_keeps_one_of_each_class_on_both_sides():
    labels = np.array([0] * 50 + [1] * 2 + [2] * 3)
    rest, taken = stratified_split(labels, 0.05, np.random.default_rng(0))
    assert set(labels[taken]) == {0, 1, 2}
    assert set(labels[rest]) == {0, 1, 2}


def test_stratified_split_singleton_class_stays_on_one_side():
    labels = np.array([0] * 10 + [1])
    rest, taken = stratified_split(labels, 0.5, np.random.default_rng(0))
    assert len(rest) + len(taken) == 11
    assert (labels[rest] == 1).sum() + (labels[taken] == 1).sum() == 1


def test_stratified_split_seeded():
    labels = np.repeat(np.arange(4), 25)
    a = stratified_split(labels, 0.3, np.random.default_rng(7))
    b = stratified_split(labels, 0.3, np.random.default_rng(7))
    c = stratified_split(labels, 0.3, np.random.default_rng(8))
    assert a[1].tolist() == b[1].tolist()
    assert a[1].tolist() != c[1].tolist()


# --- errors ------------------------------------------------------------------------


def test_missing_text_column(tmp_path):
    path = _write(numbered(30).rename(columns={"text": "sentence"}), tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news.text" in message and "'text'" in message and "sentence" in message


def test_missing_label_column(tmp_path):
    path = _write(numbered(30), tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path, label="category"), seed=0))
    assert "datasets.news.label" in message and "'category'" in message and "train" in message


def test_missing_text_pair_column(tmp_path):
    path = _write(numbered(30), tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path, text_pair="hypothesis"), seed=0))
    assert "datasets.news.text_pair" in message and "'hypothesis'" in message


def test_non_text_values_in_text_column(tmp_path):
    frame = numbered(30)
    frame["text"] = frame["text"].astype(object)
    frame.loc[4, "text"] = 12345
    frame.loc[9, "text"] = 6.5
    path = _write(frame, tmp_path / "d.jsonl")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news.text" in message and "'text'" in message
    assert "2 non-text value(s)" in message and "12345" in message and "row 4" in message


def test_empty_text_cell_in_csv_is_non_text(tmp_path):
    frame = numbered(30)
    frame.loc[7, "text"] = None
    path = _write(frame, tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news.text" in message and "1 non-text value(s)" in message and "row 7" in message


def test_single_class(tmp_path):
    frame = numbered(30).assign(label="sports")
    path = _write(frame, tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news" in message and "'label'" in message and "single class" in message
    assert "sports" in message


def test_no_labels_at_all(tmp_path):
    frame = numbered(30)
    frame["label"] = None
    message = error_of(lambda: prepare("news", {"train": frame}, spec(), seed=0))
    assert "datasets.news.label" in message and "no labels" in message


def test_header_only_file_is_an_empty_split(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news" in message and "train split is empty" in message


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert str(path) in message


def test_split_cut_from_train_that_comes_out_empty():
    # one example per class: nothing can be cut for test without emptying the class
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    message = error_of(lambda: prepare("tiny", {"train": frame}, spec(), seed=0))
    assert "datasets.tiny" in message and "split is empty" in message


def test_empty_source_split():
    frames = {"train": numbered(30), "test": numbered(30).iloc[:0]}
    message = error_of(lambda: prepare("news", frames, spec(), seed=0))
    assert "datasets.news" in message and "test split is empty" in message


def test_unknown_file_suffix(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"not really")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news.path" in message and "'.xlsx'" in message
    assert ".csv" in message and ".jsonl" in message and ".parquet" in message


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news.path" in message and "not found" in message and str(path) in message


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text("this is not parquet")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert str(path) in message and "could not be read" in message


def test_integer_labels_consistent_across_splits_when_one_split_has_gaps():
    train = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [0, 1] * 20})
    train.loc[0, "label"] = None  # pandas turns the column into float64: 0.0, 1.0, NaN
    test = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    data = prepare("d", {"train": train, "test": test}, spec(), seed=0)
    assert data.label_names == ("0", "1")


def test_empty_jsonl_file_is_an_error_naming_the_dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news" in message


def test_json_suffix_reads_json_lines(tmp_path):
    frame = numbered(60)
    path = _write(frame, tmp_path / "d.json")  # written as JSON Lines
    data = load_dataset("d", file_spec(path), seed=0)
    assert sorted(all_texts(data)) == sorted(frame["text"])


def test_json_array_of_records_loads(tmp_path):
    frame = numbered(60)
    path = tmp_path / "d.json"
    frame.to_json(path, orient="records")  # [{"text": ..., "label": ...}, ...]
    data = load_dataset("d", file_spec(path), seed=0)
    assert sorted(all_texts(data)) == sorted(frame["text"])


# --- data hygiene: duplicates and the label set ----------------------------------------


def frame_of(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def test_duplicates_dropped_within_and_across_splits_keeping_the_test_copy():
    train = frame_of(*[(f"train {i}", "ab"[i % 2]) for i in range(6)],
                     ("Dup within", "a"), ("dup   WITHIN", "b"),  # a repeat with another label
                     ("val only", "a"), ("Shared text", "b"))
    validation = frame_of(("v0", "a"), ("v1", "b"), ("Val  Only", "a"), ("shared text ", "a"))
    test = frame_of(("shared\tTEXT", "a"), ("x1", "a"), ("x2", "b"), ("X1", "b"))
    data = prepare("d", {"train": train, "validation": validation, "test": test}, spec(), seed=0)

    # train loses its own repeat, its copy of a validation text and one of a test text (3);
    # validation its copy of a test text (1); test only its own repeat (1).
    assert data.duplicates_dropped == 5
    assert data.test.texts == ("shared\tTEXT", "x1", "x2")
    assert data.validation.texts == ("v0", "v1", "Val  Only")
    assert data.train.texts == tuple(f"train {i}" for i in range(6)) + ("Dup within",)
    # the first row of a repeated text is kept, with its own label
    assert data.label_names[data.train.labels[-1]] == "a"
    assert data.label_names[data.test.labels[0]] == "a"


def test_duplicates_are_dropped_before_splitting():
    frame = numbered(60)
    copies = frame.iloc[[0, 7, 8]].assign(text=lambda f: "  " + f["text"].str.upper() + "\n")
    data = prepare("d", {"train": pd.concat([frame, copies, frame.iloc[[3]]])}, spec(), seed=0)
    assert data.duplicates_dropped == 4
    assert sorted(all_texts(data)) == sorted(frame["text"])  # each text once, in one split
    # test = round(0.1 * 60) = 6, validation = round(0.1 * 54) = 5, from the 60 left
    assert (len(data.train), len(data.validation), len(data.test)) == (49, 5, 6)


def test_a_pair_is_a_duplicate_only_when_both_texts_repeat():
    train = pd.DataFrame({
        "text": [f"q{i}" for i in range(8)] + ["same question", "Same question", "same question"],
        "second": [f"a{i}" for i in range(8)] + ["answer one", "ANSWER one", "answer two"],
        "label": list("ab" * 4) + ["a", "a", "b"],
    })
    held = pd.DataFrame({"text": ["h1", "h2"], "second": ["x", "y"], "label": ["a", "b"]})
    data = prepare("d", {"train": train, "validation": held, "test": held.assign(text=["t1", "t2"])},
                   spec(text_pair="second"), seed=0)
    assert data.duplicates_dropped == 1
    assert data.train.text_pairs[-2:] == ("answer one", "answer two")


def test_no_duplicates_means_nothing_dropped(topics_csv):
    assert load_dataset("topics", file_spec(topics_csv), seed=0).duplicates_dropped == 0


def test_class_only_in_test_is_an_error_naming_dataset_class_and_split():
    train = frame_of(*[(f"t{i}", "ab"[i % 2]) for i in range(20)])
    test = frame_of(("x", "a"), ("y", "b"), ("z", "neutral"))
    message = error_of(lambda: prepare("reviews", {"train": train, "test": test}, spec(), seed=0))
    assert "datasets.reviews" in message and "'neutral'" in message and "test split" in message
    assert "never in train" in message and "splits: {train: NAME}" in message


def test_class_only_in_validation_is_an_error_too():
    train = frame_of(*[(f"t{i}", "ab"[i % 2]) for i in range(20)])
    validation = frame_of(("x", "a"), ("y", "c"))
    message = error_of(lambda: prepare("d", {"train": train, "validation": validation}, spec(), seed=0))
    assert "datasets.d" in message and "'c'" in message and "validation split" in message


def test_label_set_comes_from_train_and_absent_classes_are_reported():
    train = frame_of(*[(f"t{i}", "abc"[i % 3]) for i in range(30)])
    validation = frame_of(("v0", "a"), ("v1", "b"))
    test = frame_of(("x0", "a"), ("x1", "b"), ("x2", "c"))
    data = prepare("d", {"train": train, "validation": validation, "test": test}, spec(), seed=0)
    assert data.label_names == ("a", "b", "c")
    assert data.absent_classes() == {"validation": ("c",)}


def test_single_class_in_train_is_an_error_even_when_test_has_two():
    train = frame_of(*[(f"t{i}", "a") for i in range(20)])
    test = frame_of(("x", "a"), ("y", "b"))
    message = error_of(lambda: prepare("d", {"train": train, "test": test}, spec(), seed=0))
    assert "single class (a) in the train split" in message
