"""Fitting a batching server's step time from serving-benchmark results (`fit_step_time`, `fit-
server`).
"""

import json

import numpy as np
import pytest

import jaxopt_tokens as jt


def _vllm_result(n, tpot_ms):
    # the keys vllm/benchmarks/serve.py (main_async) writes, as in vLLM 0.33.0
    return {
        "date": "20261201-000000",
        "backend": "vllm",
        "model_id": "Qwen/Qwen3-8B",
        "num_prompts": 500,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": n,
        "duration": 100.0,
        "completed": 500,
        "total_output_tokens": 100000,
        "mean_tpot_ms": tpot_ms * 1.01,
        "median_tpot_ms": tpot_ms,
        "std_tpot_ms": 1.0,
        "p99_tpot_ms": tpot_ms * 1.2,
        "mean_ttft_ms": 50.0,
        "max_concurrent_requests": n,
    }


def test_fit_step_time_from_vllm_benchmark_files_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for n in (1, 4, 16, 64, 128, 256):
        f = tmp_path / f"c{n}.json"
        f.write_text(
            json.dumps(_vllm_result(n, 1e3 * (0.02 + 0.0005 * n) * (1 + 0.01 * rng.normal())))
        )
        files.append(f)
    fit = jt.fit_step_time(*files)
    assert fit.interval("tau0")[0] < 0.02 < fit.interval("tau0")[1]
    assert fit.interval("tau1")[0] < 0.0005 < fit.interval("tau1")[1]
    assert fit.model(max_batch=32).step_time == (fit.tau0, fit.tau1)
    shipped = jt.fit_step_time(
        jt.__path__[0] + "/data/synthetic_step_times.csv"  # labelled synthetic in its header
    )
    assert abs(shipped.tau1 - 0.0005) < 3 * shipped.se_tau1 + 1e-5
    # a step time that bends (attention cost growing with the batch) is flagged
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256.0])
    with pytest.warns(jt.FitWarning, match="not linear"):
        jt.fit_step_time(concurrency=n, step_time=0.02 + 0.0001 * n + 2e-6 * n**2)


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"median_tpot_ms": 20}', "max_concurrency"),
        ('{"max_concurrency": 4}', "tpot"),
        ('{"max_concurrency": "four", "median_tpot_ms": 20}', "max_concurrency"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
        ("concurrency,tpot\n1,0.02\n2,-1\n", "line 3"),
        ("concurrency,speed\n1,2\n", "tpot"),
    ],
)
def test_bad_benchmark_files_name_the_field_and_line(tmp_path, text, needle):
    f = tmp_path / ("x.json" if text.startswith(("{", "[")) else "x.csv")
    f.write_text(text)
    with pytest.raises(jt.InputError, match=needle):
        jt.fit_step_time(f, f, f)
