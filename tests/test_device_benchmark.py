"""`benchmarks/device.py` runs here at small sizes, so the accelerator command cannot rot."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks" / "device.py"


@pytest.mark.slow  # a subprocess compiling every benchmark part: run by CI's slow step
@pytest.mark.xdist_group("device_benchmark")
def test_device_benchmark_runs_small_and_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("device_benchmark", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "results.json"
    result = module.main(
        ["--scale", "small", "--repeats", "0", "--dtypes", "float32", "--out", str(out)]
    )
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    assert data["device"] and data["jax"] and data["sizes"] == module.SIZES["small"]
    cases = {r["case"] for r in data["results"]}
    assert {"solve, random instances", "CLEAR clearing", "simulate (policies x queries)"} <= cases
    for r in data["results"]:
        assert r["warm_s"] > 0 and r["per_second"] > 0
        assert r["check"] == 1.0, r  # every case solved / finite / cleared
