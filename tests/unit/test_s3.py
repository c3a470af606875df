"""The pure parts of S3 provisioning: where a bucket is created, and how our lifecycle rule joins others."""

from __future__ import annotations

from voicenote.storage.s3 import LIFECYCLE_RULE_ID, audio_lifecycle_rule, create_bucket_location, merge_lifecycle_rules


def test_us_east_1_takes_no_location_constraint_and_other_regions_need_one() -> None:
    assert create_bucket_location("us-east-1") == {}
    assert create_bucket_location("eu-central-1") == {"CreateBucketConfiguration": {"LocationConstraint": "eu-central-1"}}


def test_our_rule_is_added_beside_others_and_replaces_its_older_self() -> None:
    theirs = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    old = audio_lifecycle_rule("audio/", 7)
    new = audio_lifecycle_rule("audio/", 2)
    merged = merge_lifecycle_rules([theirs, old], new)
    assert merged == [theirs, new]
    assert [r["ID"] for r in merge_lifecycle_rules([], new)] == [LIFECYCLE_RULE_ID]
