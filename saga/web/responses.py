"""Pages and refusals, rendered the same way everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

if TYPE_CHECKING:
    from saga.web.auth import SignedIn
    from saga.web.console import Console


def render(
    request: Request,
    console: Console,
    template: str,
    *,
    status: int = 200,
    user: SignedIn | None = None,
    **context: Any,
) -> HTMLResponse:
    user = user or getattr(request.state, "user", None)
    html = console.templates.get_template(template).render(
        user=user,
        csrf=None if user is None else user.csrf,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def refuse(
    request: Request,
    console: Console,
    status: int,
    message: str,
    *,
    user: SignedIn | None = None,
) -> HTMLResponse:
    """A 4xx (or 503) page saying what was wrong, never a stack trace."""
    return render(request, console, "error.html", status=status, user=user, message=message)
