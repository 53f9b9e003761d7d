"""The architecture's rules, checked on the source: what a user-facing layer may import, where
each public name is documented, and that solvers read latency models only through their
methods. A change that breaks one of these fails here, not in review."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

import jaxopt_tokens as jt
from jaxopt_tokens import clear, internal, strategy

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxopt_tokens"


def _imports(source: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """`(module, level, names)` of every import statement in `source`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, 0, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level, tuple(a.name for a in node.names)))
    return out


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    # IPython magics are not Python; notebooks here have none, but skip them if they come
    return "\n".join(line for c in code for line in c.splitlines() if not line.startswith("%"))


USER_FACING = sorted(
    [*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("benchmarks/*.py")], key=lambda p: p.name
)


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: p.name)
def test_notebooks_and_benchmarks_import_only_public_names(path):
    source = _notebook_code(path) if path.suffix == ".ipynb" else path.read_text()
    for module, level, names in _imports(source):
        if module.startswith("jaxopt_tokens"):
            assert not _private(module), f"{path.name} imports the private module {module}"
            assert not any(n.startswith("_") for n in names), f"{path.name}: {module} {names}"
    assert not re.search(r"\bjt\._[a-z]", source), f"{path.name} reaches a private jt._ name"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("cli/*.py")), ids=lambda p: p.name)
def test_the_cli_imports_only_the_public_api(path):
    for module, level, names in _imports(path.read_text()):
        if level == 2:  # from the package: only its public namespaces
            assert not _private(module), f"cli/{path.name} imports the private module ..{module}"


def _documented() -> dict[str, list[str]]:
    """Every `::: jaxopt_tokens.X` directive in the API pages, by target."""
    found: dict[str, list[str]] = {}
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        for target in re.findall(r"^::: (jaxopt_tokens[\w.]*)", page.read_text(), re.M):
            found.setdefault(target, []).append(page.name)
    return found


_SERVERS = {"FIFO", "Kingman", "Priority", "ProcessorSharing", "TimeVarying", "ContinuousBatching"}


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for room in ("_solver", "_queue", "_deploy", "_learn")
        for p in (ROOT / "jaxopt_tokens" / room).glob("*.py")
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_models_say_what_they_are(path):
    """Solvers, simulators and planners never probe a model's attributes (`getattr` /
    `hasattr` on a model or its base) and never list server classes by hand
    (`isinstance(m, (FIFO, Priority, ...))`): a model says what it is through its type
    (`AbstractSingleServer`) and the attributes `LatencyModel` declares."""
    import ast

    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id in ("getattr", "hasattr") and node.args:
            target = ast.unparse(node.args[0])
            if re.search(r"\b(model|base|server)\b", target):
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        if node.func.id == "isinstance" and len(node.args) == 2:
            kinds = node.args[1]
            names = {e.id for e in getattr(kinds, "elts", ()) if isinstance(e, ast.Name)}
            if len(names & _SERVERS) >= 2:
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not bad, f"{path.name} asks which model it has: {bad}"


def _model_classes(base=jt.LatencyModel):
    for sub in base.__subclasses__():
        yield sub
        yield from _model_classes(sub)


def test_a_concrete_model_is_final():
    """equinox's abstract/final pattern: a model derives only from abstract models (the
    protocol `LatencyModel` and `Abstract*` bases), so no model inherits another's behaviour
    and overrides it back (Kingman was a FIFO that undid five of FIFO's methods)."""
    models = {m for m in _model_classes() if m.__module__.startswith("jaxopt_tokens.")}
    assert {jt.FIFO, jt.Kingman, jt.Priority, jt.ProcessorSharing, jt.TimeVarying} <= models
    for model in models:
        for base in model.__mro__[1:]:
            if base in models:
                assert base.__name__.startswith("Abstract"), (
                    f"{model.__name__} derives from the concrete model {base.__name__}"
                )


def test_the_architecture_page_names_every_room_and_module():
    """docs/architecture.md's tree is checked against the package: every subpackage (a
    room) and every module file appears on it, so the page cannot fall behind the code."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = re.search(r"```text\n(.*?)```", text, re.S).group(1)
    package = ROOT / "jaxopt_tokens"
    missing = []
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts or path.name == "__init__.py":
            continue
        rel = path.relative_to(package)
        room = f"{rel.parts[0]}/" if len(rel.parts) > 1 else None
        if room is not None and room not in tree:
            missing.append(room)
        if not re.search(rf"(?<![\w.]){re.escape(path.name)}", tree) and path.parent.name != "cli":
            missing.append(str(rel))
    for room in sorted(p.name for p in package.iterdir() if p.is_dir() and p.name[0] != "_"):
        if room != "__pycache__" and f"{room}/" not in tree:
            missing.append(room + "/")
    assert not missing, f"not on docs/architecture.md: {sorted(set(missing))}"


NAMESPACES = ("traffic", "learn", "deploy", "sweeps", "router", "theory")
WHOLE_MODULE_PAGES = ("clear", "strategy", "gateway")


def test_the_top_level_holds_the_core_and_the_rest_is_in_namespaces():
    """What a user needs at the top, the rest in named namespaces (each name in one place);
    the docs' table names every namespace."""
    assert len(jt.__all__) <= 75, len(jt.__all__)
    table = (ROOT / "docs" / "api" / "index.md").read_text()
    for space in (*NAMESPACES, *WHOLE_MODULE_PAGES):
        assert space in jt.__all__
        assert f"`jaxopt_tokens.{space}`" in table, space
    for space in NAMESPACES:
        for name in getattr(jt, space).__all__:
            assert name not in jt.__all__, f"{name} is both at the top and in {space}"


