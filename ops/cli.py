"""The ``voicenote`` command line.

Exit codes: 0 done, 1 the command failed (a service did not answer, a record was not acknowledged),
2 usage (a bad flag, filter, time or input; nothing was done), 130 interrupted. Every failure is one
line on stderr saying what went wrong and what to do; ``--log-level debug`` adds the traceback.
Actions that publish (replay, redrive) are dry runs unless ``--execute`` is given.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

from schemas.clock import now_ms
from voicenote.errors import DependencyUnavailable, VoicenoteError
from voicenote.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("voicenote.cli")

HINTS = {
    "kafka": "is the broker running? pass --bootstrap-server HOST:PORT or set VOICENOTE_KAFKA__BOOTSTRAP_SERVERS",
    "redis": "is Redis running? set VOICENOTE_REDIS__URL",
    "storage": "check the VOICENOTE_STORAGE__* settings",
}


class UsageError(VoicenoteError):
    """A bad flag or input: nothing was done (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- shared pieces -------------------------------------------------------------------------------------

def _settings(args: argparse.Namespace) -> Settings:
    from pydantic import ValidationError

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"invalid setting {where}: {first['msg']} (check the VOICENOTE_* environment)") from None
    updates: dict[str, Any] = {}
    if args.bootstrap_server:
        updates["bootstrap_servers"] = args.bootstrap_server
    if args.topic_prefix is not None:
        updates["topic_prefix"] = args.topic_prefix
    if updates:
        settings.kafka = settings.kafka.model_copy(update=updates)
    return settings


def _require_broker(settings: Settings, timeout: float) -> None:
    """Fail in one line, within ``timeout``, when no broker answers (instead of librdkafka's retry chatter)."""
    from voicenote.kafka import KafkaException, admin_client

    admin = admin_client(settings.kafka, {"log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        raise DependencyUnavailable(
            "kafka", f"no Kafka broker answered at {settings.kafka.bootstrap_servers} within {timeout:g}s") from None


def _kafka(args: argparse.Namespace) -> Settings:
    settings = _settings(args)
    _require_broker(settings, args.connect_timeout)
    return settings


def _epoch_ms(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"bad {flag} {text!r}: expected an ISO time such as 2026-11-25T09:30:00Z (UTC if no zone)") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def _filters(items: Sequence[str], fields: Sequence[str], example: str) -> dict[str, str]:
    filters: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"bad --filter {item!r}: expected FIELD=VALUE, e.g. {example}")
        if key not in fields and not key.startswith("attributes."):
            raise UsageError(f"bad --filter {item!r}: unknown field {key!r}; use one of {', '.join(fields)} or attributes.NAME")
        filters[key] = value
    return filters


def _schema_fields(event: str) -> list[str]:
    from schemas.codec import load_schema

    return [f["name"] for f in load_schema(event).parsed["fields"] if f["name"] != "attributes"]


