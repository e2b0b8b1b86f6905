"""How a benchmark hands over its result: the table on the console and, when asked, in a Markdown file."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], markdown: Path | None) -> None:
    """Print ``lines`` after a blank line and, with ``markdown``, write them there (UTF-8)."""
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if markdown:
        markdown.write_text(text + "\n", encoding="utf-8")
