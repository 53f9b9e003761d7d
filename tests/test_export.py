"""Policy export for serving engines: field names, clamps, zero budgets, JSON, CLI."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest
from conftest import (
    assert_refused,
    run_cli,
    strict_loads,
)

import jaxopt_tokens as jt
from jaxopt_tokens import InputError
from jaxopt_tokens.cli import export as cli_export
from jaxopt_tokens.deploy import (
    DEFAULT_ANSWER_RESERVE,
    export_policy,
    openai_client_kwargs,
    write_policy,
)

NAMES = ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")
BUDGETS = [0.0, 340.89, 0.0, 0.0, 346.24, 30.14]
QWEN3_PROCESSOR = (
    '{"callable": "80049554000000000000008c2a73676c616e672e7372742e73616d706c696e672e63'
    "7573746f6d5f6c6f6769745f70726f636573736f72948c215177656e335468696e6b696e674275646765"
    '744c6f67697450726f636573736f729493942e"}'
)


@pytest.fixture
def w(table1):
    return table1


def _parser():
    parser = argparse.ArgumentParser(prog="jaxopt-tokens")
    sub = parser.add_subparsers(dest="command")
    cli_export.register(sub)
    return parser


def _run_cli(argv, capsys):
    args = _parser().parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr()


# ----------------------------------------------------------------------------- formats


def test_vllm_fields(w):
    p = export_policy(w, BUDGETS, engine="vllm", rounding="round")
    assert p["engine"] == "vllm"
    assert list(p["tasks"]) == list(NAMES)
    gsm = p["tasks"]["GSM8K"]
    assert gsm["budget"] == 341
    assert gsm["request"] == {
        "max_completion_tokens": 341 + DEFAULT_ANSWER_RESERVE,
        "thinking_token_budget": 341,
    }
    # zero -> thinking disabled through the chat template, no budget field
    aime = p["tasks"]["AIME"]["request"]
    assert aime == {
        "max_completion_tokens": DEFAULT_ANSWER_RESERVE,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_sglang_fields(w):
    p = export_policy(w, BUDGETS, engine="sglang", answer_reserve=100, rounding="round")
    bbh = p["tasks"]["BBH"]["request"]
    assert bbh["max_completion_tokens"] == 446
    assert bbh["custom_params"] == {"thinking_budget": 346}
    # the processor that reads custom_params, as SGLang's own CustomLogitProcessor.to_str()
    # serialises the built-in class (pinned from sglang with dill 0.4.1)
    assert bbh["custom_logit_processor"] == QWEN3_PROCESSOR
    assert p["settings"]["server_flags"] == ["--enable-custom-logit-processor"]
    assert p["tasks"]["GPQA"]["request"] == {
        "max_completion_tokens": 100,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    strict = export_policy(w, BUDGETS, engine="sglang", sglang_processor="strict")
    assert "custom_logit_processor" not in strict["tasks"]["BBH"]["request"]
    assert "--enable-strict-thinking" in strict["settings"]["server_flags"]


def test_sglang_processor_reference_loads_the_class(monkeypatch):
    """The string decodes the way SGLang's server does (orjson/json, hex, dill/pickle) to
    the processor class itself, for every built-in processor."""
    import pickle
    import sys
    import types

    from jaxopt_tokens.deploy import SGLANG_PROCESSORS

    for name in ("sglang", "sglang.srt", "sglang.srt.sampling"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    fake = types.ModuleType("sglang.srt.sampling.custom_logit_processor")
    for ref in SGLANG_PROCESSORS.values():
        if ref is not None:
            cls = type(ref[1], (), {})
            cls.__module__ = ref[0]
            setattr(fake, ref[1], cls)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    for route, ref in SGLANG_PROCESSORS.items():
        if ref is None:
            continue
        policy = export_policy(
            jt.default_workload(), BUDGETS, engine="sglang", sglang_processor=route
        )
        text = policy["tasks"]["BBH"]["request"]["custom_logit_processor"]
        loaded = pickle.loads(bytes.fromhex(json.loads(text)["callable"]))
        assert loaded is getattr(fake, ref[1])
        assert pickle.dumps(loaded, protocol=4).hex() == json.loads(text)["callable"]


def test_openai_fields_and_effort_thresholds(w):
    tokens = [0, 500, 1024, 1025, 8192, 20000]
    p = export_policy(w, tokens, engine="openai", answer_reserve=0)
    req = {n: t["request"] for n, t in p["tasks"].items()}
    assert set(req["GSM8K"]) == {"max_completion_tokens", "reasoning_effort"}
    assert [r["reasoning_effort"] for r in req.values()] == [
        "none",  # vLLM and SGLang read effort != "none" as thinking on: 0 must be "none"
        "low",
        "low",
        "medium",
        "medium",
        "high",
    ]
    assert req["GSM8K"]["max_completion_tokens"] == 500
    assert p["settings"]["effort_bounds"] == {"low": 1024, "medium": 8192}
    assert p["settings"]["effort_at_zero"] == "none"
    lowest = export_policy(w, tokens, engine="openai", answer_reserve=0, zero_budget="budget")
    assert lowest["tasks"]["AIME"]["request"]["reasoning_effort"] == "minimal"


def test_openai_custom_effort_bounds(w):
    p = export_policy(
        w,
        [0, 10, 100, 1000, 5000, 9000],
        engine="openai",
        effort_bounds={"low": 50, "medium": 2000},
    )
    assert [t["request"]["reasoning_effort"] for t in p["tasks"].values()] == [
        "none",
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]


def test_json_format_neutral_fields(w):
    p = export_policy(w, BUDGETS, engine="json", answer_reserve=10, rounding="round")
    assert p["tasks"]["ARC-Challenge"]["request"] == {"max_tokens": 40, "thinking_budget": 30}
    # zero_budget applies here too: "disable" switches thinking off, "budget" sends 0
    assert p["tasks"]["AIME"]["request"] == {"max_tokens": 10, "enable_thinking": False}
    p = export_policy(w, BUDGETS, engine="json", answer_reserve=10, zero_budget="budget")
    assert p["tasks"]["AIME"]["request"] == {"max_tokens": 10, "thinking_budget": 0}


def test_zero_budget_sends_field(w):
    p = export_policy(w, BUDGETS, engine="vllm", zero_budget="budget")
    assert p["tasks"]["AIME"]["request"] == {
        "max_completion_tokens": DEFAULT_ANSWER_RESERVE,
        "thinking_token_budget": 0,
    }
    p = export_policy(w, BUDGETS, engine="sglang", zero_budget="budget")
    assert p["tasks"]["AIME"]["request"]["custom_params"] == {"thinking_budget": 0}


def test_requests_are_independent_objects(w):
    p = export_policy(w, BUDGETS, engine="vllm")
    p["tasks"]["AIME"]["request"]["chat_template_kwargs"]["enable_thinking"] = True
    assert p["tasks"]["GPQA"]["request"]["chat_template_kwargs"]["enable_thinking"] is False


# ----------------------------------------------------------------------------- clamps


def test_reserve_caps_budget_below_max_tokens(w):
    w = w.replace(max_tokens=1000.0)
    p = export_policy(w, [0, 900, 0, 0, 700, 5000], engine="vllm", answer_reserve=200)
    t = p["tasks"]
    assert t["GSM8K"]["budget"] == 800 and t["GSM8K"]["clamped"] == ["answer_reserve"]
    assert t["GSM8K"]["request"]["max_completion_tokens"] == 1000
    assert t["BBH"]["budget"] == 700 and t["BBH"]["clamped"] == []
    assert t["ARC-Challenge"]["budget"] == 800
    assert t["ARC-Challenge"]["clamped"] == ["max_tokens", "answer_reserve"]
    for entry in t.values():
        assert entry["request"]["max_completion_tokens"] <= 1000
        assert entry["budget"] <= 1000 - 200


def test_min_budget_raises_small_positive_only(w):
    p = export_policy(w, [0, 3, 0, 0, 346, 30], engine="json", min_budget=64)
    t = p["tasks"]
    assert t["GSM8K"]["budget"] == 64 and t["GSM8K"]["clamped"] == ["min_budget"]
    assert t["ARC-Challenge"]["budget"] == 64
    assert t["BBH"]["budget"] == 346
    assert t["AIME"]["budget"] == 0  # zero stays zero (thinking off)


def test_reserve_wins_over_min_budget(w):
    w = w.replace(max_tokens=100.0)
    p = export_policy(w, [0, 5, 0, 0, 0, 0], engine="json", min_budget=64, answer_reserve=80)
    assert p["tasks"]["GSM8K"]["budget"] == 20
    assert p["tasks"]["GSM8K"]["clamped"] == ["min_budget", "answer_reserve"]


def test_rounding_modes(w):
    x = [0.0, 340.2, 0.0, 0.0, 346.0000001, 30.5]
    ceil = export_policy(w, x, engine="json", rounding="ceil")["tasks"]
    assert [ceil[n]["budget"] for n in NAMES] == [0, 341, 0, 0, 346, 31]
    rnd = export_policy(w, x, engine="json", rounding="round")["tasks"]
    assert [rnd[n]["budget"] for n in NAMES] == [0, 340, 0, 0, 346, 30]  # numpy rounds half to even


def test_integer_rounding_matches_integer_budgets(w):
    sol = jt.solve(w)
    p = export_policy(w, sol, engine="json")
    expected = np.asarray(jt.integer_budgets(sol.tokens, w)).astype(int).tolist()
    assert [p["tasks"][n]["budget"] for n in NAMES] == expected == [0, 341, 0, 0, 346, 30]
    assert p["source"]["status"] == "converged"
    assert abs(p["source"]["objective_continuous"] - float(sol.objective)) < 1e-12
    assert abs(p["source"]["objective"] - 9.7542) < 1e-3


def test_mapping_tokens(w):
    p = export_policy(
        w, dict(zip(reversed(NAMES), reversed(BUDGETS))), engine="json", rounding="round"
    )
    assert p["tasks"]["GSM8K"]["budget"] == 341


# ----------------------------------------------------------------------------- metadata, JSON


def test_metadata(w):
    p = export_policy(w, BUDGETS, engine="vllm", source="table1.toml")
    assert p["generated_by"] == f"jaxopt_tokens {jt.__version__}"
    src = p["source"]
    assert src["workload"] == "table1.toml"
    assert src["tasks"] == list(NAMES)
    assert src["max_tokens"] == 32768.0 and src["alpha"] == 30.0 and src["arrival_rate"] == 0.1
    assert isinstance(src["objective"], float)
    assert p["settings"]["answer_reserve"] == DEFAULT_ANSWER_RESERVE


@pytest.mark.parametrize("fmt", ["vllm", "sglang", "openai", "json"])
def test_json_roundtrip(w, tmp_path, fmt):
    p = export_policy(w, jt.solve(w), engine=fmt)
    path = tmp_path / "policy.json"
    text = write_policy(p, path)
    assert json.loads(path.read_text()) == p == json.loads(text)


def test_openai_client_kwargs(w):
    p = export_policy(w, BUDGETS, engine="vllm", rounding="round")
    assert openai_client_kwargs(p, "GSM8K") == {
        "max_completion_tokens": 341 + DEFAULT_ANSWER_RESERVE,
        "extra_body": {"thinking_token_budget": 341},
    }
    assert openai_client_kwargs(p, "AIME") == {
        "max_completion_tokens": DEFAULT_ANSWER_RESERVE,
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }
    o = export_policy(w, BUDGETS, engine="openai")
    assert "extra_body" not in openai_client_kwargs(o, "BBH")
    with pytest.raises(InputError, match="NOPE"):
        openai_client_kwargs(p, "NOPE")


# ----------------------------------------------------------------------------- bad input


def test_unknown_engine(w):
    with pytest.raises(InputError, match="engine"):
        export_policy(w, BUDGETS, engine="tgi")


def test_negative_tokens_name_task(w):
    bad = list(BUDGETS)
    bad[1] = -5
    with pytest.raises(InputError, match=r"tokens\[GSM8K\]"):
        export_policy(w, bad)


def test_nonfinite_and_non_number_tokens(w):
    with pytest.raises(InputError, match=r"tokens\[BBH\].*NaN|tokens\[BBH\].*nan"):
        export_policy(w, [0, 1, 0, 0, float("nan"), 0])
    with pytest.raises(InputError, match=r"tokens\[AIME\]"):
        export_policy(w, ["x", 1, 0, 0, 0, 0])


def test_wrong_length(w):
    with pytest.raises(InputError, match="tokens has 3 values"):
        export_policy(w, [1, 2, 3])
    with pytest.raises(InputError, match="tokens"):
        export_policy(w, [[1, 2, 3, 4, 5, 6]])


def test_mapping_unknown_and_missing(w):
    with pytest.raises(InputError, match="unknown task"):
        export_policy(w, {**dict(zip(NAMES, BUDGETS)), "MMLU": 3})
    with pytest.raises(InputError, match=r"missing task.*AIME"):
        export_policy(w, dict(zip(NAMES[1:], BUDGETS[1:])))


@pytest.mark.parametrize(
    "field,kw",
    [
        ("answer_reserve", {"answer_reserve": -1}),
        ("min_budget", {"min_budget": -3}),
        ("min_budget", {"min_budget": 2.5}),
        ("rounding", {"rounding": "stochastic"}),
        ("zero_budget", {"zero_budget": "maybe"}),
        ("effort_bounds", {"effort_bounds": {"low": 100, "medium": 50}}),
        ("effort_bounds", {"effort_bounds": {"low": 100, "high": 500}}),
    ],
)
def test_bad_options_name_field(w, field, kw):
    with pytest.raises(InputError, match=field):
        export_policy(w, BUDGETS, **kw)


def test_reserve_above_max_tokens(w):
    with pytest.raises(InputError, match="answer_reserve"):
        export_policy(w.replace(max_tokens=100.0), BUDGETS, answer_reserve=101)


def test_batched_workload_rejected():
    w = jt.make_workload(
        A=[0.5, 0.5],
        b=[0.01, 0.01],
        D=[0.1, 0.1],
        t0=[0.1, 0.1],
        c=[0.01, 0.01],
        arrival_rate=0.1,
        alpha=10.0,
        max_tokens=1000.0,
    )
    batched = jax.tree_util.tree_map(lambda x: np.stack([x, x]), w)
    with pytest.raises(InputError, match="unbatched"):
        export_policy(batched, [1, 2])


# ----------------------------------------------------------------------------- CLI


def test_cli_solves_and_prints(capsys):
    rc, out = _run_cli(["export", "--engine", "vllm"], capsys)
    assert rc == 0
    p = json.loads(out.out)
    assert p["tasks"]["GSM8K"]["request"] == {
        "max_completion_tokens": 597,
        "thinking_token_budget": 341,
    }
    assert p["source"]["workload"] == "default (Table I)"
    assert p["source"]["status"] == "converged"


def test_cli_writes_file_openai(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc, printed = _run_cli(
        ["export", "--engine", "openai", "-o", str(out), "--answer-reserve", "64"], capsys
    )
    assert rc == 0 and printed.out == ""
    p = json.loads(out.read_text())
    assert p["tasks"]["BBH"]["request"] == {"max_completion_tokens": 410, "reasoning_effort": "low"}


@pytest.mark.parametrize(
    "content",
    [
        json.dumps([0, 100, 0, 0, 200.4, 7]),
        json.dumps(dict(zip(NAMES, [0, 100, 0, 0, 200.4, 7]))),
        json.dumps({"tokens": [0, 100, 0, 0, 200.4, 7], "tasks": list(NAMES)}),
    ],
)
def test_cli_tokens_file(tmp_path, capsys, content):
    f = tmp_path / "t.json"
    f.write_text(content)
    rc, out = _run_cli(
        ["export", "--engine", "sglang", "--tokens", str(f), "--rounding", "round"], capsys
    )
    assert rc == 0
    p = json.loads(out.out)
    assert [p["tasks"][n]["budget"] for n in NAMES] == [0, 100, 0, 0, 200, 7]
    assert "status" not in p["source"]


def test_cli_max_tokens_override_caps_budget(capsys):
    rc, out = _run_cli(
        ["export", "--engine", "json", "--max-tokens", "300", "--answer-reserve", "100"], capsys
    )
    assert rc == 0
    p = json.loads(out.out)
    for entry in p["tasks"].values():
        assert entry["budget"] <= 200 and entry["request"]["max_tokens"] <= 300


def test_cli_bad_tokens_file(tmp_path, capsys):
    f = tmp_path / "t.json"
    f.write_text("[1, 2]")
    args = _parser().parse_args(["export", "--tokens", str(f)])
    with pytest.raises(InputError, match="tokens has 2 values"):
        args.func(args)
    f.write_text("{not json")
    with pytest.raises(InputError, match="--tokens"):
        args.func(args)
    args = _parser().parse_args(["export", "--tokens", str(tmp_path / "missing.json")])
    with pytest.raises(InputError, match="cannot read"):
        args.func(args)


def test_cli_rejects_unknown_format(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "--engine", "tgi"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "--answer-reserve", "-4"])


# ----------------------------------------------------------------------------- unlimited, SEs


def test_unlimited_budget_is_minus_one_where_the_engines_read_no_limit(w):
    tokens = dict(zip(NAMES, BUDGETS)) | {"AIME": None, "BBH": float("inf")}
    cap = int(w.max_tokens)
    vllm = export_policy(w, tokens, engine="vllm")["tasks"]
    assert vllm["AIME"]["request"] == {"max_completion_tokens": cap, "thinking_token_budget": -1}
    assert vllm["AIME"]["budget"] is None and vllm["AIME"]["tokens"] is None
    sglang = export_policy(w, tokens, engine="sglang")["tasks"]["BBH"]["request"]
    assert sglang["custom_params"] == {"thinking_budget": -1}
    assert export_policy(w, tokens, engine="json")["tasks"]["BBH"]["request"] == {
        "max_tokens": cap,
        "thinking_budget": None,
    }
    assert export_policy(w, tokens, engine="openai")["tasks"]["BBH"]["request"] == {
        "max_completion_tokens": cap,
        "reasoning_effort": "high",
    }
    write_policy(export_policy(w, tokens))  # strict JSON


def test_conservative_exports_the_lower_quantile(w):
    se = [0.0, 40.0, 0.0, 0.0, 10.0, 100.0]
    p = export_policy(w, BUDGETS, uncertainty=se, conservative=0.1, rounding="round")
    t = p["tasks"]
    z = -1.2815515655446004
    assert t["GSM8K"]["tokens_se"] == 40.0 and t["GSM8K"]["tokens"] == BUDGETS[1]
    assert t["GSM8K"]["budget"] == round(BUDGETS[1] + z * 40)
    assert t["BBH"]["budget"] == round(BUDGETS[4] + z * 10)
    assert t["ARC-Challenge"]["budget"] == 0  # the quantile is clipped at zero
    assert p["settings"]["conservative"] == 0.1
    plain = export_policy(w, BUDGETS, uncertainty=se, rounding="round")["tasks"]
    assert plain["GSM8K"]["budget"] == 341 and plain["GSM8K"]["tokens_se"] == 40.0
    with pytest.raises(InputError, match="conservative needs uncertainty"):
        export_policy(w, BUDGETS, conservative=0.1)
    with pytest.raises(InputError, match="conservative must be a probability"):
        export_policy(w, BUDGETS, uncertainty=se, conservative=1.5)
    with pytest.raises(InputError, match=r"uncertainty\[GSM8K\]"):
        export_policy(w, BUDGETS, uncertainty=[0, -1, 0, 0, 0, 0])


def test_cli_exports_budgets_with_the_fits_standard_errors(tmp_path, capsys):
    from jaxopt_tokens.cli.main import main

    shipped = jt.default_workload()
    data = tmp_path / "m.csv"
    data.write_text(jt.deploy.synthetic_measurements(shipped, jax.random.key(0)))
    shares = tmp_path / "shares.csv"
    shares.write_text(
        "task,share\n" + "".join(f"{n},{float(s)}\n" for n, s in zip(NAMES, shipped.share))
    )
    assert (
        main(
            [
                "fit",
                str(data),
                "--shares",
                str(shares),
                "-o",
                str(tmp_path / "w.toml"),
                "--format",
                "json",
            ]
        )
        == 0
    )
    (tmp_path / "fit.json").write_text(capsys.readouterr().out)
    argv = [
        "export",
        "--workload",
        str(tmp_path / "w.toml"),
        "--uncertainty",
        str(tmp_path / "fit.json"),
    ]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)["tasks"]
    assert main([*argv, "--conservative", "0.05"]) == 0
    low = json.loads(capsys.readouterr().out)["tasks"]
    for name in NAMES:
        assert plain[name]["tokens_se"] >= 0
        assert low[name]["budget"] <= plain[name]["budget"]
    assert any(low[n]["budget"] < plain[n]["budget"] for n in NAMES)
    # SEs from another workload (here: another arrival rate) are refused, naming the task
    assert main([*argv, "--arrival-rate", "0.3"]) == 2
    assert "belong to another workload" in capsys.readouterr().err
    assert main(["export", "--conservative", "0.1"]) == 2
    assert "--conservative needs --uncertainty" in capsys.readouterr().err


def test_export_cli(files, tmp_path):
    assert_refused(["export", "-o", files / "keep.txt"], "--force")
    assert (files / "keep.txt").read_text() == "keep me"
    rc, _, _ = run_cli(["export", "-o", files / "keep.txt", "--force"])
    assert rc == 0 and strict_loads((files / "keep.txt").read_text())["engine"] == "vllm"
    (tmp_path / "bool.json").write_text(json.dumps([True, 1, 2, 3, 4, 5]))
    assert_refused(["export", "--tokens", tmp_path / "bool.json"], "number")
    (tmp_path / "solve.json").write_text(
        json.dumps({"status": "max_iterations", "tokens": [1] * 6})
    )
    assert_refused(["export", "--tokens", tmp_path / "solve.json"], "did not converge")
    (tmp_path / "huge.json").write_text(json.dumps([30000] * 6))
    assert_refused(["export", "--tokens", tmp_path / "huge.json"], "utilization")
    assert_refused(["export", "--min-budget", "1000000"], "utilization")
    with pytest.warns(jt.UnstableQueueWarning, match="utilization"):
        policy = jt.deploy.export_policy(jt.default_workload(), [30000] * 6, engine="json")
    assert policy["source"]["utilization"] >= 1
    assert_refused(["export", "--tokens", files / "bad.bin"], "UTF-8")


# ------------------------------------------------ regressions of the second reliability trial


@pytest.mark.parametrize(
    "policy, task, words",
    [
        ({"tasks": {"GSM8K": {}}}, "GSM8K", "has no request"),  # U12
        ({"tasks": {"GSM8K": {"request": None}}}, "GSM8K", "has no request"),  # T4
        (None, "GSM8K", "policy"),
        ([], "GSM8K", "policy"),
        ('{"tasks": {}}', "GSM8K", "policy"),
        ({"tasks": {"GSM8K": {"request": {}}}}, "AIME", "not in the policy"),
    ],
)
def test_openai_client_kwargs_names_what_is_wrong(policy, task, words):
    with pytest.raises(jt.InputError, match=words):
        jt.deploy.openai_client_kwargs(policy, task)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "10", -1.0, True])
def test_standard_errors_follow_one_rule(bad):
    """U10, S11: NaN, inf, null, strings and negatives are all refused by one rule."""
    w = jt.default_workload()
    se = {name: 1.0 for name in w.task_names} | {"AIME": bad}
    with pytest.raises(jt.InputError, match=r"uncertainty\[AIME\] must be a finite"):
        jt.deploy.export_policy(w, jt.solve(w), engine="json", uncertainty=se, conservative=0.9)


def test_an_uncertainty_file_with_a_task_twice_is_refused(tmp_path):
    """S11: a duplicate row silently won (a 999-token standard error)."""
    w = jt.default_workload()
    tokens = np.asarray(jt.solve(w).tokens)
    rows = [
        {"task": n, "optimal_tokens": float(t), "optimal_tokens_se": 1.0}
        for n, t in zip(w.task_names, tokens)
    ]
    rows.append({"task": "GSM8K", "optimal_tokens": float(tokens[1]), "optimal_tokens_se": 999})
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"tasks": rows}))
    argv = ["export", "--engine", "json", "--uncertainty", path, "--conservative", "0.9"]
    assert_refused(argv, "appears twice")
