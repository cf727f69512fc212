"""kafkad.protocol: the Kafka wire protocol for the producer path, as pure functions on bytes.

No sockets, no event loop, no clock: requests become bytes, bytes become
responses, and malformed input raises `ProtocolError`.  The pieces:

* `messages`: ApiVersions, Metadata, Produce, InitProducerId, SaslHandshake
  and SaslAuthenticate, one declaration each (see `schema`).
* `framing`: size-prefixed frames, request/response headers, version choice.
* `records` and `codecs`: RecordBatch v2 and its compression.
* `errors`: the broker error-code table (retriable, refresh metadata first).

docs/protocol.md describes versions and framing choices.
"""

from .codecs import CODEC_NAMES
from .errors import ERRORS, ErrorInfo, error_info
from .framing import (
    API_VERSIONS_SUPPORTED,
    UNSUPPORTED_VERSION,
    FrameReader,
    RequestHeader,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    peek_correlation_id,
    pick_version,
)
from .messages import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    MetadataRequest,
    MetadataResponse,
    ProduceRequest,
    ProduceResponse,
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from .primitives import ProtocolError
from .records import (
    BATCH_OVERHEAD,
    Record,
    RecordBatch,
    decode_record_batches,
    encode_record_batch,
    headers_size,
    record_size_upper_bound,
)
from .schema import decode_body, encode_body

__all__ = [
    "API_VERSIONS_SUPPORTED", "BATCH_OVERHEAD", "CODEC_NAMES", "ERRORS", "ErrorInfo",
    "UNSUPPORTED_VERSION", "error_info",
    "ApiVersionsRequest", "ApiVersionsResponse", "FrameReader", "InitProducerIdRequest",
    "InitProducerIdResponse", "MetadataRequest", "MetadataResponse", "ProduceRequest",
    "ProduceResponse", "ProtocolError", "Record", "RecordBatch", "RequestHeader",
    "SaslAuthenticateRequest", "SaslAuthenticateResponse", "SaslHandshakeRequest",
    "SaslHandshakeResponse", "decode_body", "decode_record_batches", "decode_request",
    "decode_response", "encode_body", "encode_record_batch", "encode_request", "encode_response",
    "headers_size", "peek_correlation_id", "pick_version", "record_size_upper_bound",
]
