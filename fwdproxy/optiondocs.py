"""The README's two options tables, rendered from the options table (``python -m fwdproxy.optiondocs``)."""

from __future__ import annotations

from fwdproxy.options import OPTIONS, Kind, Option, default_text, metavar


def _flag_cell(opt: Option) -> str:
    flag = f"`{opt.flag_name} {mv}`" if (mv := metavar(opt)) else f"`{opt.flag_name}`"
    return f"`{opt.short}`, {flag}" if opt.short else flag


def _toml_cell(opt: Option) -> str:
    section, dot, key = opt.key.partition(".")
    if not opt.key:
        return "—"
    return f"`{key}` in `[{section}]`" if dot else f"`{opt.key}`"


def _default_cell(opt: Option) -> str:
    if opt.shown:
        return opt.shown
    if opt.kind in (Kind.BOOL, Kind.COUNT):
        return "off"
    text = default_text(opt)
    return f"`{text}`" if text else "none"


def readme_run_table() -> str:
    """The ``fwdproxy run`` options table of the README (flag, TOML key, default, meaning)."""
    rows = ["| flag | TOML key | default | meaning |", "| --- | --- | --- | --- |"]
    for opt in OPTIONS:
        if opt.flag:
            cells = (_flag_cell(opt), _toml_cell(opt), _default_cell(opt), opt.doc or opt.help)
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def readme_mitm_table() -> str:
    """The mitmdump table of the README: each ``fwd_*`` option and the flag it mirrors."""
    rows = ["| mitmproxy option | flag it mirrors |", "| --- | --- |"]
    for opt in OPTIONS:
        if opt.ours:
            repeat = " (repeatable)" if opt.kind in (Kind.STR_LIST, Kind.INT_LIST) else ""
            rows.append(f"| `{opt.mitm_name}`{repeat} | {opt.mitm_note or f'`{opt.flag_name}`'} |")
    return "\n".join(rows)


if __name__ == "__main__":  # the tables to paste into README.md after a change to the options table
    print(readme_run_table(), readme_mitm_table(), sep="\n\n")
