"""The docs' screenshots of the three places users look: report.html, optuna-dashboard
and the MLflow UI, taken with headless Chromium after a real run.

    python -m perf.screenshots --results-dir results --mlflow-store sqlite:///mlflow.db [--out runs/screenshots]

The dashboard and the MLflow UI are started here on free local ports over the run's own
storage and tracking store, and stopped afterwards; nothing is written but the PNGs.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perf import RUNS

DEFAULT_OUT = RUNS / "screenshots"

# Long enough for each single-page app to fetch its data and draw its plots.
_RENDER_BUDGET_MS = 15_000
_SERVER_START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _server(command: list[str], ready_url: str) -> Iterator[None]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{command[0]} did not start (command: {' '.join(command)})") from None
                time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def screenshot(url: str, out: Path, width: int = 1600, height: int = 1000) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},{height}", f"--virtual-time-budget={_RENDER_BUDGET_MS}",
         f"--screenshot={out}", url],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
    )
    print(f"wrote {out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RESULTS_DIR/optuna.db)")
    parser.add_argument("--study-id", type=int, default=1, help="the dashboard's study to show")
    parser.add_argument("--mlflow-store", help="MLflow backend store URI of the run (omit to skip MLflow)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNGs go (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent

    report = args.results_dir / "report.html"
    screenshot(report.resolve().as_uri(), args.out / "report.png", height=1800)
    page = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as scratch:
        for section in ("expected-performance-section", "dataset-0", "final"):
            # Headless Chromium shoots the top of a page: the copy shows the one section,
            # first. Plotly's text-measuring element stays, or axis titles land askew.
            hide = f"body > :not(#{section}):not(#js-plotly-tester) {{display: none}}"
            alone = Path(scratch) / f"{section}.html"
            alone.write_text(page.replace("</head>", f"<style>{hide}</style></head>", 1), encoding="utf-8")
            screenshot(alone.as_uri(), args.out / f"report_{section}.png", height=1400)

    storage = args.storage or f"sqlite:///{args.results_dir / 'optuna.db'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with _server([str(bin_dir / "optuna-dashboard"), storage, "--port", str(port)], f"{base}/api/studies"):
        study = f"{base}/dashboard/studies/{args.study_id}"
        screenshot(study, args.out / "dashboard_study.png")
        screenshot(f"{study}/trials", args.out / "dashboard_trials.png", height=1400)
        screenshot(f"{study}/note", args.out / "dashboard_note.png")

    if args.mlflow_store:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        command = [str(bin_dir / "mlflow"), "server", "--backend-store-uri", args.mlflow_store,
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        with _server(command, f"{base}/health"):
            from mlflow import MlflowClient

            experiments = [e for e in MlflowClient(base).search_experiments() if e.name != "Default"]
            for experiment in experiments:
                screenshot(f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                           args.out / f"mlflow_{experiment.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
