"""Errors the client raises: one class per status code of the API, each
carrying the server's message."""

from __future__ import annotations


class InferqError(Exception):
    """An answer of the API other than success, or a job that did not
    succeed. ``status`` is the HTTP status (0 when no answer came),
    ``message`` the server's words."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, body: object = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.body = body


class BadRequest(InferqError):
    """400: the request does not fit the model."""


class Unauthorized(InferqError):
    """401: no API token, or a wrong one."""


class Forbidden(InferqError):
    """403: the token may not use this model, or the server may not read a batch source."""


class NotFound(InferqError):
    """404: no such model, job or batch."""


class Conflict(InferqError):
    """409: the job or batch is not in the state the call needs."""


class RequestTimeout(InferqError):
    """408: the request body stopped arriving."""


class TooLarge(InferqError):
    """413: the request is larger than the server takes."""


class Unprocessable(InferqError):
    """422: an idempotency key used before with a different request."""


class QueueFull(InferqError):
    """429: the model's queue is full; try again after ``retry_after``."""


class Unavailable(InferqError):
    """503 (or 504): the server or its queue cannot take the call now."""


class JobFailed(InferqError):
    """A job that ended failed, cancelled or expired; ``job`` is its record."""

    def __init__(self, job: dict):
        super().__init__(0, f"job {job.get('id')} {job.get('status')}: {job.get('error', '')}".rstrip(": "), body=job)
        self.job = job


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 408: RequestTimeout,
              409: Conflict, 413: TooLarge, 422: Unprocessable, 429: QueueFull, 503: Unavailable, 504: Unavailable}


def from_status(status: int, message: str, retry_after: float | None = None, body: object = None) -> InferqError:
    """The error of an HTTP answer."""
    return _BY_STATUS.get(status, InferqError)(status, message, retry_after, body)
