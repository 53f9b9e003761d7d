"""The documentation build means what it says: maths rendered at build time (no script, no
network), a formula the renderer cannot draw fails the build, and the strict build CI runs
fails on a single docstring warning."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("latex2mathml", reason="the docs extra is not installed")
pytest.importorskip("mkdocs", reason="the docs extra is not installed")

from mkdocs.exceptions import PluginError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _hooks():
    spec = importlib.util.spec_from_file_location("_docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def test_a_page_s_maths_becomes_mathml():
    page = (
        '<p>cost <span class="arithmatex">\\(J(l) = \\alpha \\sum_k \\pi_k p_k(l_k) &lt; 1\\)'
        '</span></p><div class="arithmatex">\\[\\arg\\max_l J(l)\\]</div>'
    )
    out = hooks.render_page_maths(page, "model.md")
    assert out.count("<math") == 2 and 'display="block"' in out and 'display="inline"' in out
    assert "\\(" not in out and "\\alpha" not in out and "&#x003B1;" in out  # alpha, drawn


@pytest.mark.parametrize(
    ("tex", "words"),
    [
        ("\\nosuchcommand{x}", ["model.md", "nosuchcommand"]),
        ("\tau", ["control character"]),
        ("\\newcommand{\\x}{y} \\x", ["model.md", "macro definition"]),
        ("\\left( x", ["model.md", "renderer failed"]),
    ],
)
def test_maths_the_renderer_cannot_draw_fails_the_build_naming_the_page(tex, words):
    page = f'<span class="arithmatex">\\({tex}\\)</span>'
    with pytest.raises(PluginError) as e:
        hooks.render_page_maths(page, "model.md")
    for w in words:
        assert w in str(e.value)


def test_a_literal_tex_delimiter_outside_the_maths_is_not_an_error():
    page = '<pre><code>re.compile(r"\\(a\\)")</code></pre><span class="arithmatex">\\(x\\)</span>'
    out = hooks.render_page_maths(page, "cli.md")
    assert 're.compile(r"\\(a\\)")' in out and out.count("<math") == 1


def test_notebook_markdown_maths_outside_code_spans():
    text = "at $\\lambda = 0.1$, `cost $x$ stays code`, and $$x_i = \\frac{1}{\\beta}$$"
    out = hooks.render_markdown_maths(text, "nb")
    assert "`cost $x$ stays code`" in out
    assert out.count("<math") == 2 and "$" not in out.replace("`cost $x$ stays code`", "")
    fenced = "```python\nprice = '$$1$$ and $2$'\n```\nthen $y$"
    out = hooks.render_markdown_maths(fenced, "nb")
    assert "price = '$$1$$ and $2$'" in out and out.count("<math") == 1


@pytest.mark.parametrize("path", sorted(ROOT.glob("notebooks/*.ipynb")), ids=lambda p: p.name)
def test_every_notebook_s_maths_renders(path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "markdown":
            hooks.render_markdown_maths("".join(cell["source"]), f"{path.name} cell {i}")


def test_the_site_loads_no_script_from_the_network():
    config = (ROOT / "mkdocs.yml").read_text()
    assert not re.search(r"https?://", config), "mkdocs.yml fetches something from the network"


def _ci_docs_command() -> list[str]:
    line = next(x for x in (ROOT / ".ci" / "run").read_text().splitlines() if "mkdocs build" in x)
    return line.split()


def test_ci_builds_the_docs_strictly_and_shows_the_warnings():
    words = _ci_docs_command()
    assert "--strict" in words
    assert not {"-q", "--quiet"} & set(words), "--quiet hides the warnings that fail the build"


def test_one_injected_docstring_warning_fails_the_strict_build(tmp_path):
    """A tiny site with mkdocstrings and one docstring naming a parameter the function does
    not have: the build CI runs (same flags) must fail on it, and pass once it is fixed."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# api\n\n::: tinypkg.f\n")
    (tmp_path / "tinypkg.py").write_text(
        'def f(x: int) -> int:\n    """Add one.\n\n    Args:\n'
        '        y: not a parameter of f.\n    """\n    return x + 1\n'
    )
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\nstrict: true\nplugins:\n  - mkdocstrings:\n      handlers:\n"
        "        python:\n          paths: [.]\n          options:\n"
        "            docstring_style: google\n"
    )
    words = _ci_docs_command()
    flags = words[words.index("build") + 1 : words.index("--site-dir")]  # CI's flags
    argv = [sys.executable, "-m", "mkdocs", "build", *flags, "--site-dir", str(tmp_path / "s")]
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"}
    bad = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode != 0, bad.stdout + bad.stderr
    assert "does not appear in the function signature" in bad.stdout + bad.stderr
    (tmp_path / "tinypkg.py").write_text(
        'def f(x: int) -> int:\n    """Add one.\n\n    Args:\n'
        '        x: a number.\n    """\n    return x + 1\n'
    )
    good = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert good.returncode == 0, good.stdout + good.stderr
