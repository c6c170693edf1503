"""Request limits at the HTTP edge."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class ApiBodyLimit:
    """Refuse API request bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with a JSON 413.

    Django would raise RequestDataTooBig on the first read of the body, which reaches an
    API client as an HTML 400. Checked on the declared length, before anything reads it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"detail": "invalid Content-Length header"}, status=400)
            if length > limit:
                return JsonResponse(
                    {"detail": f"request body is {length} bytes; the limit is {limit} bytes"},
                    status=413,
                )
        return self.get_response(request)


class ApiNulRefusal:
    """A NUL character in an API path is a JSON 404: no stored id or name can hold one (every
    edge validates them), and PostgreSQL refuses one in any text parameter, so the lookup
    would otherwise end in a 500. Query filters treat a NUL as matching nothing (dags.api).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/") and "\x00" in request.path:
            return JsonResponse({"detail": "no API resource has a NUL in its path"}, status=404)
        return self.get_response(request)
