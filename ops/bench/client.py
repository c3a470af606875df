"""The client and the operator CLI on the Tansu broker: publish, read and redrive rates, and pacing.

    PYTHONPATH=. python -m ops.bench.client [--records 5000] [--rate 200]

Measures, in one run on one broker: requests/s published by ``VoicenoteClient.publish`` (acknowledged,
with the flush), completions/s read back as objects, dead letters/s redriven by ``voicenote dlq redrive
--execute`` (the CLI in-process) and what its second run costs (it publishes nothing), and how closely
``voicenote submit --rate`` holds its rate. Writes results/bench_client.json with the machine's
description. Not a test: figures vary by machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path

from ops.bench import common
from ops.cli import main as cli
from ops.replay import Range, read_range
from ops.services import TansuBroker
from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.events import DeadLetter, JobCompletion, SynthesisRequest
from voicenote.client import VoicenoteClient
from voicenote.kafka import ensure_topics
from voicenote.kafka import producer as new_producer
from voicenote.settings import KafkaSettings

TEXT = "Your parcel is on its way and will arrive tomorrow."


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli(list(argv))
    return code, out.getvalue()


def run(records: int, rate: float) -> dict[str, object]:
    broker = TansuBroker().start()
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench.", request_partitions=4, partitions=2)
        catalog = kafka.catalog()
        ensure_topics(kafka, catalog.all())
        codecs = Codecs()
        client = VoicenoteClient(kafka)

        started = time.perf_counter()
        for _ in range(records):
            client.publish(TEXT, voice="alloy")
        client.close()
        publish_s = time.perf_counter() - started

        now = now_ms()
        producer = new_producer(kafka, {"linger.ms": 5})
        for i in range(records):
            job = f"job_{i}"
            producer.produce(catalog.completions.name, key=job.encode(), value=codecs.completion.encode_event(
                JobCompletion(job_id=job, status="succeeded", created_at=now, completed_at=now, duration_ms=900)))
            letter = DeadLetter(source_topic=catalog.requests.name, source_partition=0, source_offset=i, key=job.encode(),
                                value=codecs.request.encode_event(SynthesisRequest(job_id=job, created_at=now, text=TEXT)),
                                consumer="synthesis", error_type="unknown_schema", error_message="bench", failed_at=now)
            producer.produce(catalog.dead_letter.name, value=codecs.dead_letter.encode_event(letter))
            producer.poll(0)
        assert producer.flush(60) == 0

        started = time.perf_counter()
        read = sum(1 for _ in client.completions(from_beginning=True, until_end=True))
        read_s = time.perf_counter() - started

        flags = ["--bootstrap-server", broker.bootstrap, "--topic-prefix", "bench.", "--progress", "off"]
        os.environ["VOICENOTE_KAFKA__PARTITIONS"] = "2"
        os.environ["VOICENOTE_KAFKA__REQUEST_PARTITIONS"] = "4"
        started = time.perf_counter()
        code, out = _cli(*flags, "dlq", "redrive", "--execute")
        first_s = time.perf_counter() - started
        first = json.loads(out)
        started = time.perf_counter()
        code2, out2 = _cli(*flags, "dlq", "redrive", "--execute")
        second_s = time.perf_counter() - started
        second = json.loads(out2)
        assert code == code2 == 0 and first["published"] == records and second["published"] == 0

        paced = max(10, int(rate * 2))  # about two seconds of paced submits
        lines = Path("results") / ".bench_client_notes.txt"
        lines.parent.mkdir(exist_ok=True)
        lines.write_text("\n".join([TEXT] * paced) + "\n")
        code3, out3 = _cli(*flags, "submit", "--file", str(lines), "--rate", str(rate))
        lines.unlink()
        submitted = set(out3.split())
        assert code3 == 0 and len(submitted) == paced
        # The rate as published: the spread of the requests' own timestamps, without the CLI's start-up.
        stamps = sorted(r.created_at for r in (codecs.request.decode_event(m.value())
                                               for m in read_range(kafka, catalog.requests.name, Range()))
                        if r.job_id in submitted)
        submit_s = (stamps[-1] - stamps[0]) / 1000
    finally:
        broker.stop()
    return {
        "records": records,
        "publish_requests_per_s": round(records / publish_s, 1),
        "read_completions_per_s": round(read / read_s, 1),
        "dlq_redrive_letters_per_s": round(records / first_s, 1),
        "dlq_redrive_second_run_published": second["published"],
        "dlq_redrive_second_run_seconds": round(second_s, 2),
        "dlq_redrive_second_over_first_time": round(second_s / first_s, 3),
        "submit_rate_target_per_s": rate,
        "submit_requests": paced,
        "submit_rate_achieved_per_s": round((paced - 1) / submit_s, 1),
        "submit_achieved_over_target": round((paced - 1) / submit_s / rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--out", default="results/bench_client.json")
    args = parser.parse_args()
    result = {"machine": common.machine(("confluent-kafka", "fastavro"), "broker (Tansu) and this process share the machine"),
              "result": run(args.records, args.rate)}
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["result"], indent=2))


if __name__ == "__main__":
    main()
