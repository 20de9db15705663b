"""The one exception tree of fleetd, each class mapped once to a Connect code.

    FleetdError                 internal        500
     ├── InvalidArgument        invalid_argument 400
     ├── FailedPrecondition     failed_precondition 400
     ├── OutOfRange             out_of_range    400
     ├── Unauthenticated        unauthenticated 401
     ├── PermissionDenied       permission_denied 403
     ├── NotFound               not_found       404
     │    └── Unimplemented     unimplemented   404 (unknown RPC method)
     ├── AlreadyExists          already_exists  409
     ├── Aborted                aborted         409
     ├── PayloadTooLarge        resource_exhausted 413
     ├── ResourceExhausted      resource_exhausted 429
     ├── UnsupportedMediaType   invalid_argument 415
     └── Unavailable            unavailable     503

Services raise these; the HTTP layer (http/rpc.py) turns them into
``{"code": ..., "message": ...}`` responses. Nothing else maps errors.
"""

from __future__ import annotations


class FleetdError(Exception):
    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidArgument(FleetdError):
    code = "invalid_argument"
    http_status = 400


class FailedPrecondition(FleetdError):
    code = "failed_precondition"
    http_status = 400


class OutOfRange(FleetdError):
    code = "out_of_range"
    http_status = 400


class Unauthenticated(FleetdError):
    code = "unauthenticated"
    http_status = 401


class PermissionDenied(FleetdError):
    code = "permission_denied"
    http_status = 403


class NotFound(FleetdError):
    code = "not_found"
    http_status = 404


class Unimplemented(NotFound):
    # Connect answers an unknown procedure with HTTP 404.
    code = "unimplemented"
    http_status = 404


class AlreadyExists(FleetdError):
    code = "already_exists"
    http_status = 409


class Aborted(FleetdError):
    code = "aborted"
    http_status = 409


class PayloadTooLarge(FleetdError):
    code = "resource_exhausted"
    http_status = 413


class ResourceExhausted(FleetdError):
    code = "resource_exhausted"
    http_status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds, rounded up, when the caller may try again."""
        return {} if self.retry_after is None else {"Retry-After": str(max(1, int(self.retry_after + 0.999)))}


class UnsupportedMediaType(FleetdError):
    code = "invalid_argument"
    http_status = 415


class Unavailable(FleetdError):
    code = "unavailable"
    http_status = 503


__all__ = [
    "Aborted",
    "AlreadyExists",
    "FailedPrecondition",
    "FleetdError",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PayloadTooLarge",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnsupportedMediaType",
]
