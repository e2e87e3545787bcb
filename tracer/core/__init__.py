"""The pure core: socket table, TIME_WAIT model and aggregates.

Nothing here imports bcc, flask or prometheus_client (tests/unit/test_purity.py
checks it): events come from a source, time from an injected clock.
"""
