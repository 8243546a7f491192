"""Dataset sources, and their preparation into validated, stratified splits.

A source only reads raw tables (one per split it has). `prepare` is the single place
that checks columns and values, maps labels to ids and cuts missing splits, so every
source gets the same checks and the same clear errors.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from benchmark import assets
from benchmark.config import DatasetSpec
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

    def load(self) -> dict[str, pd.DataFrame]:
        if not self.path.is_file():
            raise BenchmarkError(f"datasets.{self.dataset_name}.path: file not found: {self.path}")
        readers = {
            ".csv": pd.read_csv,
            ".tsv": lambda p: pd.read_csv(p, sep="\t"),
            ".jsonl": lambda p: pd.read_json(p, lines=True),
            ".json": lambda p: pd.read_json(p, lines=not _starts_with(p, "[")),
            ".parquet": pd.read_parquet,
        }
        reader = readers.get(self.path.suffix.lower())
        if reader is None:
            raise BenchmarkError(
                f"datasets.{self.dataset_name}.path: {self.path} has suffix '{self.path.suffix}'; "
                f"use one of {', '.join(readers)}"
            )
        try:
            return {"train": reader(self.path)}
        except Exception as exc:
            raise BenchmarkError(f"{self.path}: could not be read: {exc}") from None


def _starts_with(path: Path, character: str) -> bool:
    with path.open() as handle:
        return handle.read(4096).lstrip().startswith(character)


def _read_bbc_news() -> dict[str, pd.DataFrame]:
    root = assets.fetch(assets.BBC_NEWS)
    rows = [
        {"text": path.read_bytes().decode("utf-8", errors="replace").strip(), "label": label_dir.name}
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(label_dir.glob("*.txt"))
    ]
    return {"train": pd.DataFrame(rows)}


def _read_twitter_sentiment() -> dict[str, pd.DataFrame]:
    frame = pd.read_csv(assets.fetch(assets.TWITTER_SENTIMENT), encoding="latin-1")
    return {"train": frame.rename(columns={"sentiment": "label"})[["text", "label"]]}


def _read_drug_reviews() -> dict[str, pd.DataFrame]:
    root = assets.fetch(assets.DRUG_REVIEWS)
    return {split: _drug_review_table(root / f"drugsCom{file_split}.tsv")
            for split, file_split in (("train", "Train"), ("test", "Test"))}


def _drug_review_table(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", encoding="utf-8")
    # The scraped reviews keep Drugs.com's HTML entities (didn&#039;t, &amp;, &rsquo;),
    # which a tokenizer would split into pieces no pretrained vocabulary saw in running
    # text; and each review is wrapped in one pair of literal quotes, the same for every
    # class, which only costs tokens.
    unquoted = frame["review"].str.strip().str.removeprefix('"').str.removesuffix('"')
    return pd.DataFrame({"text": unquoted.map(html.unescape).str.strip(), "label": frame["rating"]})


OFFLINE_DATASETS = {"bbc_news": _read_bbc_news, "twitter_sentiment": _read_twitter_sentiment,
                    "drug_reviews": _read_drug_reviews}


@dataclass(frozen=True)
class OfflineSource:
    asset_name: str
    dataset_name: str

    def load(self) -> dict[str, pd.DataFrame]:
        reader = OFFLINE_DATASETS.get(self.asset_name)
        if reader is None:
            raise BenchmarkError(
                f"datasets.{self.dataset_name}: no built-in offline dataset '{self.asset_name}'; "
                f"choose one of {', '.join(OFFLINE_DATASETS)}"
            )
        return reader()


def source_for(name: str, spec: DatasetSpec) -> DatasetSource:
    if spec.source == "hub":
        return HubSource(spec.id, spec.subset, name)
    if spec.source == "file":
        return FileSource(spec.path, name)
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
    tables = {split: _check_table(name, split, frames[source_split], spec)
              for split, source_split in chosen.items() if source_split is not None}
    tables, duplicates = _drop_duplicates(tables)

    # From train alone: a class the model is never trained on cannot be learned, and
    # reading the label set off the test split would leak what it holds.
    label_names = tuple(sorted({str(v) for v in tables["train"]["label"]}))
    if len(label_names) < 2:
        raise BenchmarkError(
            f"datasets.{name}: column '{spec.label}' has a single class ({', '.join(label_names)}) "
            f"in the train split; classification needs at least two"
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

    for missing, fraction in (("test", spec.split_fractions.test), ("validation", spec.split_fractions.validation)):
        if missing not in splits:
            rest, taken = stratified_split(splits["train"].labels, fraction, rng)
            splits[missing] = splits["train"].subset(taken)
            splits["train"] = splits["train"].subset(rest)

    for split, limit in (("train", spec.max_train_examples), ("validation", spec.max_validation_examples)):
        if limit is not None and len(splits[split]) > limit:
            _, kept = stratified_split(splits[split].labels, limit / len(splits[split]), rng)
            splits[split] = splits[split].subset(kept)

    for split in SPLITS:
        if len(splits[split]) == 0:
            raise BenchmarkError(f"datasets.{name}: the {split} split is empty"
                                 f"{f' after dropping {duplicates} duplicate(s)' if duplicates else ''}")
    return TextClassificationData(name=name, label_names=label_names, duplicates_dropped=duplicates, **splits)


def _drop_duplicates(tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], int]:
    """The tables without repeated texts (equal after case folding and collapsing
    whitespace; for pairs, both texts), and how many rows that dropped.

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
            key = tuple(" ".join(text.split()).casefold() for text in texts)
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
                f"its columns are {', '.join(map(str, frame.columns))}"
            )
    table = frame[text_columns + [spec.label]].rename(
        columns={spec.text: "text", spec.text_pair or "": "text_pair", spec.label: "label"}
    )
    for key, column in [("text", spec.text), ("text_pair", spec.text_pair)]:
        if column is None:
            continue
        values = table["text" if key == "text" else "text_pair"]
        bad = values.map(lambda v: not isinstance(v, str))
        if bad.any():
            first = values[bad].iloc[0]
            raise BenchmarkError(
                f"datasets.{name}.{key}: column '{column}' in the {split} split has "
                f"{int(bad.sum())} non-text value(s), the first being {first!r} "
                f"(row {int(bad.idxmax())})"
            )
    unlabeled = table["label"].isna()
    if unlabeled.all():
        raise BenchmarkError(
            f"datasets.{name}.label: column '{spec.label}' has no labels in the {split} split "
            f"(hidden test labels?); map another split with 'splits'"
        )
    table = table[~unlabeled]
    labels = table["label"]
    # A missing label turns an integer column into floats (0.0, 1.0); they are the same
    # classes as another split's 0 and 1.
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        table = table.assign(label=labels.astype("int64"))
    return table


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
