"""kafkad.engine: the sans-IO producer engine (batching, in-flight, retries, idempotence, metadata).

No sockets, no clock: every method takes `now` and returns what the driver
in `kafkad.broker` must do. `kafkad.engine.types` holds the data that crosses
the seam to the IPC layer.
"""
