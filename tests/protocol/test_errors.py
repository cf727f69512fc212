"""The error-code table: complete, consistent, and in line with the Java client's flags."""

from __future__ import annotations

import re

import pytest

from kafkad.protocol.errors import ERRORS, ErrorInfo, error_info

# kafka-python 3 loads its schemas with a deprecated importlib API.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_every_code_from_minus_one_to_133_is_present():
    assert sorted(ERRORS) == list(range(-1, 134))


def test_entries_are_consistent():
    names = [e.name for e in ERRORS.values()]
    assert len(set(names)) == len(names)
    for code, info in ERRORS.items():
        assert info.code == code
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", info.name), info.name
        assert info.description
        # Java: InvalidMetadataException extends RetriableException.
        assert not info.invalid_metadata or info.retriable, info.name


def test_producer_path_codes():
    refresh = {3, 5, 6, 9, 13, 56, 74, 75, 100, 103}
    for code in refresh:
        assert error_info(code).retriable and error_info(code).invalid_metadata, code
    for code in (7, 19, 20, 2, 89):
        assert error_info(code).retriable and not error_info(code).invalid_metadata, code
    for code in (10, 18, 29, 45, 46, 47, 59, 87, 90, 35, -1):
        assert not error_info(code).retriable, code
    assert error_info(6).name == "NOT_LEADER_OR_FOLLOWER"


def test_unknown_codes_get_a_generic_entry():
    info = error_info(4242)
    assert isinstance(info, ErrorInfo)
    assert (info.code, info.retriable, info.invalid_metadata) == (4242, False, False)
    assert "4242" in info.name


def test_flags_agree_with_kafka_python_except_where_it_departs_from_java():
    """kafka-python 3 mirrors the Java flags too; the one departure is CORRUPT_MESSAGE.

    Java's CorruptRecordException is a RetriableException (librdkafka retries it
    as well); kafka-python marks CorruptRecordError non-retriable.
    """
    import kafka.errors as ke

    theirs = {}
    for obj in vars(ke).values():
        if isinstance(obj, type) and issubclass(obj, ke.BrokerResponseError) and \
                isinstance(getattr(obj, "errno", None), int):
            theirs.setdefault(obj.errno, obj)
    differ = {code for code, cls in theirs.items() if code in ERRORS and
              (cls.retriable, cls.invalid_metadata) !=
              (ERRORS[code].retriable, ERRORS[code].invalid_metadata)}
    assert differ == {2}
    assert len(set(theirs) & set(ERRORS)) > 120
