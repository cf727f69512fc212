"""Declarative message schemas, compiled into frozen dataclasses and per-version codecs.

A message is declared once, in the shape of Kafka's own JSON schema
(clients/src/main/resources/common/message/*.json): every field carries its
version range, nullable range, default, `ignorable` flag and, for tagged
fields, its tag.  `message()` turns that declaration into

* a frozen, slotted, keyword-only dataclass for the message, plus one for each
  nested struct, attached to the message class under the schema's struct name
  (``ProduceRequest.TopicProduceData``);
* one compiled encoder and decoder per valid version, built eagerly so that
  encoding never interprets the schema again.

Rules applied per version (they mirror Kafka's generated Java code):

* A field absent from a version is skipped on encode and takes its default on
  decode.  Encoding a non-default value into a version that lacks the field is
  an error (ValueError), unless the field is declared ignorable.
* In flexible versions a field with ``tag`` is written in the tagged-field
  section, and only when it differs from its default.  Unknown tags are
  skipped on decode, as the protocol requires.
* Null is accepted only inside the field's nullable version range.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from types import MappingProxyType
from typing import Any

from .primitives import (
    PRIMITIVES,
    ArrayType,
    Decoder,
    Encoder,
    ProtocolError,
    WireType,
    decode_uvarint,
    encode_uvarint,
    reason,
)

__all__ = ["Field", "Versions", "message", "encode_body", "decode_body"]

_MISSING = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Versions:
    """An inclusive version range, written as in Kafka's schemas: "3+", "8-10", "5", "none"."""

    lo: int
    hi: int  # inclusive; a large sentinel for open ranges

    @classmethod
    def parse(cls, text: str | None) -> "Versions":
        if text is None or text == "none":
            return cls(1, 0)  # empty
        m = re.fullmatch(r"(\d+)(\+|-(\d+))?", text)
        if not m:
            raise ValueError(f"bad version range {text!r}")
        lo = int(m.group(1))
        if m.group(2) == "+":
            return cls(lo, 1 << 15)
        if m.group(3) is not None:
            return cls(lo, int(m.group(3)))
        return cls(lo, lo)

    def __contains__(self, version: int) -> bool:
        return self.lo <= version <= self.hi


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Field:
    """One field of a schema, as declared in Kafka's JSON (names already in snake_case).

    `type` is Kafka's type string: "int32", "string", "records", "uuid",
    "[]int32", "[]StructName" or "StructName" (the last two need `fields`).
    """

    __slots__ = ("name", "type", "versions", "nullable", "default", "ignorable", "tag",
                 "tagged", "fields", "struct_name", "is_array", "primitive")

    def __init__(self, name: str, type: str, versions: str, *, nullable: str | None = None,
                 default: Any = _MISSING, ignorable: bool = False, tag: int | None = None,
                 tagged: str | None = None, fields: list["Field"] | None = None):
        if name != _snake(name):
            raise ValueError(f"field name {name!r} must be snake_case")
        self.name = name
        self.type = type
        self.versions = Versions.parse(versions)
        self.nullable = Versions.parse(nullable)
        self.ignorable = ignorable
        self.tag = tag
        self.tagged = Versions.parse(tagged if tagged is not None else (versions if tag is not None else None))
        self.fields = fields
        self.is_array = type.startswith("[]")
        base = type[2:] if self.is_array else type
        self.primitive: WireType | None = PRIMITIVES.get(base)
        self.struct_name = None if self.primitive else base
        if self.struct_name and not fields:
            raise ValueError(f"field {name!r} of struct type {base!r} needs its fields")
        if self.primitive and fields:
            raise ValueError(f"field {name!r} of primitive type {base!r} cannot have fields")
        self.default = default


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return len(value) == 0 and len(default) == 0
    return bool(value == default)


