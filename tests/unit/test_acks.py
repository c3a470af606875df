from stream_workers.runtime.acks import InOrderAcks


def test_acks_are_released_in_order_per_partition() -> None:
    acks: InOrderAcks[tuple[str, int]] = InOrderAcks(lambda h: h[0])
    events = [("p0", 0), ("p0", 1), ("p1", 0), ("p0", 2)]
    for e in events:
        acks.register(e)
    assert acks.done(("p0", 2)) == []  # 0 and 1 still in flight: committing 3 would lose them
    assert acks.done(("p1", 0)) == [("p1", 0)]
    assert acks.done(("p0", 0)) == [("p0", 0)]
    assert acks.done(("p0", 1)) == [("p0", 1), ("p0", 2)]
