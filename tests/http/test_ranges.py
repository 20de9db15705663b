"""Range, If-None-Match and If-Range parsing (RFC 9110), table-driven and with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetd.http.ranges import ByteRange, Unsatisfiable, if_none_match, if_range_allows, parse_etags, parse_range

SIZE = 1000
ETAG = '"' + "ab" * 32 + '"'


@pytest.mark.parametrize(("header", "want"), [
    ("bytes=0-99", (0, 99)),
    ("bytes=100-", (100, 999)),
    ("bytes=-100", (900, 999)),
    ("bytes=-5000", (0, 999)),            # suffix longer than the file: all of it
    ("bytes=990-5000", (990, 999)),       # end past the size: clamped
    ("bytes=999-999", (999, 999)),
    ("bytes=0-0", (0, 0)),
    ("BYTES=1-2", (1, 2)),
    ("  bytes = 5 - 9 ", (5, 9)),
    ("bytes=5-9,", (5, 9)),               # empty list elements are allowed
    ("bytes=0000000000000000000000000000000000000000007-8", (7, 8)),
    ("bytes=0-99999999999999999999999999999999999999999999", (0, 999)),
])
def test_single_ranges(header: str, want: tuple[int, int]) -> None:
    assert parse_range(header, SIZE) == ByteRange(want[0], want[1], SIZE)


@pytest.mark.parametrize("header", [
    None, "", "bytes", "bytes=", "bytes=-", "bytes=abc", "bytes=1-a", "bytes=5-3", "items=0-5",
    "bytes=0-1,5-6",                      # several ranges: the whole file with 200
    "bytes=+1-5", "bytes=1--5", "bytes=\uff11-\uff15",  # full-width digits are not digits here
    "bytes 0-5", "=0-5", "bytes=0x10-20",
])
def test_whole_file(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0",
                                    "bytes=99999999999999999999999999999999999999999-"])
def test_unsatisfiable(header: str) -> None:
    got = parse_range(header, SIZE)
    assert got == Unsatisfiable(SIZE)
    assert isinstance(got, Unsatisfiable) and got.content_range == "bytes */1000"


def test_content_range_and_length() -> None:
    r = parse_range("bytes=10-19", SIZE)
    assert isinstance(r, ByteRange)
    assert (r.length, r.content_range) == (10, "bytes 10-19/1000")


def test_empty_file_is_sent_whole() -> None:
    assert parse_range("bytes=0-", 0) is None
    assert parse_range("bytes=-5", 0) is None


@pytest.mark.parametrize(("header", "match"), [
    (ETAG, True),
    ("W/" + ETAG, True),                  # If-None-Match compares weakly
    ('"x", ' + ETAG, True),
    ('"x" ,W/' + ETAG + ' , "y"', True),
    ("*", True),
    (" * ", True),
    ('"x"', False),
    ('"' + "ab" * 31 + '"', False),
    ("", False),
    (None, False),
    ("garbage", False),
    ("ab" * 32, False),                   # unquoted: not an entity tag
])
def test_if_none_match(header: str | None, match: bool) -> None:
    assert if_none_match(header, ETAG) is match


def test_parse_etags() -> None:
    assert parse_etags('W/"a", "b,c"') == [(True, "a"), (False, "b,c")]
    assert parse_etags("*") == "*"
    assert parse_etags(None) == []


@pytest.mark.parametrize(("header", "allowed"), [
    (None, True),
    (ETAG, True),
    (" " + ETAG + " ", True),
    ("W/" + ETAG, False),                 # If-Range needs a strong match
    ('"other"', False),
    ("Wed, 21 Oct 2015 07:28:00 GMT", False),
    (ETAG + ', "x"', False),
    ("", False),
])
def test_if_range(header: str | None, allowed: bool) -> None:
    assert if_range_allows(header, ETAG) is allowed


@given(st.text(max_size=200), st.integers(min_value=0, max_value=10**12))
def test_parser_never_raises_on_text(header: str, size: int) -> None:
    result = parse_range(header, size)
    _check_within(result, size)
    if_none_match(header, ETAG)
    if_range_allows(header, ETAG)


_spec = st.one_of(
    st.tuples(st.integers(0, 3000), st.none()).map(lambda t: f"{t[0]}-"),
    st.tuples(st.integers(0, 3000), st.integers(0, 3000)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.integers(0, 3000).map(lambda n: f"-{n}"),
)


@given(_spec, st.integers(min_value=0, max_value=2000))
def test_well_formed_ranges_stay_within_the_file(spec: str, size: int) -> None:
    result = parse_range(f"bytes={spec}", size)
    _check_within(result, size)
    first, _, last = spec.partition("-")
    if size == 0 or (first and last and int(last) < int(first)):
        assert result is None
    elif isinstance(result, ByteRange):
        want_start = max(0, size - int(last)) if not first else int(first)
        assert result.start == want_start
    else:
        # Unsatisfiable only when it starts at or past the end, or asks for zero suffix bytes.
        assert isinstance(result, Unsatisfiable)
        assert (first and int(first) >= size) or (not first and int(last) == 0)


def _check_within(result: object, size: int) -> None:
    assert result is None or isinstance(result, (ByteRange, Unsatisfiable))
    if isinstance(result, ByteRange):
        assert 0 <= result.start <= result.end < size
        assert result.size == size
    if isinstance(result, Unsatisfiable):
        assert result.size == size