class _StructSchema:
    """A generated dataclass plus its field declarations and compiled per-version codecs."""

    def __init__(self, cls: type, fields: list[Field], qualname: str):
        self.cls = cls
        self.fields = fields
        self.qualname = qualname
        self.children: dict[str, _StructSchema] = {}
        self.encoders: dict[int, Encoder] = {}
        self.decoders: dict[int, Decoder] = {}

    # -- per-version compilation -------------------------------------------------

    def wire_type(self, f: Field, version: int) -> WireType:
        if f.primitive is not None:
            base: WireType = f.primitive
        else:
            base = _StructAt(self.children[f.struct_name], version)
        return ArrayType(base) if f.is_array else base

    def compile(self, version: int, flexible: bool) -> None:
        for child in self.children.values():
            child.compile(version, flexible)
        cls, qual = self.cls, self.qualname
        regular: list[tuple[str, Encoder, Decoder]] = []
        absent: list[tuple[str, Any, bool]] = []
        tagged: list[tuple[int, str, Encoder, Decoder, Any]] = []
        for f in self.fields:
            default = getattr(cls._DEFAULTS, f.name)
            if version not in f.versions:
                absent.append((f.name, default, f.ignorable))
                continue
            nullable = version in f.nullable
            wt = self.wire_type(f, version)
            enc, dec = wt.encoder(flexible, nullable), wt.decoder(flexible, nullable)
            if flexible and f.tag is not None and version in f.tagged:
                tagged.append((f.tag, f.name, enc, dec, default))
            else:
                regular.append((f.name, enc, dec))
        tagged.sort(key=lambda t: t[0])
        by_tag = {t[0]: (t[1], t[3]) for t in tagged}
        absent_defaults = {name: default for name, default, _ in absent}
        absent_defaults.update({t[1]: t[4] for t in tagged})

        def enc(parts: list, obj: Any) -> None:
            if type(obj) is not cls:
                raise TypeError(f"expected {qual}, got {type(obj).__name__}")
            for name, default, ignorable in absent:
                if not ignorable and not _is_default(getattr(obj, name), default):
                    raise ValueError(
                        f"{qual}.{name} is not part of version {version}: it must keep "
                        f"its default {default!r}")
            for name, fenc, _ in regular:
                try:
                    fenc(parts, getattr(obj, name))
                except (TypeError, ValueError, struct.error) as exc:
                    kind = ValueError if isinstance(exc, struct.error) else type(exc)
                    raise kind(f"{qual}.{name}: {exc}") from None
            if flexible:
                present = [(tag, name, fenc) for tag, name, fenc, _, default in tagged
                           if not _is_default(getattr(obj, name), default)]
                parts.append(encode_uvarint(len(present)))
                for tag, name, fenc in present:
                    sub: list = []
                    try:
                        fenc(sub, getattr(obj, name))
                    except (TypeError, ValueError, struct.error) as exc:
                        kind = ValueError if isinstance(exc, struct.error) else type(exc)
                        raise kind(f"{qual}.{name}: {exc}") from None
                    data = b"".join(sub)
                    parts.append(encode_uvarint(tag))
                    parts.append(encode_uvarint(len(data)))
                    parts.append(data)

        def dec(buf: bytes, pos: int) -> tuple[Any, int]:
            kw = dict(absent_defaults)
            for name, _, fdec in regular:
                try:
                    kw[name], pos = fdec(buf, pos)
                except (ProtocolError, struct.error) as exc:
                    raise ProtocolError(f"{qual}.{name}: {reason(exc)}") from None
            if flexible:
                count, pos = decode_uvarint(buf, pos)
                for _ in range(count):
                    tag, pos = decode_uvarint(buf, pos)
                    size, pos = decode_uvarint(buf, pos)
                    end = pos + size
                    if end > len(buf):
                        raise ProtocolError(
                            f"{qual}: tagged field {tag} of {size} bytes at byte {pos} runs "
                            f"past the end of the buffer")
                    known = by_tag.get(tag)
                    if known is not None:
                        name, fdec = known
                        try:
                            kw[name], used = fdec(buf, pos)
                        except (ProtocolError, struct.error) as exc:
                            raise ProtocolError(f"{qual}.{name}: {reason(exc)}") from None
                        if used != end:
                            raise ProtocolError(
                                f"{qual}.{name}: tagged field declared {size} bytes but holds "
                                f"{used - pos}")
                    pos = end
            return cls(**kw), pos

        self.encoders[version] = enc
        self.decoders[version] = dec


class _StructAt(WireType):
    """A nested struct as a wire type, bound to one version of its message."""

    def __init__(self, schema: _StructSchema, version: int):
        self.schema = schema
        self.version = version
        self.name = schema.qualname
        self.default = None

    def encoder(self, flexible: bool, nullable: bool) -> Encoder:
        return self.schema.encoders[self.version]

    def decoder(self, flexible: bool, nullable: bool) -> Decoder:
        return self.schema.decoders[self.version]


