"""MIMIC-CXR report files into training text: FINDINGS + IMPRESSION, or the last paragraph of a
report that has neither (the usual fallback)."""

from __future__ import annotations

import re

REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 /&()'\-]*[A-Z)])[ \t]*:", re.MULTILINE)
_FINAL_REPORT_LINE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _squash(text: str) -> str:
    """Collapse line wraps and runs of spaces: report line breaks are layout, not content."""
    return " ".join(text.split())


def extract_sections(text: str) -> dict[str, str]:
    """Sections of a MIMIC-CXR report: {header: body}, bodies with whitespace collapsed.

    A header is an upper-case name at the start of a line (it may be indented) followed by
    ':' ("FINDINGS:", " IMPRESSION:"); its section runs to the next header. Text before the
    first header is not a section. A header that repeats has its bodies joined.
    """
    matches = list(_HEADER.finditer(text))
    sections: dict[str, str] = {}
    for i, match in enumerate(matches):
        name = " ".join(match.group(1).split())
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = _squash(text[match.end():end])
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def _last_paragraph(text: str) -> str:
    """The last non-empty paragraph of a report, without a leading section header."""
    text = _FINAL_REPORT_LINE.sub("", text)
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1].strip("\n")
    header = _HEADER.match(last)
    if header:
        last = last[header.end():]
    return _squash(last)


def _report_text_and_source(text: str) -> tuple[str, str]:
    """(text, where it came from): "sections", "last_paragraph" or "none"."""
    sections = extract_sections(text)
    parts = [sections[name] for name in REPORT_SECTIONS if sections.get(name)]
    if not parts:
        # Combined headers such as "FINDINGS AND IMPRESSION" or "FINDINGS/IMPRESSION".
        parts = [body for name, body in sections.items()
                 if body and any(word in name for word in REPORT_SECTIONS)]
    if parts:
        return " ".join(parts), "sections"
    last = _last_paragraph(text)
    return (last, "last_paragraph") if last else ("", "none")


def report_text(text: str) -> str:
    """FINDINGS + IMPRESSION of a report; if it has neither, its last paragraph; else ""."""
    return _report_text_and_source(text)[0]


def read_report(path: str) -> tuple[str, str]:
    """Report text of one study file; a missing or undecodable file gives ("", "none")."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return _report_text_and_source(f.read())
    except OSError:
        return "", "none"
