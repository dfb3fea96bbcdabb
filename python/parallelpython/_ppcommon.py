"""What ppft programs import from `ppft.common`."""


def b_(string):
    """Text as bytes (latin-1, as Parallel Python's helper does); bytes unchanged."""
    return string.encode("latin-1") if isinstance(string, str) else string
