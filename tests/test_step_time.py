"""Fitting a batching server's step time from serving-benchmark results (`fit_step_time`, `fit-
server`).
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused, run_cli

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
    fit = jt.deploy.fit_step_time(*files)
    assert fit.interval("tau0")[0] < 0.02 < fit.interval("tau0")[1]
    assert fit.interval("tau1")[0] < 0.0005 < fit.interval("tau1")[1]
    assert fit.model(max_batch=32).step_time == (fit.tau0, fit.tau1)
    shipped = jt.deploy.fit_step_time(
        jt.__path__[0] + "/data/synthetic_step_times.csv"  # labelled synthetic in its header
    )
    assert abs(shipped.tau1 - 0.0005) < 3 * shipped.se_tau1 + 1e-5
    # a step time that bends (attention cost growing with the batch) is flagged
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256.0])
    with pytest.warns(jt.deploy.FitWarning, match="bends upward"):
        jt.deploy.fit_step_time(concurrency=n, step_time=0.02 + 0.0001 * n + 2e-6 * n**2)
    # a gentle curvature over many points: the quadratic term's test still speaks
    with pytest.warns(jt.deploy.FitWarning, match="not linear"):
        jt.deploy.fit_step_time(
            concurrency=n, step_time=0.02 + 0.0001 * n + 5e-8 * n**2 - 1e-10 * n**3
        )


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
        jt.deploy.fit_step_time(f, f, f)


# ------------------------------------------------ regressions of the second reliability trial


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    "name, text, words",
    [
        (
            "both.csv",
            "concurrency,tpot,tpot_ms\n1,0.02,99\n4,0.022,99\n16,0.028,99\n",
            "both",
        ),  # S10
        (
            "bigint.json",
            '{"max_concurrency": 1' + "0" * 400 + ', "median_tpot_ms": 22}',
            "too large",
        ),  # T2
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),  # T2
        (
            "huge.csv",
            "concurrency,tpot_ms\n1,1e300\n4,1.1e300\n16,1.3e300\n",
            "not a decode step",
        ),  # U11
        (
            "rate.jsonl",  # U1: a request-rate sweep in JSON Lines: said so, not 'Extra data'
            '{"max_concurrency": null, "median_tpot_ms": 20}\n'
            '{"max_concurrency": null, "median_tpot_ms": 24}\n',
            "request-rate run",
        ),
    ],
)
def test_bad_benchmark_files_are_refused_in_one_line(tmp_path, name, text, words):
    assert_refused(["fit-server", _write(tmp_path, name, text)], words)


def test_non_regular_and_empty_paths_are_refused():
    """H4: a device is never read; U7: an empty name is not the current directory."""
    assert_refused(["fit-server", "/dev/zero"], "not a regular file")
    assert_refused(["fit-server", ""], "empty")


def test_json_lines_null_median_and_a_bom_are_read(tmp_path):
    """U1: JSON Lines hold one result a line; U2: a null median falls back to the mean;
    U8: a UTF-8 byte-order mark is not part of the header."""
    runs = _write(
        tmp_path,
        "runs.jsonl",
        '{"max_concurrency": 1, "median_tpot_ms": 20}\n'
        '{"max_concurrency": 8, "median_tpot_ms": null, "mean_tpot_ms": 24}\n',
    )
    bom = _write(tmp_path, "bom.csv", b"\xef\xbb\xbfconcurrency,tpot_ms\n64,50\n")
    n, t = jt.deploy.read_step_times(runs, bom)
    np.testing.assert_allclose(n, [1, 8, 64])
    np.testing.assert_allclose(t, [0.020, 0.024, 0.050])


def test_a_slope_whose_interval_holds_zero_is_flagged():
    """S9: the warning follows the reported 95% interval, not a 2-SE rule."""
    n = np.array([1.0, 4.0, 16.0, 64.0, 2.0])
    t = np.array([20.0, 60.0, 25.0, 90.0, 10.0]) / 1e3
    with pytest.warns(jt.deploy.FitWarning, match="does not clearly grow"):
        fit = jt.deploy.fit_step_time(concurrency=n, step_time=t)
    assert fit.interval("tau1")[0] < 0


def test_fit_arguments_outside_their_domain_are_refused():
    """S14, T4: a level outside (0, 1), an unknown parameter, strings for numbers."""
    fit = jt.deploy.fit_step_time(concurrency=[1, 4, 16], step_time=[0.020, 0.022, 0.028])
    for name, level in (("tau0", 2.0), ("tau0", True), ("tau2", 0.95)):
        with pytest.raises(jt.InputError, match="level|name"):
            fit.interval(name, level)
    with pytest.raises(jt.InputError, match="concurrency"):
        jt.deploy.fit_step_time(concurrency=["a", 2, 4], step_time=[0.02, 0.022, 0.028])


# ------------------------------------------- real benchmark files: SGLang, request-rate sweeps


def _sglang_line(rate, completed, duration, e2e_ms, itl_ms, concurrency=None):
    # the keys sglang/benchmark/serving.py (sglang 0.5.23) appends per run with --output-file;
    # an infinite rate is written as the bare token Infinity, as json.dumps does
    line = {
        "backend": "sglang",
        "dataset_name": "random",
        "request_rate": rate,
        "max_concurrency": None,
        "duration": duration,
        "completed": completed,
        "total_output_tokens": completed * 500,
        "output_throughput": completed * 500 / duration,
        "mean_e2e_latency_ms": e2e_ms,
        "median_e2e_latency_ms": e2e_ms,
        "median_itl_ms": itl_ms,
    }
    if concurrency is not None:
        line["concurrency"] = concurrency
    return json.dumps(line)


def test_a_request_rate_sweep_in_sglang_json_lines_is_fitted_without_overloaded_runs(tmp_path):
    """The concurrency of a request-rate run is its mean decode batch, output throughput x
    ITL; overload is judged while requests arrived (the drain after the last arrival, about
    one mean latency, is not sending time): the rate-8 run of a 300-s sweep that finished its
    2,400 requests 47 s after the arrivals stopped kept up (before, 6.9/s of 8 over the whole
    duration dropped it); the rate-16 run that completed 13.7/s while 16/s arrived did not."""
    tau0, tau1 = 0.012, 0.00013
    lines = []
    for rate in (1.0, 2.0, 4.0):
        n = 4 * rate**1.5  # any batch: the fit must recover it from the file
        itl = tau0 + tau1 * n
        line = json.loads(_sglang_line(rate, 300 * rate, 300.0, 9e3, 1e3 * itl))
        line["output_throughput"] = n / itl  # tokens/s = batch / step time
        lines.append(json.dumps(line))
    lines.append(_sglang_line(8.0, 2400, 347.0, 52_000.0, 1e3 * (tau0 + tau1 * 60)))
    lines[-1] = lines[-1].replace('"output_throughput": ', '"x": ')
    line = json.loads(lines[-1])
    line["output_throughput"] = 60 / (tau0 + tau1 * 60)
    lines[-1] = json.dumps(line)
    lines.append(_sglang_line(16.0, 3200, 383.0, 149_000.0, 179.0))  # 13.7/s of 16
    path = _write(tmp_path, "sglang.jsonl", "\n".join(lines) + "\n")
    with pytest.warns(jt.deploy.FitWarning, match="line 5: overloaded"):
        fit = jt.deploy.fit_step_time(path)
    assert (fit.tau0, fit.tau1) == pytest.approx((tau0, tau1), rel=1e-6)
    assert fit.concurrency.tolist() == pytest.approx([4.0, 4 * 2**1.5, 32.0, 60.0])
    assert "throughput x ITL" in fit.methods[0] and len(fit.excluded) == 1
    # without a throughput: SGLang's reported concurrency, else Little's law (both said)
    reported = _write(tmp_path, "c.jsonl", _sglang_line(math.inf, 100, 10.0, 1e3, 20.0, 7.5))
    text = reported.read_text().replace('"output_throughput"', '"x"')
    reported.write_text(text)
    assert jt.deploy.read_step_times(reported)[0].tolist() == [7.5]


CORPUS = Path(__file__).parent / "data" / "benchmarks"


def test_a_public_sglang_rate_sweep_mixing_two_datasets_is_refused_then_split():
    """DataCrunch's H200 SGLang sweep (MIT; tests/data/benchmarks): five random-dataset runs
    at 1-16 requests/s and two ShareGPT runs in one file. Mixed runs are refused with the
    groups listed; group 1 fits with tau1 > 0, the rate-16 run left out and named."""
    online = CORPUS / "datacrunch_llama33_70b_h200_sglang_online.jsonl"
    err = assert_refused(["fit-server", online], "2 deployments", "group 1", "sharegpt")
    assert "--group" in err
    with pytest.warns(jt.deploy.FitWarning, match="line 5: overloaded"):
        fit = jt.deploy.fit_step_time(online, group=1)
    assert fit.tau1 > 0 and fit.concurrency.size == 4
    assert "line 5" in fit.excluded[0]
    # the batch is the file's own throughput x ITL
    first = json.loads(online.read_text().splitlines()[0])
    assert fit.concurrency[0] == pytest.approx(
        first["output_throughput"] * first["median_itl_ms"] / 1e3
    )
    rc, out, err = run_cli(["fit-server", online, "--group", "1"])
    assert rc == 0 and "left out" in out and "line 5" in out


def test_runs_of_different_lengths_are_not_fitted_together():
    offline = CORPUS / "datacrunch_llama33_70b_h200_sglang_offline.jsonl"
    with pytest.raises(jt.InputError, match="6 deployments or workloads"):
        jt.deploy.fit_step_time(offline)
    with pytest.raises(jt.InputError, match="3 or more distinct concurrencies"):
        jt.deploy.fit_step_time(offline, group=4)  # 4096/1024 twice: one concurrency


def test_a_public_vllm_concurrency_sweep_at_an_infinite_rate():
    """InferenceX's gpt-oss-120b sweep (Apache-2.0): request_rate "inf" with max_concurrency
    4-256; the batch is max_concurrency, which throughput x TPOT confirms within 5%."""
    path = CORPUS / "inferencex_gpt-oss-120b_vllm_concurrency_sweep.jsonl"
    fit = jt.deploy.fit_step_time(path)
    assert fit.concurrency.tolist() == [4, 8, 32, 128, 256]
    assert 0 < fit.tau1 and 0.005 < fit.tau0 < 0.0095
    for line in path.read_text().splitlines():
        run = json.loads(line)
        batch = run["output_throughput"] * run["median_tpot_ms"] / 1e3
        assert batch == pytest.approx(run["max_concurrency"], rel=0.05)


def test_a_vllm_rate_sweep_with_an_infinite_rate_run_fits_with_a_positive_slope(tmp_path):
    """The trial's vLLM sweep (Llama 3.2 3B, rates 10, 30 and inf; 300/900/900 prompts; TPOT
    13.5 -> 24.7 -> 43.7 ms; no end-to-end latency in the file), rebuilt here from the numbers
    in the trial report: the rate-10 run kept up (its 36 s include ~7 s of drain), and the
    infinite-rate run's batch is throughput x TPOT (before: Little's law over the queue gave
    hundreds to thousands, and tau1 < 0)."""
    runs = [
        (10.0, 300, 36.03, 13.51, 2249.2),
        (30.0, 900, 40.57, 24.65, 5914.3),
        ("inf", 900, 20.92, 43.74, 11481.0),
    ]
    lines = []
    for rate, n, duration, tpot, throughput in runs:
        lines.append(
            json.dumps(
                {
                    "backend": "vllm",
                    "model_id": "meta-llama/Llama-3.2-3B-Instruct",
                    "num_prompts": n,
                    "request_rate": rate,
                    "max_concurrency": None,
                    "duration": duration,
                    "completed": n,
                    "total_input_tokens": 1000 * n,
                    "total_output_tokens": 500 * n,
                    "output_throughput": throughput,
                    "mean_ttft_ms": 60.0,
                    "median_tpot_ms": tpot,
                    "mean_tpot_ms": tpot,
                }
            )
        )
    path = _write(tmp_path, "sweep.jsonl", "\n".join(lines))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jt.deploy.FitWarning)  # three points: a bend is possible
        fit = jt.deploy.fit_step_time(path)
    assert fit.excluded == () and fit.tau1 > 0
    assert fit.concurrency.tolist() == pytest.approx([30.4, 145.8, 502.2], rel=0.01)


def test_fit_server_refuses_duplicates_and_impossible_values_in_one_line(tmp_path):
    """A5: the same file twice; F1: concurrencies too close or beyond a physical range; F3:
    step times below a decode step; an unknown format names the keys it has."""
    path = CORPUS / "inferencex_gpt-oss-120b_vllm_concurrency_sweep.jsonl"
    assert_refused(["fit-server", path, path], "the same run as")
    close = _write(
        tmp_path,
        "c.csv",
        "concurrency,tpot\n1,0.020\n1.0000000000000002,0.021\n1.0000000000000004,0.022\n",
    )
    assert_refused(["fit-server", close], "3 or more distinct concurrencies")
    big = _write(tmp_path, "big.csv", "concurrency,tpot\n1e200,0.020\n2e200,0.021\n3e200,0.022\n")
    assert_refused(["fit-server", big], "concurrency", "at most")
    tiny = _write(tmp_path, "t.csv", "concurrency,tpot\n1,1e-320\n2,2e-320\n4,3e-320\n")
    assert_refused(["fit-server", tiny], "not a decode step")
    inf = _write(
        tmp_path,
        "l.json",
        json.dumps(
            {
                "request_rate": 1.0,
                "completed": 1e308,
                "duration": 1e-300,
                "mean_e2el_ms": 10.0,
                "median_tpot_ms": 20.0,
            }
        ),
    )
    assert_refused(["fit-server", inf], "not finite")
    other = _write(tmp_path, "o.json", json.dumps({"foo": 1, "bar_ms": 2}))
    assert_refused(["fit-server", other], "the file has: bar_ms, foo")


def test_aiperf_and_inferencex_aggregated_results_are_read(tmp_path):
    """aiperf / genai-perf exports (metrics as {unit, avg, p50, ...}; the concurrency in the
    load phase) and InferenceX's aggregated results (seconds, `conc`)."""
    files = []
    for c in (4, 16, 64):
        export = {
            "schema_version": "1.3",
            "inter_token_latency": {"unit": "ms", "avg": 8.0 + 0.05 * c, "p50": 8.0 + 0.05 * c},
            "output_token_throughput": {"unit": "tokens/sec", "avg": 1000.0},
            "input_config": {
                "phases": [{"type": "concurrency", "concurrency": c}],
                "model_names": ["qwen3-4b"],
            },
        }
        files.append(_write(tmp_path, f"aiperf{c}.json", json.dumps(export)))
    fit = jt.deploy.fit_step_time(*files)
    assert (fit.tau0, fit.tau1) == pytest.approx((0.008, 0.00005), rel=1e-6)
    agg = [
        _write(
            tmp_path,
            f"agg{c}.json",
            json.dumps(
                {"model": "kimi", "framework": "vllm", "conc": c, "median_tpot": 0.01 + 1e-4 * c}
            ),
        )
        for c in (4, 32, 64)
    ]
    fit = jt.deploy.fit_step_time(*agg)
    assert (fit.tau0, fit.tau1) == pytest.approx((0.01, 1e-4), rel=1e-6)


