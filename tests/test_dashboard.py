"""optuna-dashboard, started for real on loopback, serves what a study wrote."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from benchmark.cli import main
from tests.test_study import write_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url: str, deadline: float):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_dashboard_shows_studies_intermediate_values_and_user_attrs(tmp_path, tiny_encoders):
    executable = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results),
                 "--datasets", "topics", "--n-trials", "2"]) == 0

    port = _free_port()
    server = subprocess.Popen(
        [executable, f"sqlite:///{results / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        summaries = _get_json(f"http://127.0.0.1:{port}/api/studies", deadline)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["tiny-topics"]
        attrs = {a["key"]: a["value"] for a in summaries[0]["user_attrs"]}
        assert attrs["dataset"] == "topics" and attrs["metric"] == "accuracy"
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{summaries[0]['study_id']}?after=0", deadline)
        assert len(detail["trials"]) == 2
        for trial in detail["trials"]:
            assert trial["intermediate_values"], "learning curves reach the dashboard"
            assert {a["key"] for a in trial["user_attrs"]} >= {"wall_seconds", "model_type"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("optuna-dashboard did not stop on SIGTERM")
