"""Markdown helpers shared by report.py's sections and gpu.py: numbers, tables, blank lines."""


def fmt(x, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def tidy(text: str) -> str:
    """One blank line around headings and tables, as Markdown renderers need."""
    lines, prev = [], ""
    for line in text.splitlines():
        table_edge = line.startswith("|") != prev.startswith("|")
        if prev and line and (prev.startswith("#") or table_edge):
            lines.append("")
        lines.append(line)
        prev = line
    out, blank = [], False
    for line in lines:
        if line or not blank:
            out.append(line)
        blank = not line
    return "\n".join(out).strip() + "\n"
