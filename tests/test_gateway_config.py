"""The gateway's configuration: every value is checked against its type and range when the
configuration is built, so `serve --check` refuses what `serve` would fail on later (each
refusal one line naming the key, exit 2), and the address is checked before the start-up
solve."""

from __future__ import annotations

import dataclasses
import socket
import typing

import pytest
from conftest import FUZZ_SCALE, assert_refused, run_cli, strict_loads
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_tokens import InputError, gateway

UP = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "toml,words",
    [
        ('override_client_budget = "false"', "override_client_budget: true or false"),
        ('learn_service = "no"', "learn_service: true or false"),
        ("learn_service = 1", "learn_service: true or false"),
        ("host = 5", "host: a string"),
        ('host = ""', "host:"),
        ('host = "no such host!"', "host:"),
        ('host = "256.0.0.1"', "host:"),
        ("task_header = 5", "task_header: a string"),
        ('task_header = ""', "task_header"),
        ("task_field = 5", "task_field: a string"),
        ('task_field = ""', "task_field"),
        ('classifier = "no_such_module_xyz:f"', "classifier: cannot import no_such_module_xyz"),
        ('classifier = "json:no_such_function"', "classifier: json has no no_such_function"),
        ('classifier = "math:pi"', "classifier: math:pi is not callable"),
        ("classifier = 5", "classifier: a string"),
        ("workload = 5", "workload: a string"),
        ('workload = ""', "workload: a file path"),
        ("interval = 1" + "0" * 400, "interval"),
        ("step_time = [1" + "0" * 400 + ', 1]\nserver = "batching"', "step_time"),
        (
            "step_time = [0.02, 0.0005]",
            'step_time describes a batching server: set server = "batching"',
        ),
        ("max_batch = 8", "max_batch describes a batching server"),
        ('[models]\n"m" = "NOPE"', "models.m: 'NOPE' is not a task"),
        ('default_task = "nope"', "default_task: 'nope'"),
        ('passthrough = ["/v1/responses"]', "passthrough[0]"),
        ('passthrough = ["/metrics"]', "passthrough[0]"),
        ('passthrough = ["v1"]', "passthrough[0]"),
        ('allow_fields = ["custom_logit_processor"]', "allow_fields: custom_logit_processor"),
        ('api_key = "short"', "api_key: at least 8"),
        ('api_key = "env:JT_SURELY_UNSET_VARIABLE"', "api_key: the environment variable"),
        ('ready_path = "health"', "ready_path"),
        ("shutdown_grace = 0", "shutdown_grace"),
        ("min_evidence = -1", "min_evidence"),
        ("max_choices = 0", "max_choices"),
    ],
)
def test_a_bad_value_is_refused_by_check_naming_the_key(tmp_path, toml, words):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'upstream = "{UP}"\n{toml}\n')
    assert_refused(["serve", "--config", cfg, "--check"], words)


@pytest.mark.parametrize(
    "upstream,words",
    [
        ("http://[::1", "upstream: not a valid URL"),
        ("http://127.0.0.1:99999", "upstream:"),
        ("http://127.0.0.1:abc", "upstream:"),
        ("ftp://x", "upstream"),
        ("http://", "upstream"),
    ],
)
def test_a_bad_upstream_is_refused(upstream, words):
    assert_refused(["serve", "--upstream", upstream, "--check"], words)


def test_the_upstream_password_is_never_echoed():
    err = assert_refused(["serve", "--upstream", "ftp://admin:s3cr3t@x", "--check"], "upstream")
    assert "s3cr3t" not in err


def test_a_port_in_use_is_refused_before_the_solve_in_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_refused(["serve", "--upstream", UP, "--port", port], f"--port {port}", "in use")


def test_check_says_why_every_budget_is_zero():
    rc, out, err = run_cli(["serve", "--upstream", UP, "--target-latency", "0.001", "--check"])
    assert rc == 0, err
    policy = strict_loads(out)
    assert all(t["budget"] == 0 for t in policy["tasks"].values())
    assert "cannot be met" in policy["gateway"]["reason"]


def test_every_key_is_a_flag_typed_by_its_annotation():
    """The flags are built from the configuration's type hints: a boolean is a switch, a
    number is parsed and refused by name, a list is comma-separated."""
    from jaxopt_tokens.cli import main  # noqa: F401 - the parser is built from the hints

    hints = typing.get_type_hints(gateway.GatewayConfig)
    assert {f.name for f in dataclasses.fields(gateway.GatewayConfig)} == set(hints)
    assert_refused(["serve", "--upstream", UP, "--interval", "soon", "--check"], "--interval")
    assert_refused(
        ["serve", "--upstream", UP, "--passthrough", "/v1/responses", "--check"], "passthrough"
    )
    rc, out, err = run_cli(["serve", "--upstream", UP, "--no-learn-service", "--check"])
    assert rc == 0, err


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**400), 10**400),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
)


@settings(max_examples=300 * FUZZ_SCALE, deadline=None)
@given(
    key=st.sampled_from([f.name for f in dataclasses.fields(gateway.GatewayConfig)]), value=_values
)
def test_any_value_of_any_key_is_accepted_or_refused_naming_the_key(key, value):
    """Arbitrary values: the configuration is built or an `InputError` names the key."""
    values = {"upstream": UP, key: value}
    try:
        gateway.config_from_dict(values, "serve.toml")
    except InputError as e:
        assert key in str(e), (
            key,
            value,
            str(e),
        )


def test_the_docs_configuration_block_shows_the_defaults():
    """D14: the docs listed host = "0.0.0.0" beside keys shown at their defaults (the
    default is 127.0.0.1). Every key the block shows without an example's comment is at its
    default."""
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "gateway.md").read_text()
    block = re.search(r"## Configuration.*?```toml\n(.*?)```", text, re.S).group(1)
    shown = tomllib.loads(block)
    examples = {
        "upstream",
        "workload",
        "default_task",
        "classifier",
        "api_key",
        "admin_key",
        "upstream_key",
        "models",
        "rules",
    }
    defaults = {f.name: f.default for f in dataclasses.fields(gateway.GatewayConfig)}
    for key, value in shown.items():
        assert key in defaults, key
        if key in examples:
            continue
        default = defaults[key]
        expected = list(default) if isinstance(default, tuple) else default
        assert value == expected, (key, value, default)
    assert shown["host"] == "127.0.0.1"
