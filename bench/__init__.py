"""Tessera's benchmark suite: how close the service gets to the model's own speed.

    make bench                      # the standard set, then docs/benchmarks.md
    python -m bench.run_all --quick # a short smoke run of every stage

Stages (each also runs alone, ``python -m bench.<stage> --help``):

- ``bench.raw``: in-process encode/decode tiles/s of every checkpoint at several batch sizes;
- ``bench.service``: a real ``tessera serve`` process under a closed-loop concurrency sweep
  (with and without batching), one big sheet per request, and an open-loop fixed rate;
- ``bench.cache``: the same sheets uncached, then cached, in-process and in Redis;
- ``bench.path``: what each step of the request path costs on its own;
- ``bench.report``: ``bench/results/*.json`` -> ``docs/benchmarks.md`` and its plot;
- ``bench.gpu_check``: the prepared GPU run (``make gpu-check``: CUDA tests, raw speed, the service and
  training on the GPU); its CPU dry run (``make gpu-check DRY=1``) is part of ``make test``.

Not part of ``make test``: the stages need the CPU to themselves for minutes.
"""
