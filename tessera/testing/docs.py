"""The parts of the docs that code makes: a table between ``<!-- NAME table: ... -->`` and
``<!-- end of the NAME table -->``, which a test compares with what its generator prints."""

from __future__ import annotations

from tessera.testing.serve import ROOT


def page(name: str) -> str:
    """The text of ``docs/<name>``."""
    return (ROOT / "docs" / name).read_text()


def generated_table(text: str, name: str) -> str:
    """The table ``text`` holds between the markers of the ``name`` table, stripped."""
    begin = text.index(f"<!-- {name} table:")
    return text[text.index("\n", begin) + 1:text.index(f"<!-- end of the {name} table -->")].strip()
