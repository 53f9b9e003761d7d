"""mkdocs hooks: the CLI reference is generated from the argparse parser, the notebooks are
read from the repository's notebooks/ folder (one copy of each), and the maths is rendered at
build time to MathML, which browsers draw natively: the site needs no script and no network
to show an equation. A formula the renderer does not know fails the build, naming the page."""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parent.parent


def _cli_reference() -> str:
    from jaxopt_tokens.cli import build_parser

    parser = build_parser()
    parser.prog = "jaxopt-tokens"
    parts = ["```text", parser.format_help().rstrip(), "```"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## `{name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


#: TeX the renderer spells differently
_TEX_SPELLINGS = {r"\arg": r"\mathrm{arg}\,"}
#: what is left of a formula the renderer did not understand: a TeX command
_UNRENDERED = re.compile(r"\\[A-Za-z]+")
#: control characters, tab included: what `"\tau"` or `"\beta"` become in a Python string
#: written without escaping its backslashes
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
#: TeX macro definitions, which the renderer drops silently
_DEFINITIONS = re.compile(r"\\(newcommand|renewcommand|def|let)\b")
#: the maths pymdownx.arithmatex (generic mode) leaves in a page
_ARITHMATEX = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)


def tex_to_mathml(tex: str, display: bool, where: str) -> str:
    """One formula as MathML; `PluginError` naming `where` if any of it is not rendered."""
    body = tex
    for old, new in _TEX_SPELLINGS.items():
        body = body.replace(old, new)
    if _CONTROL.search(body):
        raise PluginError(f"{where}: a control character in the maths {tex!r}")
    if _DEFINITIONS.search(body):  # the renderer drops macro definitions without a word
        raise PluginError(f"{where}: a macro definition in the maths {tex!r}; spell it out")
    try:
        mathml = convert(body, display="block" if display else "inline")
    except Exception as e:  # the renderer's own parse errors, named with the page
        raise PluginError(f"{where}: the maths renderer failed on {tex!r}: {e!r}") from None
    left = _UNRENDERED.search(mathml)
    if left:
        raise PluginError(f"{where}: the maths renderer does not know {left.group(0)!r} in {tex!r}")
    return mathml


def render_page_maths(page_html: str, where: str) -> str:
    """Every `arithmatex` span and block of a page as MathML."""

    def one(m: re.Match) -> str:
        tag, tex = m.group(1), html.unescape(m.group(2)).strip()
        if tex[:2] in ("\\(", "\\["):
            tex = tex[2:-2]
        return f'<{tag} class="arithmatex">{tex_to_mathml(tex, tag == "div", where)}</{tag}>'

    out = _ARITHMATEX.sub(one, page_html)
    left = re.search(r'class="arithmatex">\s*\\[(\[]', out)
    if left:  # an arithmatex element the pattern above did not take (nested markup)
        raise PluginError(f"{where}: maths left unrendered near {out[left.start():][:80]!r}")
    return out


_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$([^$\n]+?)\$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_FENCE = re.compile(r"(^```.*?^```[ \t]*$)", re.S | re.M)


def render_markdown_maths(text: str, where: str) -> str:
    """`$...$` and `$$...$$` of a notebook's markdown as MathML (code spans left alone)."""

    def inline(m: re.Match) -> str:
        return tex_to_mathml(m.group(1), False, where)

    def maths(part: str) -> str:
        return _DISPLAY.sub(lambda m: tex_to_mathml(m.group(1).strip(), True, where), part)

    # fenced code blocks are code, not maths; display maths may hold a code span of its own
    fences = _FENCE.split(text)
    text = "".join(piece if i % 2 else maths(piece) for i, piece in enumerate(fences))
    pieces, last = [], 0
    for code in _CODE_SPAN.finditer(text):
        pieces.append(_INLINE.sub(inline, text[last : code.start()]))
        pieces.append(code.group(0))
        last = code.end()
    pieces.append(_INLINE.sub(inline, text[last:]))
    return "".join(pieces)


def on_pre_build(config, **kwargs):
    target = Path(config["docs_dir"]) / "notebooks"
    target.mkdir(exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        data = json.loads(nb.read_text(encoding="utf-8"))
        for i, cell in enumerate(data["cells"]):
            if cell["cell_type"] == "markdown":
                text = "".join(cell["source"])
                cell["source"] = render_markdown_maths(text, f"notebooks/{nb.name}, cell {i}")
        (target / nb.name).write_text(json.dumps(data), encoding="utf-8")


def on_page_content(page_html, page, config, files, **kwargs):
    return render_page_maths(page_html, page.file.src_path)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, _cli_reference())
    return markdown
