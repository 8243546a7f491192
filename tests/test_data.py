"""Dataset preparation: file sources, label ids, stratified splits and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.config.spec import DatasetSpec
from benchmark.data.dataset import SPLITS, load_dataset, prepare, stratified_cap, stratified_split
from benchmark.errors import BenchmarkError
from tests.helpers import make_texts

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


def test_a_cap_below_one_per_class_is_exact_and_keeps_each_class_while_it_can():
    # 10 classes of 5 capped at 5: half an example per class, which "one of each" made 10.
    labels = np.repeat(np.arange(10), 5)
    kept = stratified_cap(labels, 5, np.random.default_rng(0))
    assert len(kept) == 5 and len(set(labels[kept])) == 5
    kept = stratified_cap(labels, 12, np.random.default_rng(0))
    assert len(kept) == 12 and np.bincount(labels[kept]).min() == 1


# Classes of 30, 11 and 1: quotas limit x (30, 11, 1) / 42, floored, one of each, then settled
# by largest remainder: e.g. at 41 the quotas 29.3, 10.7, 0.98 floor to 29 + 10 + 1 = 40, and the
# largest remainder (0.74) gives the second class the 41st.
@pytest.mark.parametrize(("limit", "expected"), [(3, [1, 1, 1]), (4, [2, 1, 1]), (7, [5, 1, 1]),
                                                 (20, [14, 5, 1]), (41, [29, 11, 1])])
def test_a_cap_keeps_exactly_its_count_in_proportion_and_a_one_example_class(limit, expected):
    labels = np.array([0] * 30 + [1] * 11 + [2])
    kept = stratified_cap(labels, limit, np.random.default_rng(1))
    assert len(set(kept.tolist())) == len(kept) == limit
    assert np.bincount(labels[kept], minlength=3).tolist() == expected


def test_a_train_cap_keeps_a_one_example_class_in_the_label_set_and_in_train():
    train = frame_of(*[(f"t{i}", "a") for i in range(30)], *[(f"u{i}", "b") for i in range(11)], ("v", "c"))
    held = frame_of(("x", "a"), ("y", "b"), ("z", "c"))
    data = prepare("d", {"train": train, "validation": held, "test": held.assign(text=["p", "q", "r"])},
                   spec(max_train_examples=4), seed=0)
    assert data.label_names == ("a", "b", "c")
    assert len(data.train) == 4 and sorted(np.bincount(data.train.labels).tolist()) == [1, 1, 2]
    assert data.absent_classes() == {}


def test_a_train_cap_below_the_class_count_is_refused_by_its_key():
    train = frame_of(*[(f"t{i}", "abcd"[i % 4]) for i in range(40)])
    held = frame_of(*[(f"x{i}", "abcd"[i]) for i in range(4)])
    message = error_of(lambda: prepare("d", {"train": train, "validation": held,
                                             "test": held.assign(text=lambda f: "y" + f["text"])},
                                       spec(max_train_examples=3), seed=0))
    assert message.startswith("datasets.d.max_train_examples: 3 cannot keep one example of each of the 4 classes")


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
    # rows counted from 1, as in the file: index 4 is row 5
    assert "2 empty or non-text value(s)" in message and "12345" in message
    assert f"rows 5, 10 of {path}" in message


def test_empty_text_cell_in_csv_is_non_text(tmp_path):
    frame = numbered(30)
    frame.loc[7, "text"] = None
    path = _write(frame, tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert "datasets.news.text" in message and "1 empty or non-text value(s)" in message
    assert f"row 8 of {path}" in message


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


def test_split_cut_from_train_that_would_come_out_empty():
    # one example per class: nothing can be cut for test without emptying the class
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    message = error_of(lambda: prepare("tiny", {"train": frame}, spec(), seed=0))
    assert "datasets.tiny.label" in message and "fewer than 3 examples" in message
    assert "'x' (1), 'y' (1)" in message


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


def test_texts_that_differ_only_in_invisible_characters_are_duplicates():
    # Each copy gives a BERT tokenizer the ids of its original: a zero-width space or joiner,
    # a soft hyphen, a byte-order mark, a variation selector, a no-break space, full-width letters.
    frame = numbered(60)
    originals = frame["text"].iloc[:6].tolist()
    copies = ["\u200b" + originals[0], originals[1].replace(" ", " \u200d", 1), originals[2] + "\u00ad",
              "\ufeff" + originals[3] + "\ufe0f", originals[4].replace(" ", "\u00a0"),
              originals[5].replace("doc", "\uff44\uff4f\uff43")]
    held = frame_of(*[(text, label) for text, label in zip(copies, frame["label"].iloc[:6])])
    data = prepare("d", {"train": frame, "test": held}, spec(), seed=0)
    assert data.duplicates_dropped == 6
    assert not set(data.train.texts + data.validation.texts) & set(originals), "no test text leaks into train"


@pytest.mark.parametrize("invisible", ["\u200b", "\u200b\u200c\u2060", "\ufeff \u00ad", "\ufe0f"])
def test_a_text_of_invisible_characters_only_is_blank(invisible):
    frame = numbered(30)
    frame.loc[4, "text"] = invisible
    message = error_of(lambda: prepare("d", {"train": frame}, spec(), seed=0))
    assert "datasets.d.text: column 'text' has 1 empty or non-text value(s)" in message
    assert "row 5 of unused.csv" in message


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_delimited_labels_are_read_as_written_so_007_and_7_stay_two_classes(tmp_path, suffix):
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(60)], "label": ["007", "7", "42"] * 20})
    path = tmp_path / f"d{suffix}"
    frame.to_csv(path, index=False, sep="," if suffix == ".csv" else "\t")
    data = load_dataset("d", file_spec(path), seed=0)
    assert data.label_names == ("007", "42", "7")
    counts = np.bincount(np.concatenate([getattr(data, split).labels for split in SPLITS]))
    assert counts.tolist() == [20, 20, 20]


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


# --- classes too rare to split ---------------------------------------------------------


def test_one_example_per_class_is_an_error_naming_the_rarest_classes():
    # 1000 labels with one example each: whatever is cut for validation and test is a
    # class train never saw, so every held-out score would be 0.
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": [f"c{i:04d}" for i in range(1000)]})
    message = error_of(lambda: prepare("many", {"train": frame}, spec(label="label"), seed=0))
    assert message.startswith("datasets.many.label: 1000 of the 1000 classes of column 'label' have fewer than 3")
    assert "(test and validation)" in message
    assert "'c0000' (1), 'c0001' (1), 'c0002' (1), 'c0003' (1), 'c0004' (1), ..." in message
    assert "drop or merge the rare classes" in message


def test_rare_classes_are_listed_rarest_first_and_only_those():
    frame = frame_of(*[(f"a{i}", "a") for i in range(20)], *[(f"b{i}", "b") for i in range(2)],
                     ("c0", "c"), *[(f"d{i}", "d") for i in range(3)])
    message = error_of(lambda: prepare("d", {"train": frame}, spec(), seed=0))
    assert "2 of the 4 classes" in message and "'c' (1), 'b' (2);" in message and "'d'" not in message


def test_a_class_needs_one_example_per_split_cut_from_train():
    # validation comes from the source, so only test is cut: two examples are enough.
    train = frame_of(*[(f"a{i}", "a") for i in range(20)], ("b0", "b"), ("b1", "b"))
    held = frame_of(("v0", "a"), ("v1", "b"))
    data = prepare("d", {"train": train, "validation": held}, spec(), seed=0)
    assert np.bincount(data.train.labels).tolist()[1] == 1 and np.bincount(data.test.labels).tolist()[1] == 1
    one = frame_of(*[(f"a{i}", "a") for i in range(20)], ("b0", "b"))
    message = error_of(lambda: prepare("d", {"train": one, "validation": held}, spec(), seed=0))
    assert "fewer than 2 examples" in message and "(test)" in message and "'b' (1)" in message


def test_three_examples_put_a_class_in_every_split():
    frame = frame_of(*[(f"a{i}", "a") for i in range(30)], ("b0", "b"), ("b1", "b"), ("b2", "b"))
    data = prepare("d", {"train": frame}, spec(), seed=0)
    assert data.absent_classes() == {}
    assert [int((getattr(data, split).labels == 1).sum()) for split in SPLITS] == [1, 1, 1]


def test_source_splits_are_not_held_to_the_rare_class_rule():
    # Nothing is cut, so a class with one training example is the source's choice.
    train = frame_of(*[(f"a{i}", "a") for i in range(10)], ("b0", "b"))
    held = frame_of(("v0", "a"), ("v1", "b"))
    data = prepare("d", {"train": train, "validation": held, "test": held.assign(text=["x0", "x1"])}, spec(), seed=0)
    assert data.label_names == ("a", "b")


# --- max_test_examples ------------------------------------------------------------------


def test_max_test_examples_subsamples_the_test_split_stratified():
    # 60 / 30 / 10 examples in the test split, capped at 20: shares 12 / 6 / 2.
    train = frame_of(*[(f"t{i}", "abc"[i % 3]) for i in range(30)])
    test = frame_of(*[(f"x{i}", "a" if i < 60 else "b" if i < 90 else "c") for i in range(100)])
    full = prepare("d", {"train": train, "validation": train.assign(text=lambda f: "v" + f["text"]), "test": test},
                   spec(), seed=0)
    capped = prepare("d", {"train": train, "validation": train.assign(text=lambda f: "v" + f["text"]), "test": test},
                     spec(max_test_examples=20), seed=0)
    assert len(capped.test) == 20
    assert np.bincount(capped.test.labels).tolist() == [12, 6, 2]
    assert set(capped.test.texts) < set(full.test.texts)
    assert capped.train.texts == full.train.texts and capped.validation.texts == full.validation.texts


def test_max_test_examples_applies_to_a_test_split_cut_from_train(tmp_path):
    path = _write(numbered(300), tmp_path / "d.csv")
    data = load_dataset("d", file_spec(path, max_test_examples=9), seed=0)
    # test = round(0.1 * 300) = 30 (10 per class), capped to 9: 3 per class; the other 21
    # are not used, so train and validation are those of the uncapped split.
    assert np.bincount(data.test.labels).tolist() == [3, 3, 3]
    full = load_dataset("d", file_spec(path), seed=0)
    assert data.train.texts == full.train.texts and data.validation.texts == full.validation.texts


# --- label values -------------------------------------------------------------------------


def test_blank_label_is_an_error_naming_the_file_and_rows(tmp_path):
    frame = numbered(30)
    frame.loc[[3, 11], "label"] = " "
    path = _write(frame, tmp_path / "d.csv")
    message = error_of(lambda: load_dataset("news", file_spec(path), seed=0))
    assert f"datasets.news.label: column 'label' has 2 blank label(s) (rows 4, 12 of {path})" in message


def test_empty_label_cell_is_still_unlabeled_and_dropped(tmp_path):
    frame = numbered(60)
    frame.loc[5, "label"] = None
    path = _write(frame, tmp_path / "d.csv")
    assert sum(len(getattr(load_dataset("d", file_spec(path), seed=0), s)) for s in SPLITS) == 59


def test_integer_and_string_labels_mixed_in_jsonl_are_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)] + [{"text": "quoted", "label": "1"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert message.startswith("datasets.d.label: column 'label' mixes label types: ")
    assert f"number 0 (row 1 of {path})" in message and f"text '1' (row 21 of {path})" in message
    assert "write every label the same way" in message


def test_jsonl_keeps_string_labels_as_written(tmp_path):
    # pandas' read_json would turn "01" and "1" into the same number 1.
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"t{i}", "label": ["01", "1"][i % 2]} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_dataset("d", file_spec(path), seed=0).label_names == ("01", "1")


def test_labels_differing_only_in_spaces_are_refused():
    frame = frame_of(*[(f"t{i}", ["pos", "neg", " neg"][i % 3]) for i in range(30)])
    message = error_of(lambda: prepare("d", {"train": frame}, spec(), seed=0))
    assert "differ only in surrounding spaces: ' neg', 'neg'" in message


def test_list_labels_are_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": [i % 2]}) + "\n" for i in range(10)))
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert "datasets.d.label: column 'label' holds list values such as [0]" in message


def test_blank_text_is_an_error_like_a_missing_one():
    frame = numbered(30)
    frame.loc[2, "text"] = "   "
    message = error_of(lambda: prepare("d", {"train": frame}, spec(), seed=0))
    assert "datasets.d.text: column 'text' has 1 empty or non-text value(s), the first being '   '" in message
    assert "row 3 of unused.csv" in message


def test_na_like_words_in_a_csv_are_text_not_missing(tmp_path):
    frame = numbered(60)
    frame.loc[0, "text"] = "NA"
    frame.loc[1, "text"] = "null"
    path = _write(frame, tmp_path / "d.csv")
    assert {"NA", "null"} <= set(all_texts(load_dataset("d", file_spec(path), seed=0)))


# --- reading files ------------------------------------------------------------------------


def test_malformed_jsonl_line_is_reported_by_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n{"text": "c" "label": 1}\n')
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert message.startswith(f"datasets.d.path: {path} could not be read: line 4: not valid JSON "
                              f"(Expecting ',' delimiter at column 14)")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n["b", 0]\n')
    assert error_of(lambda: load_dataset("d", file_spec(path), seed=0)) == \
        f"datasets.d.path: {path} could not be read: line 2: expected an object per line, found an array"


def test_directory_as_path_says_it_is_a_directory(tmp_path):
    message = error_of(lambda: load_dataset("d", file_spec(tmp_path), seed=0))
    assert message.startswith(f"datasets.d.path: {tmp_path} is a directory; give the data file in it")
    assert "not found" not in message


@pytest.mark.parametrize("codec", ["latin-1", "utf-16"])
def test_csv_in_another_encoding_reads_with_the_encoding_key(tmp_path, codec):
    frame = numbered(60)
    frame.loc[0, "text"] = "café crème on the menu"
    path = tmp_path / "d.csv"
    path.write_bytes(frame.to_csv(index=False).encode(codec))
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert message.startswith(f"datasets.d.encoding: {path} is not valid utf-8 at byte ")
    assert "set `encoding:` in the dataset entry" in message
    data = load_dataset("d", file_spec(path, encoding=codec), seed=0)
    assert "café crème on the menu" in all_texts(data)


def test_decode_error_names_the_byte_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nfine,a\nna\xefve,b\n")
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert f"{path} is not valid utf-8 at byte 20 (line 3: invalid continuation byte)" in message


def test_utf8_byte_order_mark_does_not_stick_to_the_first_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + numbered(60).to_csv(index=False).encode())
    assert load_dataset("d", file_spec(path), seed=0).label_names == LABELS


def test_unknown_encoding_is_a_config_error():
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        spec(encoding="klingon")


def test_json_object_document_is_described_not_dumped(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 2, "data": [{"text": "x" * 4000, "label": 1}]}, indent=2))
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert message == (f"datasets.d.path: {path} could not be read: expected an array of records ([{{\"text\": ..., \"label\": ...}}, ...]) or one "
                       f"object per line; found one object with the keys 'version', 'data'")


def test_json_array_of_non_records(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a", "label": 1}, "b"]')
    assert error_of(lambda: load_dataset("d", file_spec(path), seed=0)).endswith(
        "element 1 of the array is a string")


def test_broken_json_array_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a", "label": 1},\n{"text": "b" "label": 0}\n]')
    assert error_of(lambda: load_dataset("d", file_spec(path), seed=0)).startswith(
        f"datasets.d.path: {path} could not be read: line 3: not valid JSON")


def test_empty_file_says_empty(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("")
    assert error_of(lambda: load_dataset("d", file_spec(path), seed=0)) == f"datasets.d.path: {path} is empty"


def test_missing_column_message_shows_the_columns_with_their_spaces(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label \ngoal match,sports\nvote law,politics\n")
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert "column 'label' is missing from the train split; its columns are 'text', 'label '" in message


def test_tsv_with_a_stray_quote_is_refused_not_read_as_one_joined_row(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('text\tlabel\n"Great movie, said the critic\tpos\nBad film\tneg\nok film\tpos\n"fine" film\tneg\n')
    message = error_of(lambda: load_dataset("d", file_spec(path), seed=0))
    assert message.startswith(f"datasets.d.path: {path} could not be read: data row 1 has a cell with tabs and "
                              f"line breaks")


def test_tsv_with_quoted_tabs_or_line_breaks_reads(tmp_path):
    frame = numbered(60)
    frame.loc[0, "text"] = 'a "quoted"\ttab'
    frame.loc[1, "text"] = "two\nlines"
    path = _write(frame, tmp_path / "d.tsv")
    assert {'a "quoted"\ttab', "two\nlines"} <= set(all_texts(load_dataset("d", file_spec(path), seed=0)))
