"""Output helpers shared by the CLI verbs: docker's human sizes and durations (registry.timefmt),
its aligned tables (tabwriter: min width 10, padding 3), and a subset of Go templates for
``--format`` (``table``, ``{{.Field}}``, ``{{.A.B}}``, ``{{json .}}``, ``{{json .Field}}``).
Pure functions; stdlib and registry.timefmt only (no click), so commands and tests share them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from registry.timefmt import human_duration as human_duration  # re-exported for the verbs

_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float) -> str:
    """docker's units.HumanSizeWithPrecision(size, 3): decimal units, 3 significant digits."""
    value = float(size)
    i = 0
    while value >= 1000.0 and i < len(_DECIMAL) - 1:
        value /= 1000.0
        i += 1
    return f"{value:.3g}{_DECIMAL[i]}"


def short_size(n: float) -> str:
    """Progress lines' sizes: decimal units with one decimal ("512B", "1.5kB", "120.3MB")."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n:.1f}GB"


def since(when: datetime | None, now: datetime | None = None) -> str:
    """'2 days ago'; 'N/A' when the time is unknown."""
    if when is None:
        return "N/A"
    now = now or datetime.now(tz=UTC)
    return human_duration(max((now - when).total_seconds(), 0)) + " ago"


def go_time(when: datetime | None) -> str:
    """Go's time.Time.String() in UTC, as docker prints CreatedAt."""
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def ellipsis(text: str, width: int) -> str:
    """docker's stringutils.Ellipsis: cut to ``width`` characters ending in '…'."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]], *, minwidth: int = 10, padding: int = 3) -> str:
    """Align columns like Go's tabwriter as docker configures it; the last column is not padded."""
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    widths = [0] * ncols
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(cell) + padding, minwidth)
    lines = []
    for r in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])]
        lines.append(("".join(cells) + (r[-1] if r else "")).rstrip())
    return "\n".join(lines) + "\n"


# -- Go-template subset -----------------------------------------------------------------------
_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def go_value(value: Any) -> str:
    """How text/template prints a value."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_value(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _lookup(obj: Any, path: str) -> Any:
    if path == ".":
        return obj
    value = obj
    for part in path.lstrip(".").split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            raise TemplateError(f"can't evaluate field {part} in template")
    return value


class TemplateError(ValueError):
    pass


def render(template: str, obj: Any) -> str:
    """Render one object with the template subset (no newline added)."""

    def action(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("json "):
            return json.dumps(_lookup(obj, expr[5:].strip()), separators=(",", ":"))
        if expr.startswith("."):
            return go_value(_lookup(obj, expr))
        raise TemplateError(f"unsupported template action {{{{{expr}}}}}")

    return _ACTION.sub(action, template.replace("\\t", "\t").replace("\\n", "\n"))


def render_rows(template: str, objs: Sequence[Mapping[str, Any]], headers: Mapping[str, str]) -> str:
    """``--format`` output for a list: 'table ...' gets a header row and aligned columns."""
    if template.startswith("table"):
        body = template[len("table"):].strip() or "\t".join(f"{{{{.{k}}}}}" for k in headers)
        head = _ACTION.sub(lambda m: headers.get(m.group(1).lstrip("."), m.group(1).lstrip(".").upper()),
                           body.replace("\\t", "\t"))
        lines = [head] + [render(body, o) for o in objs]
        return table([line.split("\t") for line in lines])
    return "".join(render(template, o) + "\n" for o in objs)


def inspect_text(views: Sequence[Mapping[str, Any]], template: str | None) -> str:
    """docker's ``inspect`` output: a JSON array (indent 4), or, with ``-f TEMPLATE`` (other
    than "json"), one rendered line per object. TemplateError for a bad template."""
    if template and template != "json":
        return "".join(render(template, v) + "\n" for v in views)
    return json.dumps(views, indent=4) + "\n"


def json_lines(objs: Sequence[Mapping[str, Any]]) -> str:
    """docker's ``--format json`` for lists: one compact JSON object per line."""
    return "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objs)
