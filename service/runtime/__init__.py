"""The serving process: settings, lifecycle and shutdown, the event sink and its Prometheus metrics,
the clock, interpreter and allocator tuning, the shared state and ``tessera serve``."""
