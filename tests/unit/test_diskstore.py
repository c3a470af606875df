"""The pure parts of ops.diskstore: listing pages, prefix bounds, aws-chunked bodies, ranges, preconditions."""

from __future__ import annotations

import pytest

from ops import diskstore
from ops.diskstore import (
    Entry,
    S3Error,
    byte_range,
    check_write_preconditions,
    decode_aws_chunked,
    decode_token,
    encode_token,
    paginate,
    prefix_upper_bound,
)


def fetcher(keys: list[str], calls: list[str] | None = None):  # type: ignore[no-untyped-def]
    ordered = sorted(keys)

    def fetch(after: str, n: int) -> list[tuple[str, str, float, int]]:
        if calls is not None:
            calls.append(after)
        return [(k, '"e"', 0.0, 1) for k in ordered if k > after][:n]

    return fetch


def names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


def test_pages_of_keys_resume_after_the_last_one() -> None:
    keys = [f"k{i:02d}" for i in range(7)]
    first, more = paginate(fetcher(keys), "", "", "", "", 3)
    assert names(first) == ["k00", "k01", "k02"] and more
    after, skip = decode_token(encode_token(first[-1]))
    second, more = paginate(fetcher(keys), "", "", after, skip, 3)
    assert names(second) == ["k03", "k04", "k05"] and more
    third, more = paginate(fetcher(keys), "", "", *decode_token(encode_token(second[-1])), 3)
    assert names(third) == ["k06"] and not more


def test_a_page_that_ends_exactly_at_the_last_key_says_nothing_follows() -> None:
    entries, more = paginate(fetcher(["a", "b"]), "", "", "", "", 2)
    assert names(entries) == ["a", "b"] and not more


def test_delimiter_groups_keys_and_a_returned_prefix_is_not_repeated_on_the_next_page() -> None:
    keys = ["p/a/1", "p/a/2", "p/b/1", "p/c", "p/d/9"]
    entries, more = paginate(fetcher(keys), "p/", "/", "", "", 1)
    assert names(entries) == ["p/a/"] and entries[0].row is None and more
    after, skip = decode_token(encode_token(entries[0]))
    assert skip == "p/a/"
    rest, more = paginate(fetcher(keys), "p/", "/", after, skip, 10)
    assert names(rest) == ["p/b/", "p/c", "p/d/"] and not more
    assert rest[1].row is not None  # an object, not a prefix


def test_groups_spanning_fetch_chunks_are_collapsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskstore, "MAX_LIST", 3)
    keys = [f"g/{i:02d}" for i in range(10)] + ["h"]
    calls: list[str] = []
    entries, more = paginate(fetcher(keys, calls), "", "/", "", "", 5)
    assert names(entries) == ["g/", "h"] and not more
    assert len(calls) == 3  # it kept fetching past the grouped keys


def test_prefix_upper_bound_is_the_next_string_above_every_key_with_the_prefix() -> None:
    assert prefix_upper_bound("topics/t1/") == "topics/t10"
    assert prefix_upper_bound("") is None
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\ud7ff") == "\ue000"
    for key in ("topics/t1/", "topics/t1/zzz", "topics/t1/\U0010ffff\U0010ffff"):
        assert key < prefix_upper_bound("topics/t1/")  # type: ignore[operator]


def test_aws_chunked_bodies_are_decoded_with_extensions_and_trailers() -> None:
    raw = b"5;chunk-signature=abc\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    assert decode_aws_chunked(raw) == b"hello world"
    with pytest.raises(S3Error) as short:
        decode_aws_chunked(b"a\r\nshort")
    assert short.value.status == 400


def test_byte_ranges() -> None:
    assert byte_range("bytes=0-0", 10) == (0, 0)
    assert byte_range("bytes=8-100", 10) == (8, 9)
    assert byte_range("bytes=-4", 10) == (6, 9)
    assert byte_range("bytes=10-", 10) is None
    with pytest.raises(S3Error):
        byte_range("bytes=0-1,3-4", 10)


def test_write_preconditions() -> None:
    check_write_preconditions(None, None, "*", "/b/k")  # create: nothing there
    check_write_preconditions('"e1"', '"e1"', None, "/b/k")  # replace what was read
    check_write_preconditions('"e1"', "e1", None, "/b/k")  # unquoted ETag in the header
    with pytest.raises(S3Error) as exists:
        check_write_preconditions('"e1"', None, "*", "/b/k")
    assert (exists.value.status, exists.value.code) == (412, "PreconditionFailed")
    with pytest.raises(S3Error) as stale:
        check_write_preconditions('"e2"', '"e1"', None, "/b/k")
    assert stale.value.status == 412
    with pytest.raises(S3Error) as missing:
        check_write_preconditions(None, '"e1"', None, "/b/k")
    assert missing.value.status == 404
    with pytest.raises(S3Error) as unsupported:
        check_write_preconditions(None, None, '"e1"', "/b/k")
    assert unsupported.value.status == 501


def test_a_garbled_continuation_token_is_a_400() -> None:
    with pytest.raises(S3Error) as bad:
        decode_token("not base64 json")
    assert bad.value.status == 400
