"""The emulator's answer for every refused request: a status and a ``TwilioError`` JSON body."""

from __future__ import annotations

from typing import Any

# Twilio error codes the Memory API's description names for each status.
CODES = {
    400: 400,
    401: 20003,
    403: 403,
    404: 20404,
    409: 20409,
    412: 20412,
    429: 20429,
    500: 20500,
    503: 20503,
}


class ApiError(Exception):
    """Raised anywhere in the emulator's request handling; the app turns it into a response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else CODES.get(status, status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/api/errors/{self.code}",
            "status": self.status,
        }


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str = "Not Found") -> ApiError:
    return ApiError(404, message)
