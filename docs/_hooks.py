"""mkdocs hooks: the CLI reference is generated from the argparse parser, and the notebooks
are read from the repository's notebooks/ folder (one copy of each)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

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


def on_pre_build(config, **kwargs):
    target = Path(config["docs_dir"]) / "notebooks"
    target.mkdir(exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copyfile(nb, target / nb.name)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, _cli_reference())
    return markdown
