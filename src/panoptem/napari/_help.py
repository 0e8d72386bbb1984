"""The README sections the docks' Help buttons show (no Qt): read from the README beside
the sources when panoptem runs from a checkout, else from the installed package's metadata."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import PanoptemError


def readme_text() -> str:
    """The README as Markdown."""
    here = Path(__file__).resolve()
    for parent in here.parents[2:4]:  # src/panoptem/napari -> checkout root (src layout or flat)
        f = parent / "README.md"
        if f.is_file():
            text = f.read_text(encoding="utf-8")
            if text.startswith("# panoptem"):
                return text
    from importlib.metadata import PackageNotFoundError, metadata
    try:
        body = metadata("panoptem").get_payload() or metadata("panoptem").get("Description") or ""
    except PackageNotFoundError:
        body = ""
    if not body.strip():
        raise PanoptemError("panoptem's README is not installed with it; read it where panoptem was downloaded.")
    return body


def readme_dir() -> Path | None:
    """The folder of the README in a checkout (for its pictures), else None."""
    here = Path(__file__).resolve()
    for parent in here.parents[2:4]:
        if (parent / "README.md").is_file():
            return parent
    return None


def help_section(title: str, text: str | None = None, within: str | None = "napari") -> str:
    """The README section whose heading is ``title`` (any level), up to the next heading
    of the same or a higher level, as Markdown; searched inside the section ``within``
    (the README's napari part; None: anywhere)."""
    text = readme_text() if text is None else text
    if within is not None:
        text = help_section(within, text, within=None)
    lines = text.splitlines()
    pat = re.compile(r"^(#+)\s+(.*?)\s*$")
    for i, line in enumerate(lines):
        m = pat.match(line)
        if m and m.group(2).strip() == title:
            level = len(m.group(1))
            out = [line]
            fence = False
            for nxt in lines[i + 1:]:
                if nxt.startswith("```"):
                    fence = not fence
                m2 = None if fence else pat.match(nxt)
                if m2 and len(m2.group(1)) <= level:
                    break
                out.append(nxt)
            return "\n".join(out).strip() + "\n"
    raise PanoptemError(f"The README has no section '{title}'; see the README's napari part.")
