"""`voicenote webhooks redrive` with the real dispatcher: a delivery that failed every attempt reaches the
receiver once it is back, and a second redrive sends nothing."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from ops.cli import main
from stream_workers.webhooks.dispatcher import WebhookDispatcher
from tests.integration.test_webhooks import Harness, Receiver, dispatcher, harness, hook_settings, receiver  # noqa: F401 - fixtures
from voicenote.settings import to_env

pytestmark = pytest.mark.integration


async def test_redriven_webhook_is_delivered_once_the_receiver_is_back(harness: Harness, dispatcher: WebhookDispatcher,  # noqa: F811
                                                                       receiver: Receiver, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    receiver.statuses = [500] * 3  # max_attempts in hook_settings: every attempt fails, then it is dead-lettered
    await harness.publish_completion("job_whredrive", receiver.url)

    async def status_is(state: str) -> bool:
        return (await harness.jobs.get("job_whredrive") or {}).get("webhook_status") == state

    await harness.until(lambda: status_is("failed"))
    assert len(receiver.received) == 3

    for key in [k for k in os.environ if k.startswith("VOICENOTE_")]:
        monkeypatch.delenv(key)
    for key, value in to_env(harness.settings).items():
        monkeypatch.setenv(key, value)

    async def cli(*argv: str) -> dict:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    assert (await cli("webhooks", "redrive", "--job-id", "job_whredrive", "--execute"))["published"] == 1
    await harness.until(lambda: status_is("delivered"))
    assert len(receiver.received) == 4
    assert receiver.received[-1][0]["webhook-id"] == "msg_job_whredrive"  # the same id: receivers dedupe on it
    assert (await harness.jobs.get("job_whredrive") or {}).get("webhook_attempts") == "4"

    assert (await cli("webhooks", "redrive", "--job-id", "job_whredrive", "--execute"))["published"] == 0
    await asyncio.sleep(1.5)  # room for a (wrong) extra delivery to show up
    assert len(receiver.received) == 4
