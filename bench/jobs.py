"""The bare-RQ job the worker benchmark compares against: it does nothing."""


def noop() -> None:
    """An empty job: what RQ itself costs per job."""
