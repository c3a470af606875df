"""S3 audio storage through aiobotocore (AWS S3, MinIO, moto)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from voicenote.errors import AudioNotFound, StorageError
from voicenote.settings import StorageSettings
from voicenote.storage.base import Put, StoredObject


class S3AudioStore:
    def __init__(self, settings: StorageSettings) -> None:
        assert settings.s3_bucket
        self.bucket = settings.s3_bucket
        self._settings = settings
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._presigner: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            self._client = await self._new_client(self._settings.s3_endpoint_url)
        return self._client

    async def _presign_client(self) -> Any:
        """The client that signs download URLs: one for the public endpoint where that differs.

        A presigned URL's signature covers its host, so a URL for the internal name cannot be rewritten
        afterwards; it is signed for the public endpoint from the start (no request is sent to sign).
        """
        public = self._settings.s3_public_endpoint_url
        if not public or public == self._settings.s3_endpoint_url:
            return await self._s3()
        if self._presigner is None:
            self._presigner = await self._new_client(public)
        return self._presigner

    async def _new_client(self, endpoint_url: str | None) -> Any:
        s = self._settings
        session = get_session()
        return await self._stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=s.s3_region,
                endpoint_url=endpoint_url,
                aws_access_key_id=s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else None,
                aws_secret_access_key=s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None,
                config=AioConfig(
                    signature_version="s3v4",
                    retries={"total_max_attempts": s.s3_max_attempts, "mode": "adaptive"},  # backoff on throttling and 5xx
                    s3={"addressing_style": "path"},
                ),
            )
        )

    async def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> StoredObject:
        s3 = await self._s3()
        try:
            if len(data) > self._settings.multipart_threshold_bytes:
                await self._put_multipart(s3, key, data, content_type, metadata or {})
            else:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {})
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot upload s3://{self.bucket}/{key}: {exc}") from exc
        return StoredObject(key=key, uri=f"s3://{self.bucket}/{key}", size=len(data), content_type=content_type)

    async def put_many(self, puts: Sequence[Put]) -> list[StoredObject]:
        # Concurrent PUTs over the client's connection pool.
        return list(await asyncio.gather(*(self.put(p.key, p.data, p.content_type, p.metadata) for p in puts)))

    async def _put_multipart(self, s3: Any, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        upload = await s3.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type, Metadata=metadata)
        upload_id = upload["UploadId"]
        size = self._settings.multipart_part_bytes
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), size), start=1):
                part = await s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                            Body=data[start:start + size])
                parts.append({"PartNumber": number, "ETag": part["ETag"]})
            await s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            # An abandoned upload keeps its parts (and their cost) until aborted.
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def head(self, key: str) -> dict[str, Any]:
        """Content type, length, ETag and metadata of ``key``; raises AudioNotFound."""
        s3 = await self._s3()
        try:
            return dict(await s3.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise AudioNotFound(key) from None
            raise StorageError(f"cannot head s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot head s3://{self.bucket}/{key}: {exc}") from exc

    async def exists(self, key: str) -> bool:
        try:
            await self.head(key)
            return True
        except AudioNotFound:
            return False

    async def get(self, key: str) -> bytes:
        s3 = await self._s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as body:
                return bytes(await body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise AudioNotFound(key) from None
            raise StorageError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    async def list_keys(self, prefix: str) -> list[str]:
        s3 = await self._s3()
        keys: list[str] = []
        try:
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from exc
        return sorted(keys)

    async def delete_many(self, keys: Sequence[str]) -> None:
        s3 = await self._s3()
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start:start + _DELETE_BATCH]
            try:
                resp = await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"cannot delete from s3://{self.bucket}: {exc}") from exc
            if errors := resp.get("Errors"):
                raise StorageError(f"cannot delete s3://{self.bucket}/{errors[0].get('Key')}: {errors[0].get('Message')}")

    async def url_for(self, key: str, expires_in: int) -> str | None:
        s3 = await self._presign_client()
        try:
            return str(
                await s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in)
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot presign s3://{self.bucket}/{key}: {exc}") from exc

    async def ensure_bucket(self) -> None:
        s3 = await self._s3()
        try:
            await s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                await s3.create_bucket(Bucket=self.bucket, **create_bucket_location(self._settings.s3_region))
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"cannot create bucket {self.bucket}: {exc}") from exc

    async def provision(self) -> None:
        """Create the bucket if missing and apply the lifecycle rule (TTL) to the audio prefix.

        The bucket may be shared: rules other than ours are kept, ours is replaced by its current form.
        """
        await self.ensure_bucket()
        s3 = await self._s3()
        try:
            existing = (await s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)).get("Rules", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise StorageError(f"cannot read the lifecycle of bucket {self.bucket}: {exc}") from exc
            existing = []
        except BotoCoreError as exc:
            raise StorageError(f"cannot read the lifecycle of bucket {self.bucket}: {exc}") from exc
        rules = merge_lifecycle_rules(existing, audio_lifecycle_rule(self._settings.key_prefix, self._settings.lifecycle_days))
        try:
            await s3.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot set the lifecycle of bucket {self.bucket}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            s3 = await self._s3()
            await s3.head_bucket(Bucket=self.bucket)
            return True
        except (ClientError, BotoCoreError, OSError):
            return False

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._presigner = None


LIFECYCLE_RULE_ID = "voicenote-audio-ttl"
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


def create_bucket_location(region: str) -> dict[str, Any]:
    """``create_bucket`` arguments for ``region``: S3 refuses a LocationConstraint of us-east-1 and needs one elsewhere."""
    if not region or region == "us-east-1":
        return {}
    return {"CreateBucketConfiguration": {"LocationConstraint": region}}


def audio_lifecycle_rule(key_prefix: str, days: int) -> dict[str, Any]:
    return {
        "ID": LIFECYCLE_RULE_ID,
        "Filter": {"Prefix": key_prefix},
        "Status": "Enabled",
        "Expiration": {"Days": days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }


def merge_lifecycle_rules(existing: list[dict[str, Any]], ours: dict[str, Any]) -> list[dict[str, Any]]:
    """The bucket's rules with ours added or replaced by ID; everyone else's rules stay as they were.

    PutBucketLifecycleConfiguration replaces the whole configuration, so a plain put would delete the
    rules other teams keep on a shared bucket.
    """
    return [*(rule for rule in existing if rule.get("ID") != ours["ID"]), ours]
