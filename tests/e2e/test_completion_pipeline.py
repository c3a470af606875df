"""The completion pipeline with real processes: the longest accepted input through the claim check,
and a signed webhook reaching a real receiver, visible on the job."""

from __future__ import annotations

import base64
import io
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook

from schemas.validation import MAX_INPUT_CHARS
from tests.stack import Stack
from voicenote.settings import WebhookSettings

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"e2e-secret-0123456789abcdefghij").decode()
SENTENCE = "Your parcel left our warehouse this morning and should reach you by Thursday afternoon. "


def test_longest_accepted_input_is_claim_checked_and_spoken(stack: Stack) -> None:
    text = (SENTENCE * (MAX_INPUT_CHARS // len(SENTENCE) + 1))[:MAX_INPUT_CHARS]
    assert len(text) == MAX_INPUT_CHARS
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()

    resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={"input": text, "response_format": "wav"}, timeout=10)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    job = stack.wait_job(job_id, timeout=400)
    assert job["status"] == "succeeded", job

    audio = httpx.get(job["audio_url"], timeout=30, follow_redirects=True)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(audio.content)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert seconds > 120, f"{MAX_INPUT_CHARS} characters should take minutes to say, got {seconds:.0f}s"
    # Far above what an audio event may carry (4 MiB), so it must have travelled by claim check.
    assert len(audio.content) > 4 * 1_048_576
    claims = list((stack.settings.storage.local_dir / "audio" / "claims").rglob(f"{job_id}.wav"))
    assert len(claims) == 1 and claims[0].stat().st_size == len(audio.content)


def test_webhook_reaches_receiver_signed_and_state_shows_on_the_job(stack: Stack) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack.settings.webhooks = WebhookSettings(signing_secret=SECRET, allow_hosts=["127.0.0.1"])  # type: ignore[arg-type]
    try:
        stack.start_worker("synthesis")
        stack.start_worker("completion")
        stack.start_worker("webhooks")
        stack.start_api()
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={"input": "Ding dong, your note is ready.",
                                                                          "response_format": "wav", "webhook_url": url}, timeout=10)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        assert stack.wait_job(job_id)["status"] == "succeeded"

        def delivered() -> dict:
            job = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", timeout=5).json()
            return job if job.get("webhook", {}).get("status") == "delivered" else {}
        job = {}
        for _ in range(300):
            stack.check_alive()
            job = delivered()
            if job:
                break
            threading.Event().wait(0.2)
        assert job, f"webhook not delivered; log:\n{stack.log('worker-webhooks')[-3000:]}"
        assert job["webhook"]["attempts"] == 1
        assert len(received) == 1
        headers, body = received[0]
        payload = Webhook(SECRET).verify(body, headers)
        assert payload["type"] == "voicenote.job.succeeded"
        assert payload["data"]["job_id"] == job_id
        assert payload["data"]["audio_url"].endswith(f"/v1/jobs/{job_id}/audio")
        assert httpx.get(payload["data"]["audio_url"], timeout=10).content[:4] == b"RIFF"

        bad = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={"input": "x", "webhook_url": "gopher://h/"}, timeout=10)
        assert bad.status_code == 400 and "webhook_url" in bad.json()["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()
