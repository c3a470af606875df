"""The ``voicenote`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC
from pathlib import Path

from voicenote.settings import Settings


def _cmd_run(args: argparse.Namespace) -> int:
    from ops.embedded import run_embedded

    return run_embedded(Path(args.data_dir), args.port, args.broker_storage)


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from producer_api.app import create_app

    settings = Settings()
    uvicorn.run(create_app(settings), host=args.host or settings.api.host, port=args.port or settings.api.port,
                log_level="info", access_log=False)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from stream_workers.app import Role
    from stream_workers.main import run_worker

    settings = Settings()
    if args.web_port:
        settings.worker.web_port = args.web_port
    run_worker(settings, Role(args.role))
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from voicenote.kafka import ensure_topics

    s = Settings()
    catalog = s.kafka.catalog()
    if args.action == "list":
        for spec in catalog.all():
            print(f"{spec.name:40} partitions={spec.partitions:<3} {spec.config()}")
        return 0
    created = ensure_topics(s.kafka, catalog.all())
    print(f"created: {', '.join(created) or 'nothing (all exist)'}")
    return 0


def _cmd_storage(args: argparse.Namespace) -> int:
    import asyncio

    from voicenote.storage import build_store

    async def provision() -> None:
        store = build_store(Settings().storage)
        try:
            await store.provision()
        finally:
            await store.close()

    asyncio.run(provision())
    s = Settings().storage
    where = f"s3://{s.s3_bucket}/{s.key_prefix}" if s.backend.value == "s3" else str(s.local_dir)
    print(f"provisioned {where}: audio expires after {s.lifecycle_days} days")
    return 0


def _cmd_projection(args: argparse.Namespace) -> int:
    import asyncio

    from ops.rebuild import rebuild
    from voicenote.jobstore import JobStore

    async def run() -> None:
        settings = Settings()
        jobs = JobStore.from_settings(settings.redis)
        try:
            report = await rebuild(settings, jobs)
        finally:
            await jobs.close()
        print(f"replayed {report.requests} requests and {report.completions} completions "
              f"({report.skipped_expired} past their TTL skipped, {report.undecodable} undecodable)")

    asyncio.run(run())
    return 0

def _epoch_ms(text: str | None) -> int | None:
    from datetime import datetime

    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def _cmd_replay(args: argparse.Namespace) -> int:
    import json

    from ops.replay import Range, replay_requests
    from producer_api.service import new_job_id

    s = Settings()
    start, _, end = (args.offsets or ":").partition(":")
    rng = Range(start_ms=_epoch_ms(args.since), end_ms=_epoch_ms(args.until),
                start_offset=int(start) if start else None, end_offset=int(end) if end else None,
                partitions=tuple(args.partition) if args.partition else None)
    filters = dict(f.split("=", 1) for f in args.filter)
    report = replay_requests(s.kafka, s.kafka.catalog().requests.name, rng, filters, new_job_id=new_job_id, dry_run=args.dry_run)
    print(json.dumps(report.as_dict()))
    return 0


def _cmd_dlq(args: argparse.Namespace) -> int:
    import json

    from ops.replay import redrive_dead_letters

    s = Settings()
    report = redrive_dead_letters(s.kafka, s.kafka.catalog().dead_letter.name, error_type=args.error_type,
                                  source_topic=args.source_topic, dry_run=args.dry_run)
    print(json.dumps(report.as_dict()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicenote", description="Voicenote: text to voice notes over Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole service here (embedded broker, Redis, API, workers)")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--data-dir", default="var")
    run.add_argument("--broker-storage", choices=["s3", "memory"], default="s3",
                     help="s3: accepted work survives a broker restart (default); memory: faster, lost on restart")
    run.set_defaults(func=_cmd_run)

    api = sub.add_parser("api", help="run the HTTP producer API (settings from VOICENOTE_* env)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run a stream worker")
    worker.add_argument("role", choices=["synthesis", "completion", "webhooks"])
    worker.add_argument("--web-port", type=int, help="Faust's web port (one per worker process)")
    worker.set_defaults(func=_cmd_worker)

    topics = sub.add_parser("topics", help="provision or list the topic catalog")
    topics.add_argument("action", choices=["create", "list"])
    topics.set_defaults(func=_cmd_topics)

    storage = sub.add_parser("storage", help="create the bucket (or folder) and apply the audio lifecycle (TTL)")
    storage.add_argument("action", choices=["provision"])
    storage.set_defaults(func=_cmd_storage)

    projection = sub.add_parser("projection", help="rebuild the job-status projection in Redis by replaying the topics")
    projection.add_argument("action", choices=["rebuild"])
    projection.set_defaults(func=_cmd_projection)
    replay = sub.add_parser("replay", help="publish requests from a time or offset range again, as new jobs")
    replay.add_argument("--since", help="ISO time, inclusive (UTC if no zone)")
    replay.add_argument("--until", help="ISO time, exclusive")
    replay.add_argument("--offsets", help="START:END offsets (END exclusive), per partition")
    replay.add_argument("--partition", type=int, action="append", help="only these partitions (repeatable)")
    replay.add_argument("--filter", action="append", default=[], help="FIELD=VALUE, e.g. voice=alloy or attributes.tenant=acme")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    replay.set_defaults(func=_cmd_replay)

    dlq = sub.add_parser("dlq", help="dead letters")
    dlq.add_argument("action", choices=["redrive"])
    dlq.add_argument("--error-type", help="only letters with this reason, e.g. unknown_schema")
    dlq.add_argument("--source-topic", help="only letters from this topic")
    dlq.add_argument("--dry-run", action="store_true")
    dlq.set_defaults(func=_cmd_dlq)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