class Pacer:
    """Spaces calls ``1/rate`` seconds apart; a pause (a slow broker) is not made up by a burst afterwards."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next is not None and self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


PROGRESS_EVERY_SECONDS = 3.0


class _Progress:
    """Progress on stderr: a tqdm counter (count and rate) on a terminal or with --progress on; with
    --progress auto and stderr not a terminal (a pipe, a log file), a plain line every few seconds."""

    def __init__(self, args: argparse.Namespace, desc: str, unit: str = "records", *,
                 every: float = PROGRESS_EVERY_SECONDS) -> None:
        from tqdm import tqdm

        self._desc, self._unit = desc, unit
        self._count, self._postfix = 0, ""
        self._started = time.monotonic()
        self._lines: _ProgressLines | None = None
        disable = {"on": False, "off": True}.get(args.progress)  # None: only on a terminal
        if disable is None and not _isatty(sys.stderr):
            disable = True
            self._lines = _ProgressLines(self, every)
        self._bar = tqdm(desc=desc, unit=f" {unit}", file=sys.stderr, disable=disable, mininterval=0.5,
                         dynamic_ncols=True, leave=True)

    def __call__(self, report: Any) -> None:
        self._count += 1
        self._bar.update(1)
        if hasattr(report, "matched"):
            self._postfix = f", matched={report.matched}, published={report.published}"
            self._bar.set_postfix(matched=report.matched, published=report.published, refresh=False)

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        return f"{self._desc}: {self._count} {self._unit} in {elapsed:.0f}s ({self._count / max(elapsed, 1e-9):.1f}/s){self._postfix}"

    def close(self) -> None:
        if self._lines is not None:
            self._lines.stop()
        self._bar.close()


class _ProgressLines:
    """Writes the counter's line to stderr every ``every`` seconds, from a thread, so a slow read shows too."""

    def __init__(self, progress: _Progress, every: float) -> None:
        import threading

        self._progress = progress
        self._every = every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voicenote-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            try:
                print(self._progress.line(), file=sys.stderr, flush=True)
            except (OSError, ValueError):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(1)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def emit(line: str) -> bool:
    """Print a result line on stdout; False once the reader has gone (``voicenote watch | head -1``).

    Then stdout goes to /dev/null, so nothing writes a BrokenPipeError traceback at exit; commands that
    only show things stop, commands that act (replay, redrive) finish their work.
    """
    global _STDOUT_GONE
    if _STDOUT_GONE:
        return False
    try:
        print(line, flush=True)
        return True
    except BrokenPipeError:
        _STDOUT_GONE = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        return False


_STDOUT_GONE = False


def _with_progress(args: argparse.Namespace, desc: str, action: Callable[[_Progress], Any]) -> Any:
    bar = _Progress(args, desc)
    try:
        return action(bar)
    finally:
        bar.close()


def _dry_run_note(report: Any, what: str, args: argparse.Namespace) -> None:
    if not args.execute:
        print(f"dry run: {report.matched} of {report.read} {what} would be published; add --execute to publish them",
              file=sys.stderr)


# -- services ------------------------------------------------------------------------------------------

def _cmd_run(args: argparse.Namespace) -> int:
    from ops.embedded import run_embedded

    return run_embedded(Path(args.data_dir), args.port, args.broker_storage)


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from producer_api.app import create_app
    from voicenote.tracing import configure_tracing

    settings = _settings(args)
    settings.api.host = args.host or settings.api.host  # the metrics port, when set, listens on the same host
    configure_tracing("voicenote-api", settings.tracing)
    uvicorn.run(create_app(settings), host=settings.api.host, port=args.port or settings.api.port,
                log_level=args.log_level or "info", access_log=False, log_config=None)  # uvicorn's lines in our format (JSON in k8s)
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from stream_workers.app import Role
    from stream_workers.main import run_worker

    settings = _settings(args)
    if args.web_port:
        settings.worker.web_port = args.web_port
    run_worker(settings, Role(args.role))
    return EXIT_OK


def _cmd_s1mini(args: argparse.Namespace) -> int:
    """``s1mini tiny-checkpoint DIR``: a tiny random checkpoint the S1-mini worker loads (needs torch)."""
    try:
        from stream_workers.engine.s1mini.tiny_checkpoint import FILES, WORKER_ENV, write_tiny_checkpoint
    except ImportError as exc:
        raise VoicenoteError(f"the S1-mini engine is not installed ({exc}); pip install 'voicenote[s1mini]'") from exc

    path = Path(args.dir)
    taken = [name for name in FILES if (path / name).exists()]
    if taken and not args.force:
        raise UsageError(f"{path} already has {', '.join(taken)}; pass --force to overwrite")
    write_tiny_checkpoint(path, seed=args.seed)
    where = path.resolve()
    print(f"wrote a tiny random openaudio-s1-mini checkpoint to {where}; a worker on it (random weights: noise, "
          f"cut at 24 frames):")
    env = {**WORKER_ENV, "VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR": str(where)}
    print("  " + " ".join(f"{k}={v}" for k, v in env.items()) + " voicenote worker synthesis")
    return EXIT_OK


