"""The contract: Avro schemas of every event, the wire codec, and the topic catalog."""
