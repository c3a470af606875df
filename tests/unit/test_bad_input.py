"""Input that cannot be spoken is refused with a 4xx before anything is published (issue #14)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from producer_api.errors import install_error_handlers
from producer_api.models import BatchRequest, SpeechRequest
from schemas.validation import bad_characters, request_problems, speakable, speed_problem, valid_job_id


@pytest.mark.parametrize("text", ["Hello", "42", "Ünïcödé", "日本語", "a...", "\tword\n"])
def test_text_with_a_letter_or_digit_is_speakable(text: str) -> None:
    assert speakable(text)


@pytest.mark.parametrize("text", ["\u0007", "...", "\u0000\u0001", "?!", " \n ", "🙂", "—"])
def test_punctuation_symbols_and_controls_alone_are_not(text: str) -> None:
    assert not speakable(text)


def test_bad_characters_names_the_code_point_and_position_and_allows_tabs_and_newlines() -> None:
    assert bad_characters("line one\nline\ttwo\r\n") is None
    message = bad_characters("ab\u0000c")
    assert message is not None and "U+0000" in message and "position 2" in message
    assert "U+009B" in (bad_characters("x\u009by") or "")  # C1 controls too
    assert "surrogate" in (bad_characters("x\ud800") or "")


@pytest.mark.parametrize("speed", [math.nan, math.inf, -math.inf, "fast"])
def test_speed_must_be_a_finite_number(speed: Any) -> None:
    assert "finite number" in (speed_problem(speed) or "")


def test_speed_range_message_says_the_range_and_the_value() -> None:
    assert speed_problem(1.0) is None
    assert speed_problem(9.0) == "speed must be between 0.25 and 4.0; got 9"


@pytest.mark.parametrize(("text", "fragment"), [("...", "nothing speakable"), ("hi\u0000", "U+0000")])
def test_workers_refuse_the_same_text_for_direct_publishers(text: str, fragment: str) -> None:
    problems = request_problems({"job_id": "job_1", "text": text, "format": "wav", "speed": 1.0, "priority": "batch"})
    assert any(fragment in p for p in problems)


def _client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/speech")
    async def speech(body: SpeechRequest) -> dict[str, str]:
        return {"input": body.input}

    @app.post("/batch")
    async def batch(body: BatchRequest) -> dict[str, int]:
        return {"n": len(body.requests)}

    return TestClient(app)


@pytest.mark.parametrize(("text", "code"), [("\u0007", "empty_utterance"), ("...", "empty_utterance"),
                                            ("\u0000\u0001", "empty_utterance"), ("   ", "empty_utterance"),
                                            ("Hello\u0000world", "invalid_characters")])
def test_unspeakable_input_is_a_400_with_its_own_code(text: str, code: str) -> None:
    client = _client()
    resp = client.post("/speech", json={"input": text})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == (code, "input")
    batch = client.post("/batch", json={"requests": [{"input": "fine"}, {"text": text}]})
    assert batch.status_code == 400 and batch.json()["error"]["code"] == code
    assert batch.json()["error"]["param"] == "requests.1.text"


def test_nan_speed_says_it_must_be_finite_not_a_range() -> None:
    resp = _client().post("/speech", content=b'{"input": "hi", "speed": NaN}', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_speed" and error["param"] == "speed"
    assert "finite number between 0.25 and 4.0" in error["message"] and "less than" not in error["message"]


def test_invalid_json_says_where_and_what_to_send() -> None:
    resp = _client().post("/speech", content=b'{"input": "hi",}', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"] and "at character 15" in error["message"]
    assert "double quotes" in error["message"]


@pytest.mark.parametrize("job_id", ["../x y", "job_1\n", "", "x" * 65, "job 1", None, 7])
def test_an_invalid_job_id_is_refused_first_even_with_a_trailing_newline(job_id: object) -> None:
    # Issue 25, defect 5: such a request is dead-lettered, so nothing may be recorded, indexed or ended under its id.
    assert not valid_job_id(job_id)
    assert "job_id" in request_problems({"job_id": job_id, "text": "Hello.", "format": "wav", "speed": 1.0})[0]


def test_valid_job_ids_pass() -> None:
    assert all(valid_job_id(j) for j in ("job_1", "a", "A-b_9" * 12 + "abcd"))
