"""Tables as text: the `Table` a summary table is built as, and its Markdown and LaTeX renderings, with the row and
escaping helpers the other tables (ablation, findings) render their own layouts with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """A table ready to print: header cells, one alignment letter per column ("l" or "r"), body rows of
    cell text, and a note that says how to read it (under the Markdown table, in the LaTeX caption)."""

    title: str
    columns: list[str]
    align: str
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(table: Table) -> str:
    rule = ["---" if a == "l" else "---:" for a in table.align]
    lines = [f"**{table.title}**", "", markdown_row(table.columns), markdown_row(rule)]
    lines += [markdown_row(row) for row in table.rows]
    return "\n".join(lines + ["", table.note]) + "\n"


# LaTeX's special characters, and the non-ASCII ones the tables use, as LaTeX text
_LATEX = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "–": "--",
        "×": r"$\times$",
    }
)


def latex_escape(text: str) -> str:
    return text.translate(_LATEX)


def latex_row(cells: list[str]) -> str:
    """One tabular row of escaped cells."""
    return " & ".join(latex_escape(c) for c in cells) + r" \\"


def latex_table(table: Table, label: str) -> str:
    """A booktabs table float (needs \\usepackage{booktabs}), to \\input into a paper."""
    return "\n".join(
        [
            r"\begin{table}[htbp]",
            r"\centering",
            r"\small",
            rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.note)}}}",
            rf"\label{{tab:{label}}}",
            rf"\begin{{tabular}}{{{table.align}}}",
            r"\toprule",
            latex_row(table.columns),
            r"\midrule",
            *[latex_row(r) for r in table.rows],
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )
