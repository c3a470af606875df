"""One webhook attempt: POST the signed body to an approved address, following redirects only to
addresses the policy also approves, within one timeout for the whole attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from stream_workers.webhooks.policy import AddressPolicy, Target, WebhookRefused
from stream_workers.webhooks.signing import signed_headers

_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class AttemptOutcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False  # refused by the policy: no retry will help

    @property
    def summary(self) -> str:
        return "delivered" if self.ok else (self.error or f"HTTP {self.status_code}")


def pinned_url(url: str, target: Target) -> str:
    """``url`` with its host replaced by the approved address, so the connection goes where we checked."""
    parts = urlsplit(url)
    ip = ipaddress.ip_address(target.addresses[0])
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return urlunsplit(parts._replace(netloc=f"{host}:{target.port}"))


class WebhookSender:
    def __init__(self, policy: AddressPolicy, key: bytes, *, timeout: float, max_redirects: int,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._policy = policy
        self._key = key
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport,
                                         headers={"user-agent": "voicenote-webhooks/1"})

    async def attempt(self, url: str, msg_id: str, body: bytes) -> AttemptOutcome:
        """Deliver once; never raises for the receiver's or the network's failures."""
        try:
            return await asyncio.wait_for(self._attempt(url, msg_id, body), self._timeout)
        except WebhookRefused as exc:
            return AttemptOutcome(False, error=str(exc), permanent=True)
        except TimeoutError:
            return AttemptOutcome(False, error=f"timed out after {self._timeout:g}s")
        except (httpx.HTTPError, OSError) as exc:
            return AttemptOutcome(False, error=f"{type(exc).__name__}: {exc}"[:500])

    async def _attempt(self, url: str, msg_id: str, body: bytes) -> AttemptOutcome:
        headers = signed_headers(self._key, msg_id, int(time.time()), body)
        for _ in range(self._max_redirects + 1):
            target = await asyncio.to_thread(self._policy.check, url)
            default_port = 443 if target.scheme == "https" else 80
            host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
            request = self._client.build_request(
                "POST", pinned_url(url, target), content=body, headers={**headers, "host": host_header},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
            )
            response = await self._client.send(request)
            await response.aclose()
            if response.status_code in _REDIRECTS and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                continue
            if 200 <= response.status_code < 300:
                return AttemptOutcome(True, response.status_code)
            return AttemptOutcome(False, response.status_code, f"HTTP {response.status_code}")
        return AttemptOutcome(False, error=f"more than {self._max_redirects} redirects")

    async def close(self) -> None:
        await self._client.aclose()
