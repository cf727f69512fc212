"""A tiny blocking Kafka client for the protocol interop tests (tests only, never in kafkad).

It sends one request at a time over a plain socket and reads the answer with
kafkad's own FrameReader and decode_response, so a test exercises exactly the
bytes kafkad would put on the wire.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

from kafkad.protocol import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FrameReader,
    decode_response,
    encode_request,
)
from kafkad.protocol.messages import RESPONSE_FOR


class WireClient:
    """One connection to one broker; `call(msg, version)` returns the decoded response."""

    def __init__(self, bootstrap: str, timeout: float = 10.0, client_id: str = "kafkad-tests", *,
                 strict: bool = True):
        host, port = bootstrap.split(",")[0].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.reader = FrameReader(64 * 1024 * 1024)
        self.client_id = client_id
        # strict: fail when a response has bytes after its body (off only for
        # the librdkafka mock cluster, which pads Metadata v9+ with one byte).
        self.strict = strict
        self._ids = itertools.count(1)
        self._pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "WireClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, msg: Any, version: int) -> int:
        cid = next(self._ids)
        self.sock.sendall(encode_request(msg, version, cid, self.client_id))
        return cid

    def read_frame(self) -> bytes:
        while not self._pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("broker closed the connection")
            self._pending.extend(self.reader.feed(data))
        return self._pending.pop(0)

    def call(self, msg: Any, version: int) -> Any:
        cid = self.send(msg, version)
        got, resp = decode_response(RESPONSE_FOR[type(msg)], version, self.read_frame(),
                                    strict=self.strict)
        assert got == cid, f"correlation id {got} != {cid}"
        return resp

    def api_versions(self) -> dict[int, tuple[int, int]]:
        """The broker's advertised ranges, negotiating down from v3 as a client must."""
        version = ApiVersionsRequest.MAX_VERSION
        while True:
            req = ApiVersionsRequest(client_software_name="kafkad-tests",
                                     client_software_version="0") if version >= 3 \
                else ApiVersionsRequest()
            resp: ApiVersionsResponse = self.call(req, version)
            if resp.error_code == 35 and version > 0:
                # The broker's own ApiVersions range when it sent one (KIP-511),
                # else one version lower.
                ranges = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
                _, hi = ranges.get(18, (0, version - 1))
                version = min(hi, version - 1)
                continue
            assert resp.error_code == 0, resp
            return {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
