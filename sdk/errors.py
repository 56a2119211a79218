"""The one exception the SDK raises for a mistake the caller can fix.

``SdkError`` is a ``ValueError``: a wrong argument, an instance type the region does not offer, a cluster above
its cost cap, a launch AWS refused. Its message is ONE line saying what is wrong and how to fix it, so a
notebook shows it whole and a log keeps it on one line; it never holds a traceback's worth of detail.
"""

from __future__ import annotations


class SdkError(ValueError):
    """A one-line, actionable error: what is wrong, and how to fix it."""

    def __init__(self, message: str) -> None:
        # One line, always: a message assembled from AWS text could carry a newline.
        super().__init__(" ".join(message.split()))


class CapacityError(SdkError):
    """A launch AWS refused for capacity (or an instance quota) everywhere it tried: another region may have room."""