# -- provisioning --------------------------------------------------------------------------------------

def _cmd_topics(args: argparse.Namespace) -> int:
    from voicenote.kafka import ensure_topics

    if args.action == "list":
        for spec in _settings(args).kafka.catalog().all():
            print(f"{spec.name:40} partitions={spec.partitions:<3} {spec.config()}")
        return EXIT_OK
    if args.action == "check":
        return _check_topics(args)
    settings = _kafka(args)
    created = ensure_topics(settings.kafka, settings.kafka.catalog().all())
    print(f"created: {', '.join(created) or 'nothing (all exist)'}")
    return EXIT_OK


class TopicsRefused(VoicenoteError):
    """A catalog topic exists with another partition count: waiting will not fix it."""


def _check_topics(args: argparse.Namespace, poll_seconds: float = 2.0) -> int:
    """Exit 0 once every catalog topic exists with its partition count (the workers' init container runs
    this, so nothing produces to or subscribes to a topic before ``topics create`` made it). With
    ``--wait S`` it polls for up to S seconds while topics are missing (or the broker does not answer);
    a topic with the wrong partition count is refused at once."""
    from voicenote.kafka import check_topics

    settings = _settings(args)
    specs = settings.kafka.catalog().all()
    deadline = time.monotonic() + args.wait
    reported: list[str] = []
    while True:
        try:
            _require_broker(settings, args.connect_timeout)  # one quiet line when no broker answers
            result = check_topics(settings.kafka, specs, timeout=args.connect_timeout)
        except DependencyUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_seconds)
            continue
        if result.wrong_partitions:
            found = "; ".join(f"{name} has {have} partition(s), the catalog needs {want}"
                              for name, have, want in result.wrong_partitions)
            raise TopicsRefused(
                f"refused: {found}. It was made before `voicenote topics create` (a broker that auto-creates "
                f"topics makes them on the first produce) or by hand: delete it and rerun `voicenote topics create`, "
                f"or set the catalog's partitions (VOICENOTE_KAFKA__REQUEST_PARTITIONS, __PARTITIONS) to match")
        if result.ok:
            print(f"ok: {len(specs)} topics, each with its partitions")
            return EXIT_OK
        if time.monotonic() >= deadline:
            raise VoicenoteError(f"missing topics: {', '.join(result.missing)} (`voicenote topics create`, the "
                                 f"voicenote-topics Job, makes them)")
        if result.missing != reported:  # a line when the set changes, not one a poll
            print(f"waiting for topics: {', '.join(result.missing)}", file=sys.stderr, flush=True)
            reported = result.missing
        time.sleep(poll_seconds)


def _cmd_storage(args: argparse.Namespace) -> int:
    import asyncio

    from voicenote.storage import build_store

    s = _settings(args).storage

    async def provision() -> None:
        store = build_store(s)
        try:
            await store.provision()
        finally:
            await store.close()

    asyncio.run(provision())
    where = f"s3://{s.s3_bucket}/{s.key_prefix}" if s.backend.value == "s3" else str(s.local_dir)
    print(f"provisioned {where}: audio expires after {s.lifecycle_days} days")
    return EXIT_OK


