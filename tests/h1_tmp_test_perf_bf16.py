import json
from benchmark.config import load_config
from benchmarks import perf
from tests.test_study import write_config

def test_bf16_rows(tmp_path, tiny_encoders):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert", "roberta"), training__precision="bf16"))
    plan = perf.Plan(throughput_examples=32, batch_size=8, search_budget_s=6, search_train_examples=48, matmul_size=128)
    report = perf.run(config, plan, tmp_path / "perf")
    written = json.loads((tmp_path / "perf" / "PERF.json").read_text())
    assert written["native_bf16"] is True
    assert "ours bf16 random" in written["throughput"]["bert"]