def test_a_bending_step_time_is_flagged_from_three_points():
    """The SGLang sweep whose overloaded runs were kept: the t-test had no power there."""
    n = np.array([8.0, 16.0, 52.0, 360.0])
    t = np.array([13.6, 14.8, 19.4, 70.8]) / 1e3
    with pytest.warns(jt.deploy.FitWarning, match="bends upward"):
        jt.deploy.fit_step_time(concurrency=n[1:], step_time=t[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("error", jt.deploy.FitWarning)
        jt.deploy.fit_step_time(concurrency=[1, 4, 16], step_time=[0.020, 0.022, 0.028])


def test_an_sglang_offline_run_uses_the_decode_batch_not_the_queue(tmp_path):
    """The trial's SGLang offline file: the reported `concurrency` (sum of latencies over the
    duration) counts queued requests, and gave tau1 0.032 against 0.100 ms/request from
    throughput x ITL. With the throughput in the file the batch is throughput x ITL."""
    tau0, tau1 = 0.010, 0.0001
    lines = []
    for batch in (16, 64, 256):
        itl = tau0 + tau1 * batch
        line = json.loads(_sglang_line(math.inf, 2000, 300.0, 9e4, 1e3 * itl, 3.1 * batch))
        line["output_throughput"] = batch / itl
        line["max_concurrency"] = None
        lines.append(json.dumps(line))
    fit = jt.deploy.fit_step_time(_write(tmp_path, "offline.jsonl", "\n".join(lines)))
    assert fit.tau1 == pytest.approx(tau1, rel=0.01)
    assert fit.methods[0].startswith("output throughput x ITL")
