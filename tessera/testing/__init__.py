"""What the tests (and the benchmarks) share, imported normally, never copied:

- ``ports``: ``free_port()``;
- ``waiting``: ``wait_until`` (threads) and ``until`` (coroutines): a condition with a deadline,
  never a sleep;
- ``checkpoints``: ``save_checkpoint``, a small checkpoint with random weights;
- ``serve``: ``TesseraServer``, a ``tessera serve`` process on a free port, and ``tessera_server``;
- ``redis_server``: ``RedisServer``, a private in-memory ``redis-server``;
- ``apps``: in-process apps (``create_app`` under a ``TestClient``) with a recording event sink;
- ``bodies``: request bodies (tiles, PNG, npy);
- ``clock``: ``FakeClock``, the time of batch windows, deadlines and breakers in tests;
- ``events``: ``RecordingSink``, an event sink that keeps every event;
- ``measuring``: whether the run measures the machine (``make reliability``).

Nothing here imports pytest, so ``bench`` can use it outside a test run.
"""
