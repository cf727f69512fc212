"""kafkad.ipc: the daemon's end of the ZeroMQ link to the client shims.

`IpcServer(cfg.ipc, producer, stats_provider=callable)` binds the endpoint and
serves the frames defined in `client_shim.schema` (docs/ipc-schema.md).
`EndpointInUse` is raised by `start()` when another live daemon holds it.
"""

from kafkad.ipc.server import EndpointInUse, IpcServer

__all__ = ["EndpointInUse", "IpcServer"]