def _type_default(f: Field, child: type | None) -> Any:
    if f.is_array:
        return ()
    if child is not None:
        return child()
    return f.primitive.default


def _build_struct(name: str, qualname: str, fields: list[Field], module: str,
                  registry: dict[str, _StructSchema]) -> _StructSchema:
    children: dict[str, _StructSchema] = {}
    dc_fields = []
    defaults = {}
    seen = set()
    for f in fields:
        if f.name in seen:
            raise ValueError(f"{qualname}: duplicate field {f.name!r}")
        seen.add(f.name)
        child_cls = None
        if f.struct_name is not None:
            if f.struct_name in registry or f.struct_name in children:
                raise ValueError(f"{qualname}: struct {f.struct_name!r} declared twice")
            child = _build_struct(f.struct_name, f"{qualname.split('.')[0]}.{f.struct_name}",
                                  f.fields, module, registry)
            children[f.struct_name] = child
            registry[f.struct_name] = child
            child_cls = child.cls
        default = f.default if f.default is not _MISSING else _type_default(f, child_cls)
        if f.is_array and isinstance(default, list):
            default = tuple(default)
        defaults[f.name] = default
        dc_fields.append((f.name, Any, dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass(name, dc_fields, frozen=True, slots=True, kw_only=True)
    cls.__module__ = module
    cls.__qualname__ = qualname
    cls._DEFAULTS = _Defaults(defaults)
    schema = _StructSchema(cls, fields, qualname)
    schema.children = children
    return schema


class _Defaults:
    """Attribute access to a struct's field defaults (read-only)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


def message(name: str, *, api_key: int, kind: str, versions: str, flexible: str,
            fields: list[Field], module: str) -> type:
    """Build the message class `name` from its declaration; see the module docstring."""
    if kind not in ("request", "response"):
        raise ValueError(f"kind must be 'request' or 'response', not {kind!r}")
    valid = Versions.parse(versions)
    flex = Versions.parse(flexible)
    registry: dict[str, _StructSchema] = {}
    root = _build_struct(name, name, fields, module, registry)
    cls = root.cls
    for struct_name, sub in registry.items():
        setattr(cls, struct_name, sub.cls)
    for v in range(valid.lo, valid.hi + 1):
        root.compile(v, v in flex)
    cls.API_KEY = api_key
    cls.KIND = kind
    cls.MIN_VERSION = valid.lo
    cls.MAX_VERSION = valid.hi
    cls.FLEXIBLE_FROM = flex.lo if flex.lo <= flex.hi else None
    cls._ENCODERS = MappingProxyType(dict(root.encoders))
    cls._DECODERS = MappingProxyType(dict(root.decoders))
    cls._FIELDS = tuple(fields)
    return cls


def is_flexible(cls: type, version: int) -> bool:
    """True when `version` of message class `cls` uses the flexible (KIP-482) encoding."""
    return cls.FLEXIBLE_FROM is not None and version >= cls.FLEXIBLE_FROM


def encode_body(msg: Any, version: int) -> bytes:
    """The body of `msg` (no header, no size prefix) at `version`."""
    cls = type(msg)
    enc = getattr(cls, "_ENCODERS", None)
    if enc is None:
        raise TypeError(f"expected a kafkad.protocol message, got {cls.__name__}")
    fn = enc.get(version) if isinstance(version, int) else None
    if fn is None:
        raise ValueError(
            f"version: {cls.__name__} supports versions {cls.MIN_VERSION}-{cls.MAX_VERSION}, "
            f"not {version!r}")
    parts: list = []
    fn(parts, msg)
    return b"".join(parts)


def decode_body(cls: type, version: int, buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode a `cls` body at `version` from `buf[pos:]`; returns (message, end position)."""
    dec = getattr(cls, "_DECODERS", None)
    if dec is None:
        raise TypeError(f"expected a kafkad.protocol message class, got {cls!r}")
    fn = dec.get(version)
    if fn is None:
        raise ProtocolError(
            f"{cls.__name__} version {version} is not implemented "
            f"(kafkad knows {cls.MIN_VERSION}-{cls.MAX_VERSION})")
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    try:
        return fn(buf, pos)
    except struct.error:
        raise ProtocolError(f"{cls.__name__} v{version}: truncated") from None
