"""The HTTP producer: validates requests, publishes them to Kafka, reports job status."""
