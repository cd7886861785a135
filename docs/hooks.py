"""MkDocs hooks for the ldyn site.

- The docstrings are plain prose with `code` spans, written for `help()` and the source, and mkdocstrings renders
  them as Markdown. Four things in them mean something else to Markdown, and `PlainProse` keeps them as written:
  `<name>` (`runs/<name>`, `"<loss>+onpolicy"`) would be raw HTML, which the browser hides; an underscore is a
  subscript (π_t, θ_{t+1}), never emphasis; `[a][b]` is an index, not a link; and a block of lines indented under
  a paragraph is an aligned table (`token_statistics`, `change_statistics`), which Markdown would run into one line.
- A line `[ldyn settings table]: #` in a page becomes the table of every settings key (type, default, help) from
  the code itself (`ldyn.schema.keys`, what `ldyn config --keys` prints), so it cannot drift from the dataclasses.
"""

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor

SETTINGS_MARKER = "[ldyn settings table]: #"
CODE_SPAN = re.compile(r"(`+)(?:.|\n)+?(?<!`)\1(?!`)")
LIST_ITEM = re.compile(r"\s*([-*+]|\d+\.) ")
CELL_PIPE = "\\|"  # a pipe in a table cell's text


class DocstringProse(Preprocessor):
    """In a docstring (the converter mkdocstrings builds for them), outside code: `_` and `[` escaped, and a block
    indented by 2-3 spaces under a paragraph line kept as preformatted text."""

    def run(self, lines):
        if "mkdocstrings_strip_paragraph" not in self.md.treeprocessors:  # a page of the site, not a docstring
            return lines
        out, text = [], []  # text: prose lines not yet escaped
        fenced = verbatim = aligned = in_list = False
        prev = ""
        for line in lines:
            indent, blank = len(line) - len(line.lstrip(" ")), not line.strip()
            fence = line.lstrip().startswith(("```", "~~~"))
            in_list = not blank and (in_list or bool(LIST_ITEM.match(line)))
            paragraph = bool(prev.strip()) and not prev.startswith(" ") and not in_list
            was_aligned = aligned
            aligned = not fenced and not fence and 2 <= indent < 4 and not in_list and (paragraph or was_aligned)
            verbatim = fenced or fence or (indent >= 4 and not blank and (verbatim or not prev.strip()))
            if fence:
                fenced = not fenced
            if aligned or verbatim:
                out += _escaped(text)
                text = []
                if aligned and not was_aligned:
                    out.append("")  # an indented code block needs a blank line before it
                out.append("    " + line.lstrip() if aligned else line)
            else:
                if was_aligned and not blank:
                    out.append("")
                text.append(line)
            prev = line
        return out + _escaped(text)


def _escape(prose: str) -> str:
    return prose.replace("_", "\\_").replace("[", "\\[")


def _escaped(lines):
    """Underscores and brackets escaped outside code spans (which may run over several lines): `[a][b]` in a
    docstring is a list's index, not a Markdown link."""
    joined = "\n".join(lines)
    parts, last = [], 0
    for m in CODE_SPAN.finditer(joined):
        parts += [_escape(joined[last : m.start()]), m.group(0)]
        last = m.end()
    parts.append(_escape(joined[last:]))
    return "".join(parts).split("\n") if lines else []


class PlainProse(Extension):
    def extendMarkdown(self, md):  # Python-Markdown's name
        md.inlinePatterns.deregister("html", strict=False)  # `<name>` is text (the site's pages use no inline HTML)
        md.preprocessors.register(DocstringProse(md), "ldyn_docstring_prose", 25)


def on_config(config):
    # mkdocstrings builds its docstring converter from this same list, so docstrings get the extension too
    config.markdown_extensions.append(PlainProse())
    return config


def settings_table() -> str:
    from ldyn.config import RunConfig
    from ldyn.schema import keys

    rows = ["| key | default | type | help |", "|---|---|---|---|"]
    for k in keys(RunConfig()):  # a pipe inside a code span does not split a cell
        rows.append(f"| `{k.key}` | `{k.value}` | `{k.type}` | {k.help.replace('|', CELL_PIPE)} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    return markdown
