"""The ``voicenote`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from voicenote.settings import Settings


def _cmd_run(args: argparse.Namespace) -> int:
    from ops.embedded import run_embedded

    return run_embedded(Path(args.data_dir), args.port)


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
    from schemas.topics import build_catalog
    from voicenote.kafka import ensure_topics

    s = Settings()
    catalog = build_catalog(prefix=s.kafka.topic_prefix, request_partitions=s.kafka.request_partitions, partitions=s.kafka.partitions)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicenote", description="Voicenote: text to voice notes over Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole service here (embedded broker, Redis, API, workers)")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--data-dir", default="var")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
