"""Griffe extension for the API reference: the reST bits of our docstrings as Markdown.

The docstrings are Google style with a few reST constructs: ``.. math::`` blocks, ``:math:``,
``:func:``/``:class:``/... roles and double-backtick literals. This turns them into what
mkdocstrings renders: ``$$ ... $$`` / ``$...$`` (typeset by MathJax through ``arithmatex``) and
inline code. An ``Example:`` section is read as ``Examples:``, the section whose ``>>>`` lines
are rendered as code (griffe makes an ``Example:`` section a note, whose ``>>>`` lines Markdown
reads as nested quotes). It changes only the rendered text, never the source.
"""

from __future__ import annotations

import re

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc|py:\w+):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$")


def _math_block(lines: list[str], i: int) -> tuple[list[str], int]:
    """The ``.. math::`` directive at line ``i`` as a ``$$`` block; returns it and the next line."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    body: list[str] = []
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        body.append(lines[j].strip())
        j += 1
    while body and not body[-1]:
        body.pop()
    trailing = [""] if j < len(lines) else []
    pad = " " * indent
    block = [pad + "$$", *(pad + b for b in body if b), pad + "$$", *trailing]
    return block, j


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_markdown(text: str) -> str:
    """Convert the reST constructs our docstrings use to Markdown with arithmatex math."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if heading := _EXAMPLE_HEADING.match(lines[i]):
            lines[i] = f"{heading.group(1)}Examples:"
        if lines[i].strip() == ".. math::":
            block, i = _math_block(lines, i)
            out.extend(block)
            continue
        out.append(lines[i])
        i += 1
    text = "\n".join(out)
    text = re.sub(r"`\\ ", "`", text)  # reST's escaped space after a role: nothing
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)
    text = _XREF_ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    # double-backtick literals, except inside math (already converted) and doctest output
    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
