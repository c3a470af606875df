"""Webhooks: completion events delivered to per-request URLs, signed per Standard Webhooks.

``signing`` (the signature), ``policy`` (which addresses may be called), ``schedule`` (when to retry),
``delivery`` (one HTTP attempt), ``dispatcher`` (the consumer that ties them to the topics).
"""
