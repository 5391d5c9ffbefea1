"""OutboundFlow: bytes written while the kernel takes no more are counted,
and past the limit the reader is a slow consumer."""

from chloed.transports._flow import OutboundFlow


def test_counts_only_while_paused():
    flow = OutboundFlow(100)
    assert flow.admit(1000)
    flow.pauseProducing()
    assert flow.admit(60) and flow.admit(40)
    assert not flow.admit(1)


def test_repeated_pause_does_not_reset_the_count():
    """The transport calls pauseProducing on every write while its buffer is
    full; the backlog must keep growing through those calls."""
    flow = OutboundFlow(100)
    flow.pauseProducing()
    for _ in range(10):
        flow.pauseProducing()
        admitted = flow.admit(30)
    assert not admitted


def test_resume_starts_over():
    flow = OutboundFlow(100)
    flow.pauseProducing()
    flow.admit(90)
    flow.resumeProducing()
    assert flow.admit(1000)
    flow.pauseProducing()
    assert flow.admit(90)
