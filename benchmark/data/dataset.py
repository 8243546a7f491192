"""Dataset sources, and their preparation into validated, stratified splits.

A source only reads raw tables (one per split it has). `prepare` is the single place
that checks columns and values, maps labels to ids and cuts missing splits, so every
source gets the same checks and the same clear errors.
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from benchmark.config.spec import DatasetSpec
from benchmark.data.offline import OFFLINE_DATASETS
from benchmark.errors import BenchmarkError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    text_pairs: tuple[str, ...] | None
    labels: np.ndarray  # int64 label ids

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        indices = np.sort(indices)
        return Split(
            texts=tuple(self.texts[i] for i in indices),
            text_pairs=None if self.text_pairs is None else tuple(self.text_pairs[i] for i in indices),
            labels=self.labels[indices],
        )


@dataclass(frozen=True)
class TextClassificationData:
    name: str
    train: Split
    validation: Split
    test: Split
    label_names: tuple[str, ...]  # label id -> original label, recorded with the study
    duplicates_dropped: int = 0  # repeated texts removed before splitting (see _drop_duplicates)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sample_texts(self, count: int, seed: int) -> list[str]:
        """Up to `count` examples of train, drawn with `seed`: their texts, then their pairs."""
        drawn = np.sort(np.random.default_rng(seed).choice(len(self.train), min(count, len(self.train)), replace=False))
        pairs = [] if self.train.text_pairs is None else [self.train.text_pairs[i] for i in drawn]
        return [self.train.texts[i] for i in drawn] + pairs

    def fingerprints(self) -> dict[str, str]:
        """Per split, a sha256 of its texts, pairs and labels (by name), in order: equal only
        for the same examples, so a study can tell whether its data changed under it."""
        return {split: hashlib.sha256(json.dumps([
            getattr(self, split).texts, getattr(self, split).text_pairs,
            [self.label_names[label] for label in getattr(self, split).labels]]).encode()).hexdigest()
            for split in SPLITS}

    def absent_classes(self) -> dict[str, tuple[str, ...]]:
        """Per split, the classes of the label set (built from train) it has no example of."""
        absent = {}
        for split in SPLITS:
            present = set(getattr(self, split).labels.tolist())
            missing = tuple(label for index, label in enumerate(self.label_names) if index not in present)
            if missing:
                absent[split] = missing
        return absent


class DatasetSource(Protocol):
    def load(self) -> dict[str, pd.DataFrame]:
        """Raw tables keyed by the source's own split names."""


