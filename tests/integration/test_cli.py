"""The ``voicenote`` CLI in-process (``main(argv)``) against the real broker and Redis: every command,
its output, and each error path as one line with its exit code."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ops.cli import main
from ops.replay import Range, read_range
from producer_api.auth import hash_token
from schemas.codec import Codecs
from schemas.events import WebhookDelivery
from tests.integration.test_client import completion, publish_completions
from tests.stack import CHECKOUT_PATH
from voicenote.kafka import client_config, ensure_topics
from voicenote.settings import Settings, to_env

pytestmark = pytest.mark.integration

UNREACHABLE = ["--bootstrap-server", "127.0.0.1:1", "--connect-timeout", "1"]


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Runs the CLI with this test's settings: broker and prefix as flags, the rest from the environment."""
    for key in [k for k in os.environ if k.startswith("VOICENOTE_")]:
        monkeypatch.delenv(key)
    for key, value in to_env(settings).items():
        if key not in ("VOICENOTE_KAFKA__BOOTSTRAP_SERVERS", "VOICENOTE_KAFKA__TOPIC_PREFIX"):
            monkeypatch.setenv(key, value)
    flags = ["--bootstrap-server", settings.kafka.bootstrap_servers, "--topic-prefix", settings.kafka.topic_prefix]

    def run(*argv: str, connect: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*(flags if connect else []), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("voicenote: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def topics(settings: Settings) -> None:
    ensure_topics(settings.kafka, settings.kafka.catalog().all())


def produce(settings: Settings, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(client_config(settings.kafka))
    for key, value in values:
        producer.produce(topic, key=key, value=value)
        producer.flush(10)  # one record per batch: Tansu's high watermark counts batches (docs/client.md)
    assert producer.flush(10) == 0


# -- global flags and usage ------------------------------------------------------------------------------

def test_version_and_help_exit_zero(cli) -> None:
    code, out, _ = cli("--version", connect=False)
    assert code == 0 and out.startswith("voicenote ") and out.split()[1][0].isdigit()
    code, out, _ = cli("--help", connect=False)
    assert code == 0 and "exit codes: 0 done, 1 failed, 2 usage" in out.replace("\n", " ").replace("  ", " ")
    for command in ("submit", "watch", "lag", "keys", "webhooks", "dlq", "replay", "projection"):
        assert command in out


@pytest.mark.parametrize("argv", [
    ["frobnicate"],
    ["replay", "--since", "yesterday"],
    ["replay", "--until", "2026-13-45"],
    ["replay", "--filter", "voice"],
    ["replay", "--filter", "colour=blue"],
    ["replay", "--offsets", "ten:20"],
    ["replay", "--partition", "one"],
    ["watch", "--filter", "nope=1"],
    ["watch", "--since", "tomorrow-ish"],
    ["watch", "--count", "0"],
    ["watch", "--from-beginning", "--since", "2026-01-01"],
    ["submit"],
    ["submit", "hello", "--rate", "0"],
    ["submit", "--file", "/nonexistent/notes.txt"],
    ["keys", "new"],
    ["keys", "new", "--name", "ops", "--scope", "superuser"],
    ["dlq", "purge"],
    ["webhooks", "redrive", "--error-type", "other"],
])
def test_usage_errors_are_one_line_and_exit_2(cli, argv: list[str]) -> None:
    code, out, err = cli(*argv, connect=False)
    line = one_line(err)
    assert code == 2 and out == "", line


@pytest.mark.parametrize("argv", [
    ["topics", "create"], ["topics", "check"], ["replay"], ["dlq", "redrive"], ["webhooks", "redrive"], ["projection", "rebuild"],
    ["lag"], ["submit", "hello"], ["watch"],
])
def test_an_unreachable_broker_is_one_line_and_exit_1(cli, argv: list[str]) -> None:
    code, out, err = cli(*UNREACHABLE, *argv, connect=False)
    line = one_line(err)
    assert code == 1 and out == ""
    assert "no Kafka broker answered at 127.0.0.1:1" in line and "--bootstrap-server" in line


def test_a_bad_setting_in_the_environment_is_one_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICENOTE_KAFKA__PARTITIONS", "many")
    code, _, err = cli("topics", "list")
    assert code == 2 and "kafka.partitions" in one_line(err)


# -- provisioning ----------------------------------------------------------------------------------------

def test_topics_create_then_list_use_the_flags(cli, settings: Settings) -> None:
    code, out, _ = cli("topics", "create")
    assert code == 0 and f"{settings.kafka.topic_prefix}voicenote.requests.v1" in out
    code, out, _ = cli("topics", "create")
    assert code == 0 and "nothing (all exist)" in out
    code, out, _ = cli("topics", "list")
    assert code == 0 and all(line.startswith(settings.kafka.topic_prefix) for line in out.splitlines())


def test_topics_check_fails_until_topics_create_ran(cli, settings: Settings) -> None:
    code, out, err = cli("topics", "check")
    line = one_line(err)
    assert code == 1 and out == ""
    assert "missing topics:" in line and f"{settings.kafka.topic_prefix}voicenote.requests.v1" in line
    assert cli("topics", "create")[0] == 0
    code, out, err = cli("topics", "check", "--wait", "5")
    assert code == 0 and out.startswith(f"ok: {len(settings.kafka.catalog().all())} topics"), err


def test_topics_check_waits_for_the_topics_then_passes(cli, settings: Settings) -> None:
    import threading

    creator = threading.Timer(1.5, lambda: ensure_topics(settings.kafka, settings.kafka.catalog().all()))
    creator.start()
    try:
        started = time.monotonic()
        code, out, err = cli("topics", "check", "--wait", "30")
    finally:
        creator.join()
    assert code == 0, err
    assert "waiting for topics:" in err and out.startswith("ok:")
    assert 1.0 < time.monotonic() - started < 30


def test_topics_check_refuses_a_topic_with_the_wrong_partition_count_at_once(cli, settings: Settings) -> None:
    """What a broker that auto-creates topics leaves when a client came first: a 1-partition topic."""
    catalog = settings.kafka.catalog()
    ensure_topics(settings.kafka, [dataclasses.replace(catalog.requests, partitions=1)])
    assert cli("topics", "create")[0] == 0  # creates the others; leaves the existing one as it is
    started = time.monotonic()
    code, out, err = cli("topics", "check", "--wait", "30")
    line = one_line(err)
    assert code == 1 and out == ""
    assert time.monotonic() - started < 10  # refused, not waited on
    assert f"{catalog.requests.name} has 1 partition(s), the catalog needs {catalog.requests.partitions}" in line
    assert line.startswith("voicenote: error: refused:") and "voicenote topics create" in line


def test_storage_provision(cli, settings: Settings) -> None:
    code, out, err = cli("storage", "provision")
    assert code == 0, err
    assert str(settings.storage.local_dir) in out


def test_keys_new_prints_a_token_and_its_hashed_settings_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli("keys", "new", "--name", "billing", "--scope", "jobs", "--rate-per-second", "5", connect=False)
    assert code == 0, err
    token = out.splitlines()[0].removeprefix("token: ")
    entry = json.loads(out.splitlines()[1].removeprefix("key: "))
    assert entry == {"name": "billing", "sha256": hash_token(token), "scopes": ["jobs"], "rate_per_second": 5.0}
    env_line = out.splitlines()[2]
    assert env_line.startswith("VOICENOTE_API__KEYS='")
    monkeypatch.setenv("VOICENOTE_API__KEYS", env_line.split("=", 1)[1].strip("'"))
    assert [k.name for k in Settings().api.keys] == ["billing"]  # the line is what the API reads
    code, out, _ = cli("keys", "new", "--name", "ops", connect=False)
    assert code == 0 and [k["name"] for k in json.loads(out.splitlines()[2].split("=", 1)[1].strip("'"))] == ["billing", "ops"]
    assert json.loads(out.splitlines()[1].removeprefix("key: "))["scopes"] == ["speech", "jobs"]  # admin only when asked for
    code, out, _ = cli("keys", "new", "--name", "root", "--scope", "admin", connect=False)
    assert code == 0 and json.loads(out.splitlines()[1].removeprefix("key: "))["scopes"] == ["admin"]
    code, _, err = cli("keys", "new", "--name", "billing", connect=False)
    assert code == 2 and "already configured" in one_line(err)
    code, _, err = cli("keys", "new", "--name", "x" * 80, connect=False)
    assert code == 2 and "--name" in one_line(err)


# -- reprocessing ----------------------------------------------------------------------------------------

def api_request(job_id: str, requested: str) -> dict:
    """A request as the API publishes it: the resolved voice id, the name asked for in attributes."""
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": f"note {job_id}", "voice": "en_US-joe-medium",
            "attributes": {"owner": "writer", "voice_requested": requested}}


def test_replay_filters_on_the_voice_requested_and_is_a_dry_run_by_default(cli, settings: Settings, topics: None) -> None:
    codecs = Codecs()
    topic = settings.kafka.catalog().requests.name
    records = [api_request("job_a1", "alloy"), api_request("job_e1", "echo"), api_request("job_a2", "alloy")]
    produce(settings, topic, [(r["job_id"].encode(), codecs.request.encode(r)) for r in records])

    code, out, err = cli("--progress", "on", "replay", "--filter", "voice=alloy")
    assert code == 0, err
    assert json.loads(out) == {"read": 3, "matched": 2, "published": 0, "undecodable": 0}
    assert "dry run: 2 of 3 requests would be published; add --execute" in err
    assert "replay: 3" in err and "/s" in err  # the progress counter: count and rate

    code, out, err = cli("replay", "--filter", "voice=alloy", "--filter", "attributes.owner=writer", "--execute")
    assert code == 0, err
    *jobs, summary = out.splitlines()
    assert json.loads(summary)["published"] == 2 and "dry run" not in err
    replayed = [r for r in (codecs.request.decode(m.value()) for m in read_range(settings.kafka, topic, Range()))
                if "replay_of" in r["attributes"]]
    assert sorted(r["attributes"]["replay_of"] for r in replayed) == ["job_a1", "job_a2"]
    # Every new job's id is printed, with the id it replays (regression: 6 jobs made, none of their ids shown).
    assert sorted(line.split() for line in jobs) == sorted([r["job_id"], r["attributes"]["replay_of"]] for r in replayed)

    code, out, err = cli("replay", "--filter", "attributes.replay_of=job_a1", "--execute", "--json")
    assert code == 0, err
    *jobs, summary = out.splitlines()
    [job] = [json.loads(line) for line in jobs]
    assert job["replay_of"] == next(r["job_id"] for r in replayed if r["attributes"]["replay_of"] == "job_a1")
    assert json.loads(summary)["published"] == 1

    code, out, _ = cli("replay", "--filter", "voice=en_US-joe-medium", "--since", "2020-01-01T00:00:00Z")
    assert code == 0 and json.loads(out)["matched"] == 6  # the installed id still matches too


def test_projection_rebuild_finishes_with_exit_0(cli, settings: Settings, topics: None) -> None:
    codecs = Codecs()
    produce(settings, settings.kafka.catalog().requests.name, [(b"job_p1", codecs.request.encode(api_request("job_p1", "alloy")))])
    publish_completions(settings, [completion("job_p1")])
    delivered = WebhookDelivery(job_id="job_p1", webhook_id="msg_job_p1", status="delivered", attempt=1,
                                attempted_at=int(time.time() * 1000), status_code=200)
    produce(settings, settings.kafka.catalog().webhook_deliveries.name,  # type: ignore[union-attr]
            [(b"job_p1", codecs.webhook_delivery.encode_event(delivered))])
    code, out, err = cli("--progress", "on", "projection", "rebuild")
    assert code == 0, err
    assert out.startswith("replayed 1 requests and 1 completions")
    assert out.rstrip().endswith("1 webhook states (from 1 delivery outcomes)")
    assert "projection rebuild: 3" in err


def test_projection_rebuild_counts_the_same_every_run(cli, settings: Settings, topics: None) -> None:
    # Regression: reading a topic gave up after 3 s without records, so five runs on the same data reported
    # 0, 0, 52, 3 and 52 requests. Each topic is now read to its end, taken when the read begins.
    codecs = Codecs()
    producer = Producer({**client_config(settings.kafka), "linger.ms": 20})  # batched: Tansu's ListOffsets counts batches
    for i in range(52):
        producer.produce(settings.kafka.catalog().requests.name, key=f"job_x{i}".encode(),
                         value=codecs.request.encode(api_request(f"job_x{i}", "alloy")))
    assert producer.flush(10) == 0
    publish_completions(settings, [completion(f"job_x{i}") for i in range(7)])
    outputs = []
    for _ in range(5):
        code, out, err = cli("projection", "rebuild")
        assert code == 0, err
        outputs.append(out)
    assert outputs == [outputs[0]] * 5
    assert outputs[0].startswith("replayed 52 requests and 7 completions")


def test_projection_rebuild_that_cannot_read_to_the_end_in_time_fails(cli, settings: Settings, topics: None) -> None:
    codecs = Codecs()
    produce(settings, settings.kafka.catalog().requests.name, [(b"job_t1", codecs.request.encode(api_request("job_t1", "alloy")))])
    code, out, err = cli("projection", "rebuild", "--timeout", "0.000001")
    assert code == 1 and out == ""  # no partial count
    assert "not read to their end within" in one_line(err)
    code, _, err = cli("projection", "rebuild", "--timeout", "0")
    assert code == 2 and "--timeout" in one_line(err)


def dead_letter(settings: Settings, offset: int, error_type: str, value: bytes, key: bytes | None = b"job_r") -> dict:
    return {"source_topic": settings.kafka.catalog().requests.name, "source_partition": 0, "source_offset": offset,
            "key": key, "value": value, "consumer": "synthesis", "error_type": error_type, "error_message": "m", "failed_at": 1}


def test_dlq_redrive_run_twice_publishes_once(cli, settings: Settings, topics: None) -> None:
    codecs = Codecs()
    catalog = settings.kafka.catalog()
    fixed = codecs.request.encode(api_request("job_r", "alloy"))
    letters = [dead_letter(settings, 7, "unknown_schema", fixed), dead_letter(settings, 8, "undecodable", b"junk", None)]
    produce(settings, catalog.dead_letter.name, [(b"", codecs.dead_letter.encode(d)) for d in letters])

    code, out, err = cli("dlq", "redrive", "--error-type", "unknown_schema")
    assert code == 0 and json.loads(out)["matched"] == 1 and json.loads(out)["published"] == 0
    assert "add --execute" in err
    assert list(read_range(settings.kafka, catalog.requests.name, Range())) == []  # the dry run sent nothing

    code, out, err = cli("--progress", "on", "dlq", "redrive", "--error-type", "unknown_schema", "--execute")
    assert code == 0, err
    assert json.loads(out) == {"read": 2, "matched": 1, "published": 1, "undecodable": 0}
    assert "dlq redrive: 2" in err
    code, out, _ = cli("dlq", "redrive", "--error-type", "unknown_schema", "--execute")
    assert code == 0 and json.loads(out) == {"read": 0, "matched": 0, "published": 0, "undecodable": 0}
    back = list(read_range(settings.kafka, catalog.requests.name, Range()))
    assert [m.value() for m in back] == [fixed]
    assert dict(back[0].headers())["voicenote-redrive-of"] == f"{catalog.requests.name}:0:7".encode()

    # A later letter is redriven on the next run, and only it.
    produce(settings, catalog.dead_letter.name, [(b"", codecs.dead_letter.encode(dead_letter(settings, 9, "unknown_schema", fixed)))])
    code, out, _ = cli("dlq", "redrive", "--error-type", "unknown_schema", "--execute")
    assert json.loads(out)["published"] == 1
    assert len(list(read_range(settings.kafka, catalog.requests.name, Range()))) == 2


def test_webhooks_redrive_sends_each_delivery_again_once(cli, settings: Settings, topics: None) -> None:
    codecs = Codecs()
    catalog = settings.kafka.catalog()
    assert catalog.webhook_dead_letter is not None
    value = codecs.completion.encode(completion("job_w", webhook_url="https://example.com/hook"))
    letter = {"source_topic": catalog.completions.name, "source_partition": 0, "source_offset": 3, "key": b"job_w",
              "value": value, "headers": {"webhook-attempt": b"8", "webhook-log": b'[{"attempt": 8}]'}, "consumer": "webhooks",
              "error_type": "webhook_failed", "error_message": "8 attempts failed", "failed_at": 1}
    produce(settings, catalog.webhook_dead_letter.name, [(b"job_w", codecs.dead_letter.encode(letter))])

    code, out, err = cli("webhooks", "redrive")
    assert code == 0 and json.loads(out)["matched"] == 1 and json.loads(out)["published"] == 0 and "add --execute" in err
    before = int(time.time() * 1000)
    code, out, err = cli("webhooks", "redrive", "--execute")
    assert code == 0 and json.loads(out)["published"] == 1, err
    code, out, _ = cli("webhooks", "redrive", "--execute")
    assert code == 0 and json.loads(out)["published"] == 0

    retry = catalog.webhook_retries[0].name
    [msg] = list(read_range(settings.kafka, retry, Range()))
    headers = dict(msg.headers())
    assert msg.key() == b"job_w" and msg.value() == value
    assert headers["webhook-attempt"] == b"9" and int(headers["webhook-due-at"]) >= before  # one more after the letter's 8
    assert headers["webhook-log"] == b'[{"attempt": 8}]'
    assert list(read_range(settings.kafka, catalog.completions.name, Range())) == []  # no second completion for anyone


# -- looking ---------------------------------------------------------------------------------------------

def test_lag_per_group_and_partition(cli, settings: Settings, topics: None) -> None:
    topic = settings.kafka.catalog().completions.name
    produce(settings, topic, [(None, b"a"), (None, b"b"), (None, b"c")])  # all on one partition: unkeyed, partition chosen below
    group = f"{settings.worker.group_id}-completion"
    consumer = Consumer({**client_config(settings.kafka), "group.id": group, "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(settings.kafka.partitions)}
    busy = max(ends, key=lambda p: ends[p])
    consumer.commit(offsets=[TopicPartition(topic, busy, 1)], asynchronous=False)
    consumer.close()

    code, out, err = cli("lag")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    assert out.splitlines()[1].split() == [group, topic, str(busy), "1", str(ends[busy]), str(ends[busy] - 1)]
    code, out, _ = cli("lag", "--group", group, "--json")
    assert code == 0 and json.loads(out) == {"group": group, "topic": topic, "partition": busy, "committed": 1,
                                             "end": ends[busy], "lag": ends[busy] - 1}
    code, out, err = cli("lag", "--group", "nobody-here")
    assert code == 1 and out == "" and "nobody-here" in one_line(err)


def test_submit_publishes_a_text_or_a_file_through_the_client(cli, settings: Settings, topics: None, tmp_path: Path) -> None:
    codecs = Codecs()
    topic = settings.kafka.catalog().requests.name
    code, out, err = cli("submit", "Your table is ready.", "--voice", "alloy")
    assert code == 0, err
    [job_id] = out.split()
    notes = tmp_path / "notes.txt"
    notes.write_text("First note.\n\nSecond note.\nThird note.\n")
    code, out, err = cli("submit", "--file", str(notes), "--rate", "50", "--format", "mp3")
    assert code == 0, err
    file_ids = out.split()
    records = {r["job_id"]: r for r in (codecs.request.decode(m.value()) for m in read_range(settings.kafka, topic, Range()))}
    assert set(records) == {job_id, *file_ids} and len(file_ids) == 3
    assert records[job_id]["attributes"]["voice_requested"] == "alloy"
    assert sorted(records[i]["text"] for i in file_ids) == ["First note.", "Second note.", "Third note."]
    assert {records[i]["format"] for i in file_ids} == {"mp3"}


def test_submit_checks_every_line_before_sending_any(cli, settings: Settings, topics: None, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("Fine.\n" + "x" * 5000 + "\n")
    code, out, err = cli("submit", "--file", str(notes))
    line = one_line(err)
    assert code == 2 and out == "" and f"line 2 of {notes}" in line and "nothing was submitted" in line
    code, _, err = cli("submit", "hello", "--voice", "bob")
    assert code == 2 and "unknown voice 'bob'" in one_line(err)
    assert list(read_range(settings.kafka, settings.kafka.catalog().requests.name, Range())) == []


def test_submit_wait_reports_a_job_that_does_not_finish(cli, topics: None) -> None:
    code, out, err = cli("submit", "Nobody is synthesizing.", "--wait", "--timeout", "2")
    assert code == 1 and len(out.split()) == 1
    assert "1 of 1 jobs did not complete within 2s" in one_line(err)


def test_watch_tails_completions_with_filters(cli, settings: Settings, topics: None) -> None:
    publish_completions(settings, [completion("job_ok", audio_url="http://api/a"),
                                   completion("job_bad", "failed", error_code="engine_error", error_message="boom")], junk=True)
    code, out, err = cli("watch", "--from-beginning", "-e")
    assert code == 0
    lines = sorted(out.splitlines(), key=lambda line: line.split()[1])
    assert [line.split()[1:3] for line in lines] == [["job_bad", "failed"], ["job_ok", "succeeded"]]
    assert lines[0].endswith("engine_error: boom") and lines[1].endswith("http://api/a")
    assert "skipped an undecodable record" in err
    code, out, _ = cli("watch", "--from-beginning", "-e", "--filter", "status=failed", "--json")
    assert code == 0 and [json.loads(line)["job_id"] for line in out.splitlines()] == ["job_bad"]
    code, out, _ = cli("watch", "--from-beginning", "--count", "1")
    assert code == 0 and len(out.splitlines()) == 1


def test_watch_since_shows_nothing_older(cli, settings: Settings, topics: None) -> None:
    # Regression: `watch --since` printed completions older than --since (the start offset is found by
    # record time, which the broker answers loosely; a completion's own time is what the line shows).
    now = int(time.time() * 1000)
    publish_completions(settings, [completion("job_old", completed_at=now - 3_600_000), completion("job_new", completed_at=now)])
    since = datetime.fromtimestamp((now - 60_000) / 1000, tz=UTC).isoformat()
    code, out, err = cli("watch", "--since", since, "-e")
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines()] == ["job_new"]


def test_watch_into_a_closed_pipe_ends_quietly(settings: Settings, topics: None) -> None:
    # Regression: `voicenote watch | head -1` ended with a BrokenPipeError traceback.
    publish_completions(settings, [completion("job_p1")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
    env["PYTHONPATH"] = CHECKOUT_PATH
    watch = subprocess.Popen([sys.executable, "-m", "ops.cli", "--bootstrap-server", settings.kafka.bootstrap_servers,
                              "--topic-prefix", settings.kafka.topic_prefix, "watch", "--from-beginning"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert watch.stdout is not None and watch.stderr is not None
        assert "job_p1" in watch.stdout.readline().decode()
        watch.stdout.close()  # as `head -1` exits
        publish_completions(settings, [completion("job_p2")])  # the next line has nowhere to go
        assert watch.wait(30) == 0
        err = watch.stderr.read().decode()
        assert "Traceback" not in err and "BrokenPipe" not in err, err
    finally:
        watch.kill()


def test_projection_rebuild_without_redis_is_one_line(cli, settings: Settings, topics: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    codecs = Codecs()
    produce(settings, settings.kafka.catalog().requests.name, [(b"job_p2", codecs.request.encode(api_request("job_p2", "alloy")))])
    monkeypatch.setenv("VOICENOTE_REDIS__URL", "redis://127.0.0.1:1/0")
    code, out, err = cli("projection", "rebuild")
    assert code == 1 and out == ""
    assert "VOICENOTE_REDIS__URL" in one_line(err)


def test_global_flags_work_after_the_command_too(cli) -> None:
    code, out, err = cli("lag", "--bootstrap-server", "127.0.0.1:1", "--connect-timeout", "1")
    assert code == 1 and "127.0.0.1:1" in one_line(err)  # after the command, it overrides the one before
