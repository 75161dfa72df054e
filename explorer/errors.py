"""One exception type for everything a visitor can get wrong; the app shows its message verbatim."""


class ExplorerError(ValueError):
    """A user-facing problem (empty query, bad upload, budget out of range, model/gallery mismatch)."""
