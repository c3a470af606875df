"""The job-status projection in Redis: one hash per job, forward-only, rebuildable from the topics.

Transitions are applied by a Lua script so that concurrent writers (the API's initial ``queued``, the
completion role's terminal state) cannot move a job backwards. Terminal transitions are also published on a
per-job channel so a waiting HTTP request learns of them at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.status import JobStatus
from voicenote.errors import JobStoreError
from voicenote.idempotency import KeptAnswer, done_value, record_key
from voicenote.settings import RedisSettings

# KEYS[1]: job hash; KEYS[2]: done channel.
# ARGV[1]: new rank; ARGV[2]: ttl seconds; ARGV[3]: 1 if terminal; ARGV[4..]: field, value pairs.
# The rule: a job moves only to a strictly higher JobStatus.rank (terminal states share one rank). Fields of a transition that does
# not advance still fill gaps (HSETNX) so an out-of-order write loses no information.
_TRANSITION = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
local new = tonumber(ARGV[1])
if new > cur then
  redis.call('HSET', KEYS[1], 'rank', ARGV[1], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  if ARGV[3] == '1' then redis.call('PUBLISH', KEYS[2], ARGV[1]) end
  return 1
end
for i = 4, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 0
"""

# Webhook delivery state, kept in the job hash. KEYS[1]: job hash. ARGV: status, attempts, last error, ttl, and
# '1' to write only onto a record that exists (the rebuild: a job past its TTL does not come back as a bare state).
# 'delivered' is final and the attempt count never goes down, so a redelivered old attempt changes nothing.
_WEBHOOK = """
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'webhook_status')
if cur == 'delivered' then return 0 end
if tonumber(ARGV[2]) < tonumber(redis.call('HGET', KEYS[1], 'webhook_attempts') or '0') then return 0 end
redis.call('HSET', KEYS[1], 'webhook_status', ARGV[1], 'webhook_attempts', ARGV[2], 'webhook_last_error', ARGV[3])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""


@dataclass(frozen=True)
class Transition:
    """One forward-only status change: see :meth:`JobStore.transition`."""

    job_id: str
    status: JobStatus
    fields: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class BatchRecord:
    """A batch as the API recorded it: who sent it, when, and its jobs in submission order."""

    batch_id: str
    owner: str
    created_at: int
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class WebhookState:
    """One webhook delivery state: see :meth:`JobStore.record_webhook`."""

    job_id: str
    status: str
    attempts: int
    last_error: str = ""


def _batch_fields(batch: BatchRecord) -> dict[Any, Any]:  # Any: what redis-py's hset mapping takes
    return {"owner": batch.owner, "created_at": batch.created_at, "job_ids": json.dumps(list(batch.job_ids))}


def _field_args(fields: Mapping[str, Any] | None) -> list[Any]:
    args: list[Any] = []
    for name, value in (fields or {}).items():
        if value is not None:
            args += [name, value if isinstance(value, (str, int, float)) else json.dumps(value)]
    return args


def redis_client(settings: RedisSettings, **connection: Any) -> aioredis.Redis:
    """A client whose pool waits for a free connection (up to ``settings.pool_timeout_seconds``) when all
    ``settings.max_connections`` are busy, instead of failing at once. Every job-store, result-cache and
    API client is built here. ``connection``: more connection options (timeouts)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url, max_connections=settings.max_connections, timeout=settings.pool_timeout_seconds,
        decode_responses=True, **connection)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


