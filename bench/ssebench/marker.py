"""The payload the publisher puts inside each message, and how receivers find it.

Every system wraps our text differently (our JSON, Flask-SSE's JSON, Nchan's
raw body, Pushpin's hand-made event), so receivers never parse the envelope:
they scan the raw stream bytes for this marker. It holds only characters that
JSON leaves unescaped and that no SSE field separator contains, so it reads the
same in every envelope.
"""

import re
import time

# SSEB:<scenario tag>:<sequence number>:<send time, CLOCK_MONOTONIC ns>;
# CLOCK_MONOTONIC is one clock for every process on the machine, so the
# receiver's clock and the publisher's can be subtracted.
MARKER_PATTERN = re.compile(rb"SSEB:(\d+):(\d+):(\d+);")


def make_marker(tag: int, sequence: int) -> tuple[str, int]:
    """Return the marker for message `sequence` of scenario `tag` and its send time."""
    sent_ns = time.monotonic_ns()
    return f"SSEB:{tag}:{sequence}:{sent_ns};", sent_ns
