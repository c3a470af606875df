"""Unknown fields on the OpenAI-compatible speech request: which are named as ignored, which are refused."""

from __future__ import annotations

from typing import Any

import pytest

from producer_api.errors import ApiError
from producer_api.models import OpenAISpeechRequest, SpeechRequest
from producer_api.services.routing import MAX_EXTRA_FIELDS, check_extra_fields


def _req(**fields: Any) -> OpenAISpeechRequest:
    return OpenAISpeechRequest(input="Hello.", **fields)


def test_other_servers_fields_are_named_sorted_and_header_safe() -> None:
    req = _req(top_k=30, lang_code="a", stream=True, streaming=True, reference_id="x", **{"a b,c": 1, "ünï": 2, "\x00": 3})
    assert check_extra_fields(req) == ["%00", "a%20b%2Cc", "lang_code", "reference_id", "stream", "streaming", "top_k",
                                       "%C3%BCn%C3%AF"]
    assert check_extra_fields(_req()) == [] and check_extra_fields(SpeechRequest(input="Hello.")) == []


def test_a_batch_name_beside_the_openai_field_is_only_ignored() -> None:
    assert check_extra_fields(_req(response_format="wav", format="wav", voice="nova", voice_id="x")) == ["format", "voice_id"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"format": "wav"}, "format"), ({"voice_id": "nova"}, "voice_id"), ({"response-format": "wav"}, "response-format"),
    ({"USE_CACHE": False}, "USE_CACHE"), ({"stream_fromat": "none"}, "stream_fromat"), ({"x" * 65: 1}, "x" * 64),
])
def test_fields_that_would_silently_change_the_answer_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_extra_fields(_req(**fields))
    assert caught.value.status == 400 and caught.value.param == param


def test_too_many_unknown_fields_are_refused() -> None:
    with pytest.raises(ApiError, match="unknown fields"):
        check_extra_fields(_req(**{f"field_{i}": i for i in range(MAX_EXTRA_FIELDS + 1)}))
