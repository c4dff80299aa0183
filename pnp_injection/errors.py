"""The one exception type the pack raises for bad input: its message always names the fix."""


class PnPError(ValueError):
    """Raised before any heavy work when a graph cannot do what it asks."""
