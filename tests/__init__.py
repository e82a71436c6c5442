"""The test suite; ``tests.support`` is its shared support package (also used by ``bench``)."""
