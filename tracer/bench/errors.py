"""The bench's one error, shared by its parts: the CLI prints it as one line."""


class BenchError(RuntimeError):
    """Something stopped the bench (one line)."""