def _cmd_keys(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from producer_api.auth import SCOPES, new_token
    from voicenote.settings import ApiKey

    unknown = sorted(set(args.scope or []) - set(SCOPES))
    if unknown:
        raise UsageError(f"unknown --scope {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    existing = _settings(args).api.keys
    if any(k.name == args.name for k in existing):
        raise UsageError(f"a key named {args.name!r} is already configured in VOICENOTE_API__KEYS; choose another --name")
    token, digest = new_token()
    try:
        scopes = {"scopes": args.scope} if args.scope else {}  # else ApiKey's default, which leaves admin out
        key = ApiKey(name=args.name, sha256=digest, rate_per_second=args.rate_per_second, burst=args.burst, **scopes)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"bad --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    entry = key.model_dump(mode="json", exclude_none=True)
    keys = [k.model_dump(mode="json", exclude_none=True) for k in existing] + [entry]
    print(f"token: {token}")
    print(f"key: {json.dumps(entry, separators=(',', ':'))}")
    print(f"VOICENOTE_API__KEYS='{json.dumps(keys, separators=(',', ':'))}'")
    print("the token is shown only once: hand it to the caller; the settings keep only its SHA-256", file=sys.stderr)
    return EXIT_OK


# -- reprocessing --------------------------------------------------------------------------------------

def _cmd_projection(args: argparse.Namespace) -> int:
    import asyncio

    from ops.rebuild import rebuild
    from voicenote.jobstore import JobStore

    if args.timeout <= 0:
        raise UsageError(f"bad --timeout {args.timeout:g}: expected seconds, more than 0")
    settings = _kafka(args)

    async def run(bar: _Progress) -> Any:
        jobs = JobStore.from_settings(settings.redis)
        try:
            return await rebuild(settings, jobs, progress=bar, timeout=args.timeout)
        finally:
            await jobs.close()

    report = _with_progress(args, "projection rebuild", lambda bar: asyncio.run(run(bar)))
    print(f"replayed {report.requests} requests and {report.completions} completions "
          f"({report.skipped_expired} past their TTL skipped, {report.undecodable} undecodable); restored "
          f"{report.batches} batch records ({report.batches_incomplete} incomplete batches left out) and "
          f"{report.idempotency_keys} Idempotency-Key answers and {report.webhook_states} webhook states "
          f"(from {report.webhook_outcomes} delivery outcomes)")
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from ops.replay import Range, replay_requests
    from voicenote.client import new_job_id

    filters = _filters(args.filter, _schema_fields("SynthesisRequest"), "voice=alloy or attributes.owner=acme")
    start_ms, end_ms = _epoch_ms("--since", args.since), _epoch_ms("--until", args.until)
    start, sep, end = (args.offsets or ":").partition(":")
    if not sep or (start and not start.isdigit()) or (end and not end.isdigit()):
        raise UsageError(f"bad --offsets {args.offsets!r}: expected START:END, e.g. 100:200, 100: or :200")
    rng = Range(start_ms=start_ms, end_ms=end_ms, start_offset=int(start) if start else None,
                end_offset=int(end) if end else None, partitions=tuple(args.partition) if args.partition else None)
    settings = _kafka(args)

    def published(job_id: str, replay_of: str) -> None:  # once acknowledged, so every id printed is a job
        emit(json.dumps({"job_id": job_id, "replay_of": replay_of}) if args.json else f"{job_id} {replay_of}")

    report = _with_progress(args, "replay", lambda bar: replay_requests(
        settings.kafka, settings.kafka.catalog().requests.name, rng, filters, new_job_id=new_job_id,
        dry_run=not args.execute, progress=bar, on_published=published))
    emit(json.dumps(report.as_dict()))
    _dry_run_note(report, "requests", args)
    return EXIT_OK


def _cmd_dlq(args: argparse.Namespace) -> int:
    from ops.replay import redrive_dead_letters, redrive_group

    settings = _kafka(args)
    group = args.group or redrive_group(settings.worker.group_id, "dlq", error_type=args.error_type, source_topic=args.source_topic)
    report = _with_progress(args, "dlq redrive", lambda bar: redrive_dead_letters(
        settings.kafka, settings.kafka.catalog().dead_letter.name, group_id=group, error_type=args.error_type,
        source_topic=args.source_topic, dry_run=not args.execute, progress=bar))
    emit(json.dumps(report.as_dict()))
    _dry_run_note(report, "dead letters", args)
    return EXIT_OK


def _cmd_webhooks(args: argparse.Namespace) -> int:
    from ops.replay import redrive_group, redrive_webhooks

    settings = _kafka(args)
    catalog = settings.kafka.catalog()
    assert catalog.webhook_dead_letter is not None and catalog.webhook_retries
    dead_letters = catalog.webhook_dead_letter.name
    group = args.group or redrive_group(settings.worker.group_id, "webhooks", error_type=args.error_type, job_id=args.job_id)
    report = _with_progress(args, "webhooks redrive", lambda bar: redrive_webhooks(
        settings.kafka, dead_letters, catalog.webhook_retries[0].name, group_id=group,
        error_type=args.error_type, job_id=args.job_id, dry_run=not args.execute, progress=bar))
    emit(json.dumps(report.as_dict()))
    _dry_run_note(report, "webhook deliveries", args)
    return EXIT_OK


# -- looking ---------------------------------------------------------------------------------------------

def _cmd_lag(args: argparse.Namespace) -> int:
    from ops.lag import group_lag, list_groups

    settings = _kafka(args)
    groups = args.group or [g for g in list_groups(settings.kafka) if args.all_groups or g.startswith(f"{settings.worker.group_id}-")]
    rows = []
    for group in sorted(groups):
        found = group_lag(settings.kafka, group)
        if not found and args.group:
            raise VoicenoteError(f"consumer group {group!r} has no committed offsets (check the name with `voicenote lag --all-groups`)")
        rows.extend(found)
    if not rows:
        print(f"no consumer group named {settings.worker.group_id}-* has committed offsets yet (--all-groups lists every group)",
              file=sys.stderr)
        return EXIT_OK
    if args.json:
        for row in rows:
            emit(json.dumps(row.__dict__))
        return EXIT_OK
    print(f"{'GROUP':36} {'TOPIC':40} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}")
    for row in rows:
        print(f"{row.group:36} {row.topic:40} {row.partition:>9} {row.committed:>10} {row.end:>10} {row.lag:>8}")
    return EXIT_OK


def _completion_line(c: Any) -> str:
    at = datetime.fromtimestamp(c.completed_at / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    detail = c.audio_url or "" if c.ok else f"{c.error_code}: {c.error_message}"
    return f"{at} {c.job_id} {c.status} {c.duration_ms}ms {detail}".rstrip()


def _cmd_submit(args: argparse.Namespace) -> int:
    from voicenote.client import InvalidRequest, VoicenoteClient

    if args.rate is not None and args.rate <= 0:
        raise UsageError(f"bad --rate {args.rate:g}: expected requests per second above 0")
    if (args.text is None) == (args.file is None):
        raise UsageError("give the text to say, or --file PATH with one note per line (see `voicenote submit --help`)")
    if args.file is not None:
        try:
            lines = Path(args.file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --file {args.file}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
        texts = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
        if not texts:
            raise UsageError(f"--file {args.file} has no non-empty lines")
    else:
        texts = [(0, args.text)]
    settings = _kafka(args)
    client = VoicenoteClient(settings.kafka)
    options = {"voice": args.voice, "format": args.format, "priority": args.priority}
    # Every line is checked before the first is sent: a bad line 900 must not leave 899 jobs behind.
    for n, text in texts:
        try:
            client.request(text, **options)
        except InvalidRequest as exc:
            raise UsageError(f"{f'line {n} of {args.file}' if n else 'the text'}: {exc}; nothing was submitted") from None
    started_ms = now_ms()
    job_ids = []
    pacer = Pacer(args.rate)
    bar = _Progress(args, "submit", "requests")
    try:
        for _n, text in texts:
            pacer.wait()
            job_ids.append(client.publish(text, **options))
            bar(None)
            emit(job_ids[-1])
    finally:
        bar.close()
        client.close()  # confirms every request; a PublishError names what the broker did not take
    if not args.wait:
        return EXIT_OK
    return _await_jobs(client, job_ids, started_ms, args.timeout)


def _await_jobs(client: Any, job_ids: list[str], started_ms: int, timeout: float) -> int:
    from voicenote.client import CLOCK_SLACK_MS

    pending = set(job_ids)
    failed = 0
    deadline = time.monotonic() + timeout
    stream = client.completions(since_ms=started_ms - CLOCK_SLACK_MS, idle_timeout=timeout,
                                on_undecodable=lambda _m, _e: None)
    try:
        for completion in stream:
            if completion.job_id in pending:
                pending.discard(completion.job_id)
                failed += not completion.ok
                emit(_completion_line(completion))
            if not pending or time.monotonic() > deadline:
                break
    finally:
        stream.close()
    if pending:
        raise VoicenoteError(f"{len(pending)} of {len(job_ids)} jobs did not complete within {timeout:g}s "
                             f"(they may still; follow them with `voicenote watch`)")
    if failed:
        raise VoicenoteError(f"{failed} of {len(job_ids)} jobs did not succeed (see the lines above)")
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    from ops.replay import matches
    from voicenote.client import VoicenoteClient

    filters = _filters(args.filter, _schema_fields("JobCompletion"), "status=failed")
    since_ms = _epoch_ms("--since", args.since)
    if args.count is not None and args.count < 1:
        raise UsageError(f"bad --count {args.count}: expected 1 or more")
    settings = _kafka(args)
    client = VoicenoteClient(settings.kafka)
    skipped = 0

    def undecodable(msg: Any, exc: Exception) -> None:
        nonlocal skipped
        skipped += 1  # the completion worker dead-letters it; a tail only reports it
        print(f"skipped an undecodable record at {msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc}", file=sys.stderr)

    shown = 0
    stream: Iterator[Any] = client.completions(group_id=args.group, since_ms=since_ms, from_beginning=args.from_beginning,
                                               until_end=args.exit_at_end, on_undecodable=undecodable)
    try:
        for completion in stream:
            if since_ms is not None and completion.completed_at < since_ms:
                continue  # the start offset is found by record time, and brokers answer that loosely
            if not matches(dict(completion.record), filters):
                continue
            if not emit(json.dumps(dict(completion.record), default=_jsonable) if args.json else _completion_line(completion)):
                break  # the reader has gone: `voicenote watch | head -1`
            shown += 1
            if args.count is not None and shown >= args.count:
                break
    finally:
        stream.close()  # type: ignore[attr-defined]
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# -- parser ----------------------------------------------------------------------------------------------

def _version() -> str:
    try:
        return version("voicenote")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _execute_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--execute", "--yes", action="store_true", help="act: publish what a dry run would only count")
    p.add_argument("--dry-run", action="store_false", dest="execute", help="count only (the default)")


def _global_flags(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--bootstrap-server", metavar="HOST:PORT", default=default(None),
                   help="Kafka brokers (overrides VOICENOTE_KAFKA__BOOTSTRAP_SERVERS)")
    p.add_argument("--topic-prefix", metavar="PREFIX", default=default(None),
                   help="prepended to every topic name (overrides VOICENOTE_KAFKA__TOPIC_PREFIX)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=default(None),
                   help="default: info for run, api and worker; warning otherwise")
    p.add_argument("--progress", choices=["auto", "on", "off"], default=default("auto"),
                   help="progress counters on stderr (auto: on a terminal)")
    p.add_argument("--connect-timeout", type=float, default=default(10.0), metavar="SECONDS",
                   help="how long to wait for the broker before giving up (default 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="voicenote", description="Voicenote: text to voice notes over Kafka.",
                     epilog="exit codes: 0 done, 1 failed, 2 usage (nothing was done), 130 interrupted. "
                            "Settings come from VOICENOTE_* variables; the flags above override them.")
    parser.add_argument("--version", action="version", version=f"voicenote {_version()}")
    _global_flags(parser, suppress=False)
    # The global flags are taken after the command too (`voicenote lag --bootstrap-server ...`, as the
    # Kafka tools take them); there they only override what was given before it.
    common = _Parser(add_help=False)
    _global_flags(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    run = command("run", help="run the whole service here (embedded broker, Redis, API, workers)")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--data-dir", default="var")
    run.add_argument("--broker-storage", choices=["diskstore", "disk", "memory"], default=None,
                     help="diskstore (default): topics and accepted work kept in <data-dir>/broker across broker restarts, "
                          "runs and power cuts (Tansu on ops.diskstore); disk: the same on SeaweedFS (the default of "
                          "a data dir that already holds SeaweedFS data); memory: lost when the broker stops")
    run.set_defaults(func=_cmd_run)

    api = command("api", help="run the HTTP producer API (settings from VOICENOTE_* env)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=_cmd_api)

    worker = command("worker", help="run a stream worker")
    worker.add_argument("role", choices=["synthesis", "completion", "webhooks"])
    worker.add_argument("--web-port", type=int, help="Faust's web port (one per worker process)")
    worker.set_defaults(func=_cmd_worker)

    s1mini = command("s1mini", help="S1-mini helpers: `s1mini tiny-checkpoint DIR` writes a tiny random checkpoint "
                     "the worker loads (trying the path without the real weights)")
    s1mini.add_argument("action", choices=["tiny-checkpoint"])
    s1mini.add_argument("dir", metavar="DIR", help="the checkpoint directory (created if need be)")
    s1mini.add_argument("--seed", type=int, default=7, help="of the random weights (default 7)")
    s1mini.add_argument("--force", action="store_true", help="overwrite the checkpoint files DIR already has")
    s1mini.set_defaults(func=_cmd_s1mini)

    topics = command("topics", help="provision, list or check the topic catalog (check: exit 0 once every topic exists "
                                    "with its partitions)")
    topics.add_argument("action", choices=["create", "list", "check"])
    topics.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="check: keep checking for up to SECONDS while topics are missing (default: once)")
    topics.set_defaults(func=_cmd_topics)

    storage = command("storage", help="create the bucket (or folder) and apply the audio lifecycle (TTL)")
    storage.add_argument("action", choices=["provision"])
    storage.set_defaults(func=_cmd_storage)

    keys = command("keys", help="API keys: `keys new` makes a token and the hashed settings entry")
    keys.add_argument("action", choices=["new"])
    keys.add_argument("--name", required=True, help="who the key is for; owner of the jobs it submits")
    keys.add_argument("--scope", action="append", help="speech, jobs and/or admin (repeatable; default speech and jobs: "
                      "admin, which reads every job, is given only when asked for)")
    keys.add_argument("--rate-per-second", type=float, help="overrides api.rate_per_second for this key")
    keys.add_argument("--burst", type=int)
    keys.set_defaults(func=_cmd_keys)

    projection = command("projection", help="rebuild the job-status projection in Redis by replaying the topics")
    projection.add_argument("action", choices=["rebuild"])
    projection.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                            help="how long reading one topic to its end may take before the rebuild fails (default 300)")
    projection.set_defaults(func=_cmd_projection)

    replay = command("replay", help="publish requests from a time or offset range again, as new jobs (dry run unless --execute)")
    replay.add_argument("--since", help="ISO time, inclusive (UTC if no zone)")
    replay.add_argument("--until", help="ISO time, exclusive")
    replay.add_argument("--offsets", help="START:END offsets (END exclusive), per partition")
    replay.add_argument("--partition", type=int, action="append", help="only these partitions (repeatable)")
    replay.add_argument("--filter", action="append", default=[],
                        help="FIELD=VALUE, e.g. voice=alloy (as requested) or attributes.owner=acme (repeatable, all must hold)")
    replay.add_argument("--json", action="store_true", help="each new job as a JSON object (job_id, replay_of)")
    _execute_flags(replay)
    replay.set_defaults(func=_cmd_replay)

    dlq = command("dlq", help="dead letters: `dlq redrive` sends each letter back to its topic once (dry run unless --execute)")
    dlq.add_argument("action", choices=["redrive"])
    dlq.add_argument("--error-type", help="only letters with this reason, e.g. unknown_schema")
    dlq.add_argument("--source-topic", help="only letters from this topic")
    dlq.add_argument("--group", help="the consumer group recording what was redriven (default: one per selection)")
    _execute_flags(dlq)
    dlq.set_defaults(func=_cmd_dlq)

    webhooks = command("webhooks", help="`webhooks redrive` re-sends dead-lettered webhooks once (dry run unless --execute)")
    webhooks.add_argument("action", choices=["redrive"])
    webhooks.add_argument("--error-type", choices=["webhook_failed", "webhook_refused"], help="only these letters")
    webhooks.add_argument("--job-id", help="only this job's delivery")
    webhooks.add_argument("--group", help="the consumer group recording what was redriven (default: one per selection)")
    _execute_flags(webhooks)
    webhooks.set_defaults(func=_cmd_webhooks)

    lag = command("lag", help="consumer lag per group and partition")
    lag.add_argument("--group", action="append", help="only this group (repeatable; default: the workers' groups)")
    lag.add_argument("--all-groups", action="store_true", help="every group on the cluster, not only Voicenote's")
    lag.add_argument("--json", action="store_true", help="one JSON object per partition")
    lag.set_defaults(func=_cmd_lag)

    submit = command("submit", help="publish requests straight to Kafka: a text, or a file with one note per line")
    submit.add_argument("text", nargs="?", help="what to say")
    submit.add_argument("--file", help="one note per non-empty line")
    submit.add_argument("--voice", default="default")
    submit.add_argument("--format", default="wav")
    submit.add_argument("--priority", default="batch", choices=["batch", "interactive"])
    submit.add_argument("--rate", type=float, help="at most this many requests per second")
    submit.add_argument("--wait", action="store_true", help="then wait for every job's completion (exit 1 if one fails)")
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
    submit.set_defaults(func=_cmd_submit)

    watch = command("watch", help="tail the completion topic, kcat-like (from the end unless told otherwise)")
    watch.add_argument("--filter", action="append", default=[], help="FIELD=VALUE on the completion, e.g. status=failed (repeatable)")
    start = watch.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at the oldest retained completion")
    start.add_argument("--since", help="start at this ISO time")
    watch.add_argument("--group", help="consume as this group, which keeps the position between runs")
    watch.add_argument("--count", "-c", type=int, help="exit after this many completions")
    watch.add_argument("--exit-at-end", "-e", action="store_true", help="exit at the end of every partition")
    watch.add_argument("--json", action="store_true", help="the whole completion as one JSON object per line")
    watch.set_defaults(func=_cmd_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"voicenote: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    service = args.command in ("run", "api", "worker")
    level = (args.log_level or ("info" if service else "warning")).upper()
    try:
        if service:  # the services log in the configured format (JSON in k8s), with job_id and trace_id
            from voicenote.logs import configure_logging

            configure_logging(_settings(args).log.format, level)
        else:
            logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        return int(args.func(args) or EXIT_OK)
    except UsageError as exc:
        print(f"voicenote: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DependencyUnavailable as exc:
        log.debug("failed", exc_info=True)
        print(f"voicenote: error: {exc}; {HINTS.get(exc.dependency, 'check that it is running')}", file=sys.stderr)
        return EXIT_FAILURE
    except VoicenoteError as exc:
        log.debug("failed", exc_info=True)
        print(f"voicenote: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("voicenote: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away under a command that does not check
        emit("")
        return EXIT_OK
    except Exception as exc:  # the last resort: one line, the traceback only when asked for
        log.debug("unexpected failure", exc_info=True)
        print(f"voicenote: error: unexpected {type(exc).__name__}: {exc} (rerun with --log-level debug for the traceback "
              f"and report it)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
