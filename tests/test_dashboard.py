"""optuna-dashboard, started for real on loopback, serves what a study wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from benchmark.cli import main
from benchmark.search import study as study_module
from tests.helpers import free_port, write_config


def _get_json(url: str, deadline: float):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report: a pruned trial, deterministically."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


def test_dashboard_shows_studies_intermediate_values_and_user_attrs(tmp_path, tiny_encoders, monkeypatch):
    executable = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    monkeypatch.setattr(study_module, "make_pruner", lambda spec: PruneOddTrials())
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results),
                 "--datasets", "topics", "--n-trials", "2"]) == 0

    port = free_port()
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
        assert detail["objective_names"] == ["accuracy"], "no page says 'Objective 0'"
        assert len(detail["trials"]) == 2
        stored = optuna.load_study(study_name="tiny-topics", storage=f"sqlite:///{results / 'optuna.db'}")
        complete, pruned = stored.trials
        assert (complete.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED)
        for trial, shown in zip(stored.trials, detail["trials"]):
            assert [(v["step"], v["value"]) for v in shown["intermediate_values"]] == \
                sorted(trial.intermediate_values.items()), "learning curves at examples seen"
            assert {a["key"] for a in shown["user_attrs"]} >= {"wall_seconds", "model_type"}
            rows = [f"| {step} | {value:.4f} |" for step, value in sorted(trial.intermediate_values.items())]
            body = shown["note"]["body"]
            assert [row for row in rows if row in body] == rows, "the note lists every evaluation"
        assert detail["trials"][0]["note"]["body"].startswith("**bert**: complete\n")
        reason = pruned.user_attrs["prune_reason"]
        assert reason.startswith("pruned after 48 examples")
        assert detail["trials"][1]["note"]["body"].startswith(f"**bert**: pruned: {reason}\n")
        note = detail["note"]["body"]
        assert "1 of 2 trials finished" not in note and "2 of 2 trials finished" in note
        assert f"| bert | {complete.value:.4f} | #0 | 1 | 1 | 0 |" in note, "the study's leaderboard"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("optuna-dashboard did not stop on SIGTERM")


def test_study_note_ranks_encoders_by_their_best_complete_trial():
    from benchmark.tracking.dashboard import study_note

    space = {"encoder": optuna.distributions.CategoricalDistribution(["bert", "roberta"])}

    def trial(number, encoder, state, value=None):
        made = optuna.trial.create_trial(state=state, value=value, params={"encoder": encoder}, distributions=space)
        made.number = number
        return made

    trials = [trial(0, "bert", TrialState.COMPLETE, 0.8), trial(1, "bert", TrialState.PRUNED, 0.95),
              trial(2, "roberta", TrialState.COMPLETE, 0.9), trial(3, "roberta", TrialState.FAIL),
              trial(4, "bert", TrialState.RUNNING)]
    lines = study_note(trials, "accuracy", 6).splitlines()
    assert lines[0].startswith("**Leaderboard** (3 of 6 trials finished; best validation accuracy")
    assert lines[2:6] == ["| encoder | best validation accuracy | best trial | complete | pruned | failed |",
                          "| --- | ---: | ---: | ---: | ---: | ---: |",
                          "| roberta | 0.9000 | #2 | 1 | 0 | 1 |",
                          "| bert | 0.8000 | #0 | 1 | 1 | 0 |"], "a pruned trial's last report is no best"
