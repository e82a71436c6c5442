"""The test suite; ``tessera.testing`` is its shared support package (also used by ``bench``)."""
