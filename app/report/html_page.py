"""The HTML comparison page, rendered from templates/report.html.j2 with Jinja2's autoescaping.

Every run name, tag and URL that reaches the page came from MLflow, where anyone with write access can
set it, so escaping is the template engine's job and not something each call site has to remember.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, Template

TEMPLATE = "report.html.j2"


@cache
def _template() -> Template:
    env = Environment(
        loader=PackageLoader("app.report", "templates"),
        # Always on: the only template is HTML, and select_autoescape would not match "report.html.j2" as .html.
        autoescape=True,
        undefined=StrictUndefined,  # a context key renamed in Python fails loudly instead of rendering blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE)


def render_html(title: str, sections: dict[str, Any], urls: tuple[str | None, str | None],
                plots: dict[str, tuple[str, bytes]], chance_note: str, accuracy_header: list[str]) -> str:
    """The whole self-contained page: `sections` as built by compare.py, plots inlined as base64 PNGs.

    `urls` are the two runs' links, already reduced to web links (or None) by the caller.
    """
    cost_header, cost_rows = sections["cost"]
    questions_line, question_rows = sections["questions"]
    return _template().render(
        title=title, warnings=sections["warnings"], summary=sections["summary"],
        questions_line=questions_line, question_rows=question_rows,
        metric_header=sections["metric_header"], metrics=sections["metrics"],
        chance_note=chance_note, accuracy_header=accuracy_header, accuracy=sections["accuracy"],
        cost_header=cost_header, cost_rows=cost_rows,
        figures=[(caption, base64.b64encode(png).decode("ascii")) for caption, png in plots.values()],
        runs=sections["runs"], urls=urls,
    )
