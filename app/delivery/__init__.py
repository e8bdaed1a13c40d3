"""The delivery path: from the store's feed to every open stream of this worker.

``tailer`` follows the store into the in-memory ``window``; the ``hub`` fans
each new entry out to the subscriptions of its room; ``streaming`` is one
client's generator (backlog from the window, then live events, heartbeats),
and ``ending`` says every way it ends; ``reading`` decides whether a read is
answered from the window or the store; ``events`` and ``sse`` encode what
goes on the wire; ``admission`` caps the streams a worker holds.
"""
