"""The one exception of the image builder."""


class ImageError(Exception):
    """The guest image cannot be built (a missing tool or input, a failed step); the message says why."""
