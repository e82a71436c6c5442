"""The example runner itself (``tests/docs/examples.py``): how it reads pages and compares
output, that a broken example fails it, and that every block of the real pages either runs or
says why not."""

from __future__ import annotations

import pytest

from tests.docs.examples import ROOT, RUN, Session, blocks, compare, harness_lines, pages

PAGE = """
Some prose.

```sh
echo "PSNR 24.67 dB over 960 tiles"
```

```text
PSNR 24.67 dB over 960 tiles
```

```sh
# illustrative: runs until stopped
sleep infinity
```

```python
x = 41
```

```python
print(x + 1)
```

```text
42
```
"""


def test_blocks_attach_printed_output_to_the_block_before():
    found = blocks(PAGE)
    assert [b.lang for b in found] == ["sh", "sh", "python", "python"]
    assert found[0].output == "PSNR 24.67 dB over 960 tiles"
    assert found[1].illustrative == "runs until stopped" and not found[1].runs
    assert found[2].output is None and found[3].output == "42"


def test_compare_tolerates_decimals_not_words_or_integers():
    assert compare("PSNR 24.67 dB", "PSNR 24.80 dB") is None          # within 2%
    assert compare("PSNR 24.67 dB", "PSNR 26.00 dB") is not None      # 5% off
    assert compare("960 tiles", "959 tiles") is not None              # integers exactly
    assert compare("960 tiles", "960 tyles") is not None
    assert compare("a  b", "a b") is None                             # runs of spaces
    assert compare("first\n...", "first\nsecond\nthird") is None
    assert compare("first\n...\nlast", "first\nlast") is None
    assert compare("first\nsecond", "first") is not None
    assert compare("refined ~8 steps", "refined 9 steps") is None       # ~N: varies with the machine
    assert compare("refined 8 steps", "refined 9 steps") is not None
    assert compare("done", "\rencode: 0tile\r       \rdone") is None  # what a terminal shows of a progress bar


def test_a_broken_example_fails_and_a_good_one_passes(tmp_path):
    root = tmp_path / "clone"
    root.mkdir()
    session = Session(tmp_path / "scratch", root=root)
    try:
        good, _, python, printed = blocks(PAGE)
        assert session.run(good).ok
        assert session.run(python).ok and session.run(printed).ok          # one Python session per page
        broken = blocks(PAGE.replace('echo "PSNR 24.67', 'echo "PSNR 21.03'))[0]
        result = session.run(broken)
        assert not result.ok and "PSNR 21.03" in result.why
        failing = blocks("```sh\nfalse\necho never\n```\n")[0]
        assert not session.run(failing).ok                                 # without printed output: must exit 0
        raising = blocks("```python\nraise ValueError('no')\n```\n", "other")[0]
        result = session.run(raising)
        assert not result.ok and "ValueError: no" in result.output
        carried = blocks("```sh\nSHEET=floor.png\n```\n\n```sh\necho $SHEET\n```\n\n```text\nfloor.png\n```\n")
        assert all(session.run(block).ok for block in carried)          # one terminal: variables stay
    finally:
        session.close()


ALL = [block for page in pages() for block in blocks(page.read_text(), str(page.relative_to(ROOT)))]


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in RUN], ids=lambda b: b.id)
def test_every_block_runs_or_says_why_not(block):
    """A shell or Python block is run by make docs-test unless its first line says
    ``# illustrative: <why>``; the harness's own lines stand alone."""
    if block.illustrative is None and harness_lines(block.code):
        assert len(harness_lines(block.code)) == len([l for l in block.code.split("\n") if l.split("#")[0].strip()])


def test_the_pages_have_runnable_examples():
    assert sum(block.runs for block in ALL) >= 30
