"""Running the server: Prometheus metrics, and the worker life-cycle hooks gunicorn calls."""
