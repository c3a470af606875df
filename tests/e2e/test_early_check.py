"""The early check in a real completion worker process (issue 22, item 3): a job whose request the synthesis group
consumed without any result ends ``failed`` with ``result_lost`` long before the watchdog's bound."""

from __future__ import annotations

import asyncio
import time

from schemas.events import SynthesisRequest
from schemas.topics import build_catalog
from stream_workers.completion.early_check import RESULT_LOST_CODE
from tests.stack import Stack
from voicenote.jobstore import JobStore
from voicenote.kafka import TopicPartition, consumer, ensure_topics, event_codecs, producer
from voicenote.models import synthesis_group


async def _record(stack: Stack, job_id: str) -> dict[str, str]:
    jobs = JobStore.from_settings(stack.settings.redis)
    try:
        return await jobs.get(job_id) or {}
    finally:
        await jobs.close()


def test_a_consumed_request_without_a_result_ends_result_lost(stack: Stack) -> None:
    s = stack.settings
    catalog = build_catalog(prefix=s.kafka.topic_prefix, request_partitions=s.kafka.request_partitions,
                            partitions=s.kafka.partitions)
    ensure_topics(s.kafka, catalog.all())
    codecs = event_codecs(s.kafka)
    job_id = "job_earlylost01"
    request = SynthesisRequest(job_id=job_id, created_at=int(time.time() * 1000) - 10_000, text="hello", format="wav",
                               voice="joe", priority="batch", webhook_url=None, batch_id=None)
    out = producer(s.kafka)
    out.produce(catalog.requests.name, codecs.request.encode_event(request), key=job_id.encode(), partition=0)
    assert out.flush(30) == 0
    # The synthesis group consumed it (committed past it), but no result ever reached the audio topic.
    committer = consumer(s.kafka, synthesis_group(s.worker.group_id, "piper"), {"enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(catalog.requests.name, 0, 1)], asynchronous=False)
    finally:
        committer.close()

    stack.start_worker("completion", env={"VOICENOTE_WORKER__WATCHDOG_INTERVAL_SECONDS": "1",
                                          "VOICENOTE_WORKER__EARLY_CHECK_FLOOR_SECONDS": "2"})
    deadline = time.monotonic() + 90
    record: dict[str, str] = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        record = asyncio.run(_record(stack, job_id))
        if record.get("status") == "failed":
            break
        time.sleep(0.5)
    assert (record.get("status"), record.get("error_code")) == ("failed", RESULT_LOST_CODE), stack.log("worker-completion")[-4000:]
    assert f"overdue job {job_id}" in stack.log("worker-completion")
