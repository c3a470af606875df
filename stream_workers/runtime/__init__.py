"""The Faust app plumbing every worker role stands on: the driver, acks, probes, Kafka security, the
worker context, metrics, progress readiness, dead letters and the result cache. Imports no role."""
