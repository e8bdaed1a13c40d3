"""The HTTP edge: blueprints, validation, errors, and what guards the door.

Blueprints (``messages``, ``pages``, ``ops``) are thin: they validate with the
``schemas``, answer every error in one shape (``errors``), and hand plain
values to the delivery path. ``security``, ``access`` and ``ratelimit`` wrap
every request; ``request_log`` logs it; ``openapi`` describes it.
"""