class JobStore:
    def __init__(self, client: aioredis.Redis, settings: RedisSettings) -> None:
        self._redis = client
        self._prefix = settings.key_prefix
        self._ttl = settings.job_ttl_seconds
        self._transition = client.register_script(_TRANSITION)
        self._webhook = client.register_script(_WEBHOOK)

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> JobStore:
        return cls(redis_client(settings), settings)

    def job_key(self, job_id: str) -> str:
        return f"{self._prefix}job:{{{job_id}}}"

    def done_channel(self, job_id: str) -> str:
        return f"{self._prefix}done:{job_id}"

    async def transition(self, job_id: str, status: JobStatus, fields: Mapping[str, Any] | None = None) -> bool:
        """Move ``job_id`` to ``status`` with ``fields``; False if that would not move it forward."""
        try:
            result = await self._transition(keys=self._transition_keys(job_id), args=self._transition_args(status, fields))
        except RedisError as exc:
            raise JobStoreError(f"cannot record {status.value} for job {job_id}: {exc}") from exc
        return bool(result)

    async def record_webhook(self, job_id: str, status: str, attempts: int, last_error: str = "") -> bool:
        """Record the webhook delivery state of ``job_id`` (pending, retrying, delivered, failed, refused)."""
        try:
            state = WebhookState(job_id, status, attempts, last_error)
            result = await self._webhook(keys=[self.job_key(job_id)], args=self._webhook_args(state))
        except RedisError as exc:
            raise JobStoreError(f"cannot record webhook state of job {job_id}: {exc}") from exc
        return bool(result)

    async def apply(self, transitions: Sequence[Transition], webhooks: Sequence[WebhookState] = ()) -> list[bool]:
        """Many transitions, then many webhook states, in one pipelined round trip (the projection's
        agents apply what one fetch brought this way). Returns, per transition, whether it moved the job."""
        if not transitions and not webhooks:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for t in transitions:
                    await self._transition(keys=self._transition_keys(t.job_id), args=self._transition_args(t.status, t.fields),
                                           client=pipe)
                for w in webhooks:
                    await self._webhook(keys=[self.job_key(w.job_id)], args=self._webhook_args(w), client=pipe)
                results = await pipe.execute()
        except RedisError as exc:
            raise JobStoreError(f"cannot record {len(transitions)} transitions and {len(webhooks)} webhook states: {exc}") from exc
        return [bool(r) for r in results[: len(transitions)]]

    async def restore_webhooks(self, states: Sequence[WebhookState]) -> int:
        """Write back webhook states Redis lost (the projection rebuild, in one round trip), by the live rule
        (``delivered`` is final, the attempt count never goes down), so a state recorded since the loss is kept; and
        only onto a job record that exists: a job past its TTL does not come back as a bare webhook state. The
        number written."""
        if not states:
            return 0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for w in states:
                    await self._webhook(keys=[self.job_key(w.job_id)], args=self._webhook_args(w, existing_only=True), client=pipe)
                written = await pipe.execute()
        except RedisError as exc:
            raise JobStoreError(f"cannot restore {len(states)} webhook states: {exc}") from exc
        return sum(1 for ok in written if ok)

    def _webhook_args(self, w: WebhookState, *, existing_only: bool = False) -> list[Any]:
        return [w.status, w.attempts, w.last_error, self._ttl, "1" if existing_only else "0"]

    def _transition_keys(self, job_id: str) -> list[str]:
        return [self.job_key(job_id), self.done_channel(job_id)]

    def _transition_args(self, status: JobStatus, fields: Mapping[str, Any] | None) -> list[Any]:
        return [status.rank, self._ttl, "1" if status.terminal else "0", "status", status.value, *_field_args(fields)]

    async def get(self, job_id: str) -> dict[str, str] | None:
        try:
            record = await self._redis.hgetall(self.job_key(job_id))
        except RedisError as exc:
            raise JobStoreError(f"cannot read job {job_id}: {exc}") from exc
        return dict(cast("dict[str, str]", record)) if record else None  # a decode_responses client: str, not bytes

    async def get_fields_many(self, job_ids: Sequence[str], fields: Sequence[str]) -> list[dict[str, str] | None]:
        """Only ``fields`` of each job's record (None where the job has no record), in one pipelined round trip."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.job_key(job_id), list(fields))
                rows = await pipe.execute()
        except RedisError as exc:
            raise JobStoreError(f"cannot read {len(job_ids)} jobs: {exc}") from exc
        return [{f: v for f, v in zip(fields, row, strict=True) if v is not None} or None for row in rows]

    async def transition_many(self, job_ids: list[str] | tuple[str, ...], status: JobStatus, fields: Mapping[str, Any]) -> None:
        """:meth:`transition` for many jobs with the same fields, in one pipelined round trip."""
        await self.apply([Transition(job_id, status, fields) for job_id in job_ids])

    # -- the watchdog's index of jobs without a completion (stream_workers/completion/watchdog.py) ---------

    def pending_key(self) -> str:
        return f"{self._prefix}pending"

    async def track_pending(self, created: Sequence[tuple[str, int]]) -> None:
        """Index jobs (id, created_at ms) until their completion; a job already indexed keeps its time."""
        if not created:
            return
        try:
            await self._redis.zadd(self.pending_key(), {job_id: at for job_id, at in created}, nx=True)
        except RedisError as exc:
            raise JobStoreError(f"cannot index {len(created)} pending jobs: {exc}") from exc

    async def untrack_pending(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        try:
            await self._redis.zrem(self.pending_key(), *job_ids)
        except RedisError as exc:
            raise JobStoreError(f"cannot unindex {len(job_ids)} jobs: {exc}") from exc

    async def pending_before(self, before_ms: int, limit: int, start: int = 0) -> list[str]:
        """Indexed jobs created before ``before_ms``, oldest first (from the ``start``-th of them)."""
        try:
            found = await self._redis.zrangebyscore(self.pending_key(), "-inf", f"({before_ms}", start=start, num=limit)
            return [str(job_id) for job_id in found]
        except RedisError as exc:
            raise JobStoreError(f"cannot read the pending-job index: {exc}") from exc

    # -- broker data losses seen by the workers (stream_workers/runtime/progress.py, stream_workers/completion/watchdog.py) ---

    def losses_key(self) -> str:
        return f"{self._prefix}broker:data_lost"

    async def record_broker_data_loss(self, at_ms: int) -> None:
        """A worker saw the broker lose data at ``at_ms``; the completion worker ends the jobs that went with it."""
        try:
            await self._redis.zadd(self.losses_key(), {str(at_ms): at_ms})
        except RedisError as exc:
            raise JobStoreError(f"cannot record a broker data loss: {exc}") from exc

    async def broker_data_losses(self) -> list[int]:
        """The losses recorded and not yet handled (ms), oldest first."""
        try:
            return [int(m) for m in await self._redis.zrange(self.losses_key(), 0, -1) if isinstance(m, (str, bytes))]
        except RedisError as exc:
            raise JobStoreError(f"cannot read the broker data losses: {exc}") from exc

    async def forget_broker_data_losses(self, losses: Sequence[int]) -> None:
        if not losses:
            return
        try:
            await self._redis.zrem(self.losses_key(), *(str(at) for at in losses))
        except RedisError as exc:
            raise JobStoreError(f"cannot forget broker data losses: {exc}") from exc

    # -- batches (the API's record of which jobs one batch submission made) ---------------------

    def batch_key(self, batch_id: str) -> str:
        return f"{self._prefix}batch:{batch_id}"

    async def put_batch(self, batch: BatchRecord) -> None:
        """Record ``batch``; it expires with its jobs' records (``redis.job_ttl_seconds``)."""
        key = self.batch_key(batch.batch_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=_batch_fields(batch))
                pipe.expire(key, self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot record batch {batch.batch_id}: {exc}") from exc

    async def restore_batches(self, batches: Sequence[BatchRecord], now_ms: int) -> int:
        """Write back batch records Redis lost (the projection rebuild, in one round trip), each expiring when the
        API's would have (``created_at`` + ``redis.job_ttl_seconds``); one already past that is skipped. The number
        written."""
        live = [(batch, batch.created_at + self._ttl * 1000 - now_ms) for batch in batches]
        live = [(batch, ttl_ms) for batch, ttl_ms in live if ttl_ms > 0]
        if not live:
            return 0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for batch, ttl_ms in live:
                    pipe.hset(self.batch_key(batch.batch_id), mapping=_batch_fields(batch))
                    pipe.pexpire(self.batch_key(batch.batch_id), ttl_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot restore {len(live)} batch records: {exc}") from exc
        return len(live)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        try:
            record = await self._redis.hgetall(self.batch_key(batch_id))
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot read batch {batch_id}: {exc}") from exc
        if not record:
            return None
        return BatchRecord(batch_id=batch_id, owner=str(record["owner"]), created_at=int(record["created_at"]),
                           job_ids=tuple(json.loads(record["job_ids"])))

    async def delete_batch(self, batch_id: str) -> None:
        try:
            await self._redis.delete(self.batch_key(batch_id))
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot remove batch {batch_id}: {exc}") from exc

    # -- Idempotency-Key answers (the API writes them, producer_api/idempotency.py; the rebuild restores them) --

    def idempotency_key(self, owner: str, key_sha256: str) -> str:
        return record_key(self._prefix, owner, key_sha256)

    async def restore_answers(self, answers: Sequence[KeptAnswer], now_ms: int) -> int:
        """Write back ``done`` Idempotency-Key records Redis lost (the projection rebuild, in one round trip), each
        until it would have expired (one already past that is skipped). A key that holds a record already (a
        request made with it since) keeps it. The number written."""
        live = [answer for answer in answers if answer.expires_at > now_ms]
        if not live:
            return 0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for answer in live:
                    pipe.set(self.idempotency_key(answer.owner, answer.key_sha256), done_value(answer.fingerprint, answer.response),
                             nx=True, px=answer.expires_at - now_ms)
                written = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot restore {len(live)} Idempotency-Key answers: {exc}") from exc
        return sum(1 for ok in written if ok)

    # -- the projection's epoch (stream_workers/completion/projection.py) --------------------------------

    def epoch_key(self) -> str:
        return f"{self._prefix}projection:epoch"

    async def projection_epoch(self) -> str | None:
        """The epoch mark; None when Redis has lost the projection (or it was never built)."""
        try:
            value = await self._redis.get(self.epoch_key())
        except RedisError as exc:
            raise JobStoreError(f"cannot read the projection epoch: {exc}") from exc
        return str(value) if value is not None else None

    async def claim_projection_epoch(self, value: str, lease_seconds: int) -> bool:
        """Take the rebuild (True) unless someone holds it; the lease expires if the rebuilder dies."""
        try:
            return bool(await self._redis.set(self.epoch_key(), value, nx=True, ex=lease_seconds))
        except RedisError as exc:
            raise JobStoreError(f"cannot claim the projection epoch: {exc}") from exc

    async def set_projection_epoch(self, value: str) -> None:
        try:
            await self._redis.set(self.epoch_key(), value)
        except RedisError as exc:
            raise JobStoreError(f"cannot set the projection epoch: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
