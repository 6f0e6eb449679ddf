"""The one root of corral's typed failures.

::

    CorralError(code, message)   any refusal or failure a client may be shown
     +-- ApiError                (status, message): a refusal of what a client sent, raised
                                 by the API and by the layers below it that check a
                                 request's parts (join tokens, addresses, listen config)
     +-- CodedError              message first, the class's code unless told
          +-- StateError         cluster.state.errors
          +-- DriverError        node_agent.drivers.base
          +-- StorageError       node_agent.storage.errors
          +-- NetworkError       node_agent.network.errors
          +-- ImageError         node_agent.images.errors

``code`` is the HTTP status, which is also LXD's ``error_code``. The API's error
middleware maps the root once, so a package's new error needs no handler of its own.
The package trees keep their names and codes; ``CodedError`` keeps the signature they
had before (``Error("message")`` or ``Error("message", code=409)``).
"""

from __future__ import annotations


class CorralError(Exception):
    """A failure with the HTTP status (LXD's ``error_code``) to answer it with."""

    code: int = 500

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class CodedError(CorralError):
    """A ``CorralError`` raised message first; ``code`` defaults to the class's own."""

    def __init__(self, message: str = "", code: int | None = None) -> None:
        super().__init__(code, message)


class ApiError(CorralError):
    """A refusal to show the client: ``status`` is the HTTP status and LXD's error_code.

    It lives here, not in the API, because membership and transport check parts of a
    request too (a join token, a member address) and must not import the API for that.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)

    @property
    def status(self) -> int:
        return self.code


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str = "Not Found") -> ApiError:
    return ApiError(404, message)