def test_every_public_name_is_on_exactly_one_api_page():
    documented = _documented()
    names = [n for n in jt.__all__ if n not in (*NAMESPACES, *WHOLE_MODULE_PAGES, "__version__")]
    for space in NAMESPACES:  # each name of a namespace under its own qualified name
        names += [f"{space}.{n}" for n in getattr(jt, space).__all__]
    for name in names:
        pages = documented.get(f"jaxopt_tokens.{name}", [])
        assert len(pages) == 1, f"jaxopt_tokens.{name} is documented on {pages or 'no page'}"
    stale = {t for t in documented if t.removeprefix("jaxopt_tokens.") not in names}
    assert stale <= {f"jaxopt_tokens.{m}" for m in (*WHOLE_MODULE_PAGES, "internal")}, stale
    for sub in ("clear", "strategy", "gateway", "internal"):  # whole-module pages
        assert len(documented.get(f"jaxopt_tokens.{sub}", [])) == 1, sub
    assert clear.__all__ and strategy.__all__ and internal.__all__


def _solver_classes():
    seen, todo = set(), [jt.AbstractSolver]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen and sub.__module__.startswith("jaxopt_tokens"):
                seen.add(sub)
                todo.append(sub)
    return sorted(seen, key=lambda c: c.__name__)


def test_solvers_hold_settings_only():
    solvers = _solver_classes()
    assert {c.__name__ for c in solvers} >= {
        "AggregateNewton",
        "FixedPoint",
        "ProjectedGradient",
        "SpectralGradient",
        "BatchingNewton",
    }
    for cls in solvers:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert "model" not in fields, f"{cls.__name__} holds a latency model"


MODEL_CLASSES = ("FIFO", "Priority", "ProcessorSharing", "ContinuousBatching", "LatencyModel")


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("_solver/*.py")), ids=lambda p: p.name)
def test_solvers_never_ask_which_model_they_have(path):
    """A solver reads a model through `LatencyModel`'s methods; the only `isinstance` on a
    model is the driver's check of its argument's type."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            kinds = ast.unparse(node.args[1])
            for model in MODEL_CLASSES:
                if re.search(rf"\b{model}\b", kinds):
                    allowed = path.name == "solve.py" and kinds == "LatencyModel"
                    assert allowed, f"{path.name}:{node.lineno}: isinstance(..., {kinds})"


def test_validation_runs_once_per_solve(monkeypatch):
    """The driver validates a workload once; the staged path, the gradient and the solvers
    work on the validated problem (counted while the solve is traced)."""
    import jax

    import jaxopt_tokens._solver.solve as driver

    calls = []
    original = driver.validate_members

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(driver, "validate_members", counted)
    # a shape no other test solves, so that this solve is traced here
    w = jt.random_workloads(jax.random.key(5), 3, num_tasks=7)
    grads = jax.grad(lambda a: jt.solve(w.replace(alpha=a)).objective.sum())(w.alpha)
    assert len(calls) == 1 and grads.shape == (3,)


@pytest.mark.parametrize("server", ["fifo", "batching", "fifo-replay", "batching-replay"])
def test_simulate_validates_once_and_its_kernels_validate_nothing(server, monkeypatch):
    """`simulate` is the one door: it checks the workload and the budgets once (a `Replay`
    was checked when it was made), and the kernels it calls take the prepared values."""
    import numpy as np

    from jaxopt_tokens._queue import simulation
    from jaxopt_tokens._traffic.replay import Replay
    from jaxopt_tokens._workload import Workload

    calls = {"workload": 0, "tokens": 0, "replay": 0}

    def counting(name, original):
        def counted(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return counted

    w = jt.default_workload()
    model = jt.ContinuousBatching(step_time=(0.02, 0.0005)) if "batching" in server else None
    arrivals = None
    if "replay" in server:
        times = np.cumsum(np.random.default_rng(0).exponential(10.0, 400))
        arrivals = jt.traffic.Replay(jt.traffic.Trace(times), utilization=0.4)
    monkeypatch.setattr(Workload, "validate", counting("workload", Workload.validate))
    monkeypatch.setattr(simulation, "_tokens", counting("tokens", simulation._tokens))
    monkeypatch.setattr(Replay, "__check_init__", counting("replay", Replay.__check_init__))
    tokens = np.full(w.num_tasks, 50.0)
    jt.simulate(w, tokens, None if arrivals else 400, 2, model=model, arrivals=arrivals)
    assert calls == {"workload": 1, "tokens": 1, "replay": int(arrivals is not None)}, calls


def test_the_gateways_request_path_is_in_named_steps():
    """No function of the gateway's request path (`gateway/_app.py`) is over ~60 lines: thin
    handlers per endpoint over a body parser, an admission step, one upstream sender and the
    relay, each a function a reader can hold in view."""
    import ast

    tree = ast.parse((PACKAGE / "gateway" / "_app.py").read_text())
    long = {
        n.name: n.end_lineno - n.lineno + 1
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno is not None
        and n.end_lineno - n.lineno + 1 > 60
    }
    assert not long, f"functions over 60 lines in gateway/_app.py: {long}"
