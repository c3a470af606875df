"""The pure parts of webhooks: the signature, the address policy, the retry schedule."""

from __future__ import annotations

import base64
import random
import time

import pytest
from standardwebhooks import Webhook

from schemas.events import JobCompletion
from stream_workers.webhooks.dispatcher import message_id, webhook_payload
from stream_workers.webhooks.policy import AddressPolicy, WebhookRefused
from stream_workers.webhooks.schedule import retry_delay, retry_tier
from stream_workers.webhooks.signing import decode_secret, signed_headers
from voicenote.errors import ConfigError

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    completion = JobCompletion(job_id="job_sig1", status="succeeded", created_at=1_699_999_999_000,
                               completed_at=1_700_000_000_000, error_message="naïve ☃")
    body = webhook_payload(completion)
    headers = signed_headers(decode_secret(SECRET), message_id("job_sig1"), int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["data"] == completion.to_record()
    tampered = body.replace(b"succeeded", b"failed000")
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(tampered, headers)


def test_secret_must_be_base64_of_enough_bytes() -> None:
    with pytest.raises(ConfigError, match="whsec_"):
        decode_secret("whsec_not base64!")
    with pytest.raises(ConfigError, match="16 bytes"):
        decode_secret("whsec_" + base64.b64encode(b"short").decode())


class RecordingResolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers[host]


@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.0.0.1/hook", "private"),
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://169.254.10.1/hook", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fd12:3456::1]/hook", "unique-local"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://192.168.1.20/hook", "private"),
    ("http://0.0.0.0/hook", "reserved"),
])
def test_private_and_metadata_addresses_are_refused(url: str, reason: str) -> None:
    resolver = RecordingResolver({})
    with pytest.raises(WebhookRefused, match=reason) as info:
        AddressPolicy(resolver=resolver).check(url)
    assert "allow-lists" in str(info.value)
    assert resolver.asked == []  # an IP literal is judged without any lookup, let alone a connection


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = RecordingResolver({"metadata.internal": ["169.254.169.254"], "mixed.example": ["93.184.215.14", "10.1.2.3"]})
    policy = AddressPolicy(resolver=resolver)
    with pytest.raises(WebhookRefused, match=r"metadata.internal \(resolves to 169.254.169.254\) is a cloud metadata"):
        policy.check("https://metadata.internal/x")
    with pytest.raises(WebhookRefused, match="10.1.2.3"):
        policy.check("https://mixed.example/x")


def test_public_addresses_pass_and_allow_list_opens_private_ones() -> None:
    resolver = RecordingResolver({"hooks.example": ["93.184.215.14"], "receiver.local": ["10.9.8.7"]})
    target = AddressPolicy(resolver=resolver).check("https://hooks.example/in?x=1")
    assert (target.scheme, target.host, target.port, target.addresses) == ("https", "hooks.example", 443, ("93.184.215.14",))
    allowed = AddressPolicy(["127.0.0.1", "10.0.0.0/8"], resolver=resolver)
    assert allowed.check("http://127.0.0.1:8080/h").addresses == ("127.0.0.1",)
    assert allowed.check("http://receiver.local/h").addresses == ("10.9.8.7",)
    with pytest.raises(WebhookRefused):
        allowed.check("http://169.254.169.254/")  # not in the allow-list
    by_name = AddressPolicy(["receiver.local"], resolver=resolver)
    assert by_name.check("http://receiver.local/h").port == 80


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "file:///etc/passwd", "http:///nohost", "https://u:p@hooks.example/"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        AddressPolicy(resolver=RecordingResolver({"hooks.example": ["93.184.215.14"]})).check(url)


def test_retry_delay_doubles_is_capped_and_jittered_downwards() -> None:
    rng = random.Random(7)
    plain = [retry_delay(n, base=5, cap=60, jitter=0) for n in range(1, 7)]
    assert plain == [5, 10, 20, 40, 60, 60]
    for n, upper in enumerate(plain, start=1):
        drawn = [retry_delay(n, base=5, cap=60, jitter=0.2, rng=rng) for _ in range(200)]
        assert all(0.8 * upper <= d <= upper for d in drawn)
        assert len(set(drawn)) > 100  # actually spread, not a constant
    with pytest.raises(ValueError):
        retry_delay(0, base=5, cap=60, jitter=0)


def test_retry_tiers_one_per_retry_then_the_last_shared() -> None:
    assert [retry_tier(n, 5) for n in range(1, 9)] == [0, 1, 2, 3, 4, 4, 4, 4]
    assert retry_tier(3, 1) == 0



def test_default_schedule_retries_for_about_a_day_and_counts_its_attempts() -> None:
    from stream_workers.webhooks.schedule import scheduled_delay
    from voicenote.settings import WebhookSettings

    hooks = WebhookSettings()
    delays = [scheduled_delay(n, schedule=hooks.retry_schedule_seconds, base=1, cap=1, jitter=0) for n in range(1, hooks.attempts)]
    assert hooks.attempts == 8
    assert 24 * 3600 <= sum(delays) <= 30 * 3600
    assert delays == sorted(delays)
    # From the fifth retry on, records share the last retry topic: their delays must be equal there.
    assert len(set(delays[4:])) == 1


def test_schedule_is_configurable_and_empty_means_exponential() -> None:
    import random

    from stream_workers.webhooks.schedule import scheduled_delay
    from voicenote.settings import WebhookSettings

    custom = WebhookSettings(retry_schedule_seconds=[1, 2])
    assert custom.attempts == 3
    assert scheduled_delay(5, schedule=[1, 2], base=9, cap=9, jitter=0) == 2  # past the end: the last delay
    jittered = scheduled_delay(1, schedule=[10], base=9, cap=9, jitter=0.5, rng=random.Random(1))
    assert 5 <= jittered <= 10
    assert scheduled_delay(3, schedule=[], base=1, cap=100, jitter=0) == 4
    assert WebhookSettings(retry_schedule_seconds=[], max_attempts=3).attempts == 3
    with pytest.raises(ValueError):
        WebhookSettings(retry_schedule_seconds=[5, 0])