# --- sources -----------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    id: str
    subset: str | None
    dataset_name: str

    def load(self) -> dict[str, pd.DataFrame]:
        import datasets  # heavy import, only for hub datasets

        try:
            loaded = datasets.load_dataset(self.id, self.subset)
        except Exception as exc:  # the hub raises many types; all mean "not loadable here"
            raise BenchmarkError(
                f"datasets.{self.dataset_name}: could not load '{self.id}'"
                f"{f' ({self.subset})' if self.subset else ''} from the Hugging Face hub or its "
                f"local cache: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        frames = {}
        for split_name, split in loaded.items():
            frame = split.to_pandas()
            for column, feature in split.features.items():
                names = getattr(feature, "names", None)
                if names:  # ClassLabel: keep the readable label names, -1 means "no label"
                    frame[column] = frame[column].map(lambda i, names=names: names[i] if i >= 0 else None)
            frames[split_name] = frame
        return frames


@dataclass(frozen=True)
class FileSource:
    path: Path
    dataset_name: str
    encoding: str = "utf-8"
    label: str = "label"  # the label column, read as text from delimited files

    def load(self) -> dict[str, pd.DataFrame]:
        key = f"datasets.{self.dataset_name}.path"
        readers = {
            ".csv": lambda: _read_csv(self._text(), self.label),
            ".tsv": lambda: _read_tsv(self._text(), self.label),
            ".jsonl": lambda: _json_lines(self._text()),
            ".json": lambda: _json_document(self._text()),
            ".parquet": lambda: pd.read_parquet(self.path),
        }
        if self.path.is_dir():
            raise BenchmarkError(f"{key}: {self.path} is a directory; give the data file in it "
                                 f"({', '.join(readers)})")
        if not self.path.is_file():
            raise BenchmarkError(f"{key}: file not found: {self.path}")
        suffix = self.path.suffix.lower()
        if suffix not in readers:
            raise BenchmarkError(f"{key}: {self.path} has suffix '{self.path.suffix}'; use one of {', '.join(readers)}")
        if self.path.stat().st_size == 0:
            raise BenchmarkError(f"{key}: {self.path} is empty")
        try:
            frame = readers[suffix]()
        except BenchmarkError:  # a decoding error, already explained
            raise
        except Exception as exc:  # each reader raises its own types; all mean "not this format"
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BenchmarkError(f"{key}: {self.path} could not be read: {first_line}") from None
        return {"train": frame}

    def _text(self) -> str:
        raw = self.path.read_bytes()
        try:
            # A byte-order mark would otherwise stick to the first column's name.
            return raw.decode(self.encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise BenchmarkError(
                f"datasets.{self.dataset_name}.encoding: {self.path} is not valid {self.encoding} at byte "
                f"{exc.start} (line {line}: {exc.reason}); set `encoding:` in the dataset entry to the "
                f"file's encoding (e.g. latin-1, cp1252 or utf-16)"
            ) from None


def _read_csv(text: str, label: str, sep: str = ",") -> pd.DataFrame:
    # Only an empty cell is missing: "NA", "null" or "None" are texts (and labels) like any other.
    # Labels as written: read as numbers, `007` and `7` would become one class unseen.
    return pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=False, na_values=[""], dtype={label: str})


def _read_tsv(text: str, label: str) -> pd.DataFrame:
    frame = _read_csv(text, label, sep="\t")
    # A stray quote at the start of a field makes the parser read on to the next quote, so
    # the rows in between become one cell, holding their tabs and line breaks. A text with
    # both is rare enough that this is the likelier story.
    joined = frame.map(lambda value: isinstance(value, str) and "\t" in value and "\n" in value).any(axis=1)
    if joined.any():
        raise ValueError(f"data row {joined.idxmax() + 1} has a cell with tabs and line breaks, as when a quote (\") "
                         f"opens a field and the rows up to the next quote are read as one; remove the stray quote "
                         f"or double it inside a quoted field")
    return frame


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_lines(text: str) -> pd.DataFrame:
    """One record per line, read without pandas' type guessing (which turns "1" into 1)."""
    records = []
    # Not str.splitlines: it also breaks at U+2028 and others, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                             f"a JSON Lines file holds one object per line") from None
        if not isinstance(record, dict):
            raise ValueError(f"line {number}: expected an object per line, found {_JSON_TYPES[type(record)]}")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _json_document(text: str) -> pd.DataFrame:
    """A `.json` file: an array of records, or JSON Lines under another suffix."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise ValueError(f"line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        return _json_lines(text)  # reports the first line that is not an object
    expected = 'an array of records ([{"text": ..., "label": ...}, ...]) or one object per line'
    if isinstance(document, dict):
        keys = ", ".join(map(repr, list(document)[:5])) + (", ..." if len(document) > 5 else "")
        raise ValueError(f"expected {expected}; found one object with the keys {keys or 'none'}")
    if not isinstance(document, list):
        raise ValueError(f"expected {expected}; found {_JSON_TYPES[type(document)]}")
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            raise ValueError(f"expected {expected}; element {index} of the array is {_JSON_TYPES[type(record)]}")
    return pd.DataFrame.from_records(document)


@dataclass(frozen=True)
class OfflineSource:
    asset_name: str
    dataset_name: str

    def load(self) -> dict[str, pd.DataFrame]:
        dataset = OFFLINE_DATASETS.get(self.asset_name)
        if dataset is None:
            raise BenchmarkError(
                f"datasets.{self.dataset_name}: no built-in offline dataset '{self.asset_name}'; "
                f"choose one of {', '.join(OFFLINE_DATASETS)}"
            )
        return dataset.load()


def source_for(name: str, spec: DatasetSpec) -> DatasetSource:
    if spec.source == "hub":
        return HubSource(spec.id, spec.subset, name)
    if spec.source == "file":
        return FileSource(spec.path, name, spec.encoding, spec.label)
    return OfflineSource(spec.id or name, name)


# --- preparation -------------------------------------------------------------


def load_dataset(name: str, spec: DatasetSpec, seed: int) -> TextClassificationData:
    return prepare(name, source_for(name, spec).load(), spec, seed)


def prepare(name: str, frames: dict[str, pd.DataFrame], spec: DatasetSpec, seed: int) -> TextClassificationData:
    """Check the raw tables, drop repeated texts, map labels to ids and cut the splits a source lacks."""
    rng = np.random.default_rng(seed)
    chosen = {split: _pick_split(name, frames, spec, split) for split in SPLITS}
    if chosen["train"] is None:
        raise BenchmarkError(
            f"datasets.{name}: no train split; the source has {', '.join(frames) or 'none'} "
            f"(map one with 'splits: {{train: NAME}}')"
        )
    twice = [split for split in SPLITS if split != "train" and chosen[split] == chosen["train"]]
    if twice:
        raise BenchmarkError(
            f"datasets.{name}.splits.{twice[0]}: names the source split '{chosen['train']}', which is already "
            f"the train split; scored on the examples it trained on, a model shows nothing (and dropping repeated "
            f"texts would empty train); map another split, or leave {twice[0]} out to cut it from train"
        )
    tables = {split: _check_table(name, split, frames[source_split], spec)
              for split, source_split in chosen.items() if source_split is not None}
    tables, duplicates = _drop_duplicates(tables)
    dropped = f" after dropping {duplicates} duplicate text(s)" if duplicates else ""

    # From train alone: a class the model is never trained on cannot be learned, and
    # reading the label set off the test split would leak what it holds.
    label_names = tuple(sorted({str(v) for v in tables["train"]["label"]}))
    if len(label_names) < 2:
        raise BenchmarkError(
            f"datasets.{name}: column '{spec.label}' has a single class ({', '.join(label_names) or 'none'}) "
            f"in the train split{dropped}; classification needs at least two"
        )
    for split, table in tables.items():
        unseen = sorted({str(v) for v in table["label"]} - set(label_names))
        if unseen:
            raise BenchmarkError(
                f"datasets.{name}.label: class(es) {', '.join(map(repr, unseen))} occur in the {split} "
                f"split but never in train, so no model can learn them; drop those rows from the "
                f"{split} split, or map only train with 'splits: {{train: NAME}}' to cut {split} from it"
            )
    label_ids = {label: index for index, label in enumerate(label_names)}
    splits = {split: _to_split(table, label_ids) for split, table in tables.items()}

    cut = [split for split in ("test", "validation") if split not in splits]
    _check_splittable(name, spec, splits["train"].labels, label_names, cut)
    for missing, fraction in (("test", spec.split_fractions.test), ("validation", spec.split_fractions.validation)):
        if missing not in splits:
            rest, taken = stratified_split(splits["train"].labels, fraction, rng)
            splits[missing] = splits["train"].subset(taken)
            splits["train"] = splits["train"].subset(rest)

    # A capped train split keeps every class of the label set (which train defines); a capped
    # held-out split below its class count loses some, which the preflight warns of.
    train_classes = len(np.unique(splits["train"].labels))
    if spec.max_train_examples is not None and spec.max_train_examples < train_classes:
        raise BenchmarkError(
            f"datasets.{name}.max_train_examples: {spec.max_train_examples} cannot keep one example of each of "
            f"the {train_classes} classes of the train split, and a class missing from train cannot be learned; "
            f"use at least {train_classes}"
        )
    for split, limit in (("train", spec.max_train_examples), ("validation", spec.max_validation_examples),
                         ("test", spec.max_test_examples)):
        if limit is not None and len(splits[split]) > limit:
            splits[split] = splits[split].subset(stratified_cap(splits[split].labels, limit, rng))

    for split in SPLITS:
        if len(splits[split]) == 0:
            raise BenchmarkError(f"datasets.{name}: the {split} split is empty{dropped}")
    return TextClassificationData(name=name, label_names=label_names, duplicates_dropped=duplicates, **splits)


def _check_splittable(name: str, spec: DatasetSpec, labels: np.ndarray, label_names: tuple[str, ...],
                      cut: list[str]) -> None:
    """Every class must reach train and each split cut from it: a class seen only in a
    held-out split scores zero there whatever the encoder, and says nothing about it."""
    needed = 1 + len(cut)
    counts = np.bincount(labels, minlength=len(label_names))
    rare = np.flatnonzero(counts < needed)
    if rare.size == 0:
        return
    rarest = rare[np.argsort(counts[rare], kind="stable")]
    shown = ", ".join(f"{label_names[i]!r} ({counts[i]})" for i in rarest[:5]) + (", ..." if rare.size > 5 else "")
    raise BenchmarkError(
        f"datasets.{name}.label: {rare.size} of the {len(label_names)} classes of column '{spec.label}' have "
        f"fewer than {needed} examples, one for train and one for each split cut from it "
        f"({' and '.join(cut)}): {shown}; drop or merge the rare classes"
    )


# Invisible characters that NFKC keeps and a tokenizer drops (BERT's and MPNet's drop format and
# control characters, and combining marks with the accents): besides the categories Cf and Cc,
# the combining grapheme joiner, the variation selectors and the Hangul fillers.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0") | {chr(c) for c in range(0xFE00, 0xFE10)} | {
    chr(c) for c in range(0xE0100, 0xE01F0)}


def normalized_text(text: str) -> str:
    """The text as duplicates are compared: NFKC, without invisible characters, with runs of
    whitespace as one space, case folded. Texts a tokenizer turns into the same ids (`a\u200bb`
    and `ab`) compare equal; "" for a text that shows nothing."""
    visible = "".join(char for char in unicodedata.normalize("NFKC", text)
                      if char.isspace() or not (unicodedata.category(char) in ("Cf", "Cc") or char in _INVISIBLE))
    return " ".join(visible.split()).casefold()


def _drop_duplicates(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], int]:
    """The tables without repeated texts (equal in `normalized_text`; for pairs, both texts),
    and how many rows that dropped.

    A text in two splits would be scored on examples the model trained on, so held-out
    splits keep their copy: test first, then validation, then train, and the test split
    loses only its own repeats. Within a split the first row is kept, also when a copy
    carries another label: which of two conflicting labels is right cannot be told from
    the data, and the source's order is a choice that does not depend on the seed.
    """
    seen: set[tuple[str, ...]] = set()
    kept, dropped = {}, 0
    for split in ("test", "validation", "train"):
        if split not in tables:
            continue
        table = tables[split]
        columns = [table[column] for column in ("text", "text_pair") if column in table]
        keep = []
        for texts in zip(*columns):
            key = tuple(map(normalized_text, texts))
            keep.append(key not in seen)
            seen.add(key)
        kept[split] = table[keep]
        dropped += len(table) - int(sum(keep))
    return {split: kept[split] for split in tables}, dropped


def _pick_split(name: str, frames: dict[str, pd.DataFrame], spec: DatasetSpec, split: str) -> str | None:
    if split in spec.splits:
        wanted = spec.splits[split]
        if wanted not in frames:
            raise BenchmarkError(
                f"datasets.{name}.splits.{split}: the source has no split '{wanted}'; "
                f"it has {', '.join(frames)}"
            )
        return wanted
    if spec.splits:  # an explicit mapping leaves unnamed splits to be cut from train
        return None
    aliases = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}[split]
    return next((alias for alias in aliases if alias in frames), None)


def _check_table(name: str, split: str, frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    if len(frame) == 0:
        raise BenchmarkError(f"datasets.{name}: the {split} split is empty")
    text_columns = [spec.text] + ([spec.text_pair] if spec.text_pair else [])
    for key, column in [("text", spec.text), ("text_pair", spec.text_pair), ("label", spec.label)]:
        if column is not None and column not in frame.columns:
            raise BenchmarkError(
                f"datasets.{name}.{key}: column '{column}' is missing from the {split} split; "
                f"its columns are {', '.join(map(repr, frame.columns))}"
            )
    table = frame[text_columns + [spec.label]].rename(
        columns={spec.text: "text", spec.text_pair or "": "text_pair", spec.label: "label"}
    )
    for key, column in [("text", spec.text), ("text_pair", spec.text_pair)]:
        if column is None:
            continue
        values = table[key]
        # A blank text (also one of invisible characters only) is as empty to the model as a
        # missing one: [CLS] [SEP] and a label.
        bad = values.map(lambda v: not isinstance(v, str) or not normalized_text(v))
        if bad.any():
            raise BenchmarkError(
                f"datasets.{name}.{key}: column '{column}' has {int(bad.sum())} empty or non-text "
                f"value(s), the first being {_shown(values[bad].iloc[0])} ({_rows(spec, split, values.index[bad])}); "
                f"fill in or remove those rows"
            )
    unlabeled = table["label"].isna()
    if unlabeled.all():
        raise BenchmarkError(
            f"datasets.{name}.label: column '{spec.label}' has no labels in the {split} split "
            f"(hidden test labels?); map another split with 'splits'"
        )
    table = table[~unlabeled]
    _check_labels(name, split, table["label"], spec)
    labels = table["label"]
    # A missing label turns an integer column into floats (0.0, 1.0); they are the same
    # classes as another split's 0 and 1.
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        table = table.assign(label=labels.astype("int64"))
    return table


def _label_kind(value) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    return "number" if isinstance(value, numbers.Number) else type(value).__name__


def _check_labels(name: str, split: str, labels: pd.Series, spec: DatasetSpec) -> None:
    """Labels become classes through their text, so values that would merge or split
    classes unseen are refused: 1 and "1" (one class, two spellings), "pos" and " pos"
    (two classes), and a blank cell (a class of its own). Text labels are kept as written:
    "007" and "7" are two classes."""
    key = f"datasets.{name}.label: column '{spec.label}'"
    kinds = labels.map(_label_kind)
    odd = ~kinds.isin(["text", "number", "boolean"])
    if odd.any():
        raise BenchmarkError(f"{key} holds {kinds[odd].iloc[0]} values such as {_shown(labels[odd].iloc[0])} "
                             f"({_rows(spec, split, labels.index[odd])}); a label is one text or number per row")
    if kinds.nunique() > 1:
        examples = ", ".join(f"{kind} {labels[kinds == kind].iloc[0]!r} "
                             f"({_rows(spec, split, labels.index[kinds == kind][:1])})" for kind in sorted(set(kinds)))
        raise BenchmarkError(f"{key} mixes label types: {examples}; 1 and \"1\" would become one class, "
                             f"so write every label the same way (all quoted or none)")
    if kinds.iloc[0] != "text":
        return
    blank = labels.str.strip() == ""
    if blank.any():
        raise BenchmarkError(f"{key} has {int(blank.sum())} blank label(s) ({_rows(spec, split, labels.index[blank])}); "
                             f"label those rows, or leave the cell empty (null in JSON) to drop them as unlabeled")
    spellings: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        spellings.setdefault(label.strip(), []).append(label)
    clash = next((found for found in spellings.values() if len(found) > 1), None)
    if clash:
        raise BenchmarkError(f"{key} has labels that differ only in surrounding spaces: "
                             f"{', '.join(map(repr, clash))}; they would be separate classes, so strip the spaces")


def _shown(value) -> str:
    """A cell as its file holds it, on one line: `123 (a number)`, not numpy's `np.int64(123)`;
    a list cell (Parquet, JSON) as `['a', 'b', ...]`, not numpy's two-line array."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (np.ndarray, list, tuple)):
        items = [item.item() if isinstance(item, np.generic) else item for item in list(value)]
        return f"[{', '.join(map(repr, items[:3]))}{', ...' if len(items) > 3 else ''}]"
    if value is None or isinstance(value, float) and np.isnan(value):
        return "an empty cell"
    return f"{value!r} (a number)" if isinstance(value, numbers.Number) else repr(value)


def _rows(spec: DatasetSpec, split: str, index: pd.Index) -> str:
    """Rows numbered from 1 as a user counts them in the file (a header not counted)."""
    shown = ", ".join(str(int(i) + 1) for i in index[:5]) + (", ..." if len(index) > 5 else "")
    return f"{'row' if len(index) == 1 else 'rows'} {shown} of {spec.path if spec.source == 'file' else f'the {split} split'}"


def _to_split(table: pd.DataFrame, label_ids: dict[str, int]) -> Split:
    return Split(
        texts=tuple(table["text"]),
        text_pairs=tuple(table["text_pair"]) if "text_pair" in table else None,
        labels=np.array([label_ids[str(v)] for v in table["label"]], dtype=np.int64),
    )


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, taken), with round(fraction * n) taken in proportion to each class.

    Classes get their share by largest remainder, so the total is exact; each class
    with two or more examples keeps at least one on each side, so a small dataset
    still has every class in every split.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quotas = fraction * counts
    taken_counts = np.floor(quotas).astype(int)
    shortfall = int(round(fraction * len(labels))) - taken_counts.sum()
    for index in np.argsort(-(quotas - taken_counts), kind="stable")[:max(shortfall, 0)]:
        taken_counts[index] += 1
    splittable = counts >= 2
    taken_counts[splittable] = np.clip(taken_counts[splittable], 1, counts[splittable] - 1)
    rest, taken = [], []
    for label, count in zip(classes, taken_counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        taken.append(members[:count])
        rest.append(members[count:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(taken))


def stratified_cap(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of exactly `limit` examples (`limit` < len(labels)), each class in proportion
    to its count by largest remainder, and at least one of each class while `limit` allows."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = limit * counts / len(labels)
    kept = np.floor(quotas).astype(int)
    floor = 1 if limit >= len(classes) else 0
    kept = np.maximum(kept, floor)
    # Flooring leaves a shortfall, the one-of-each floor a surplus: settle either one example
    # at a time, where the kept count is furthest below (or above) the class's quota.
    while kept.sum() < limit:
        kept[np.argmax(np.where(kept < counts, quotas - kept, -np.inf))] += 1
    while kept.sum() > limit:
        kept[np.argmax(np.where(kept > floor, kept - quotas, -np.inf))] -= 1
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in zip(classes, kept)]
    return np.sort(np.concatenate(chosen))
