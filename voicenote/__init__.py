"""Voicenote's shared runtime: settings, errors, Kafka clients, job store, audio storage."""
