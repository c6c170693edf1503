"""JSON for the responses under /api/ that no DRF view produces: unmatched paths and 500s.

An API client reads every answer as JSON; Django's own 404 and 500 pages are HTML.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """The last route under /api/v2/: whatever no other route matched.

    CSRF-exempt as every API view is (DRF's): it changes nothing, and otherwise a POST here
    got Django's HTML 403 page instead of this JSON 404."""
    return JsonResponse({"detail": f"no API endpoint at {request.path[:200]}"}, status=404)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler: JSON under /api/ (a path no route pattern matches, such as one
    with a newline the catch-all route cannot see), the HTML page elsewhere."""
    if request.path.startswith("/api/"):
        return not_found(request)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "internal server error"}, status=500)
    return defaults.server_error(request)
