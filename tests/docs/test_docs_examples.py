"""Every shell and Python block of README.md and docs/*.md, run in order against a real server
(``make docs-test``; ``tests/docs/examples.py`` says how a block is read). Plain ``make test``
skips these: they download a Debian package and serve every bundled model."""

from __future__ import annotations

import os

import pytest

from tests.docs.examples import ROOT, Session, blocks, pages

ENABLE = "TESSERA_DOCS_TEST"
ALL = [block for page in pages() for block in blocks(page.read_text(), str(page.relative_to(ROOT)))]
RUNNABLE = [block for block in ALL if block.runs]

pytestmark = pytest.mark.skipif(os.environ.get(ENABLE) != "1", reason=f"make docs-test runs these ({ENABLE}=1)")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("docs-examples"))
    try:
        session.serve()
        yield session
    finally:
        session.close()


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_example(block, session):
    result = session.run(block)
    assert result.ok, f"{block.id} ({block.lang}):\n{block.code}\n\n{result.why}\n--- output\n{result.output[-4000:]}"
