"""User-facing errors.

Every error a user can cause (bad params, bad paths, unreadable data) is raised as a
:class:`FacetransferError` with a one-line message; the CLI prints it as
``facetransfer: error: <message>`` and exits with status 2, without a traceback.
"""


class FacetransferError(Exception):
    """An error the user can fix; its message is one line and names what to fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ParamError(FacetransferError):
    """A params value is missing, of the wrong type, or not among the allowed values."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: {key}: {message}")


class DataError(FacetransferError):
    """A dataset cannot be read as a whole (layout not recognised, nothing usable...)."""


class StudyBusyError(FacetransferError):
    """Another live process holds the study lock."""
