"""GET /: the timeline page (socket lifelines, a table of the same sockets, a ladder view).

The page is static HTML, CSS and plain JavaScript modules that ship in the package
(tracer/web/static, tracer/web/templates): no CDN, no build step, it works offline.
It reads /api/v1/sockets and /api/v1/stream from the browser; this blueprint serves
only the page, its assets and the state colours. The colours are defined here, once,
keyed by TcpState, and reach the page both as CSS (/assets/states.css) and as JSON.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from flask import Blueprint, Response, abort, render_template, send_from_directory

from tracer.core.states import TcpState

bp = Blueprint("timeline", __name__, template_folder="templates")

ASSETS = Path(__file__).parent / "static"

# Explicit, because mimetypes reads the host's /etc/mime.types, and module scripts
# are refused by browsers unless served with a JavaScript type.
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

# Mid-tone colours that read on a light and a dark background. Hue families follow
# the life of a connection: blues open it, green carries data, oranges close it
# actively, reds close it passively (CLOSE_WAIT is where leaks sit), greys wait.
STATE_COLOURS: dict[TcpState, str] = {
    TcpState.LISTEN: "#4c78a8",
    TcpState.SYN_SENT: "#72b7e8",
    TcpState.SYN_RECV: "#9d8fd6",
    TcpState.NEW_SYN_RECV: "#c3b9ee",
    TcpState.ESTABLISHED: "#3a9d5d",
    TcpState.FIN_WAIT1: "#f58518",
    TcpState.FIN_WAIT2: "#f8b26a",
    TcpState.CLOSING: "#c9651b",
    TcpState.TIME_WAIT: "#9c9c9c",
    TcpState.CLOSE_WAIT: "#d6404b",
    TcpState.LAST_ACK: "#f08a8f",
    TcpState.CLOSE: "#5b5b5b",
}

# The browser itself refuses anything but this origin: the page cannot reach a CDN even
# by mistake. No inline script or style either (colours come from /assets/states.css).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")


def state_palette() -> list[dict[str, str | int]]:
    """The twelve kernel states in the kernel's order, each with its colour."""
    return [{"name": s.name, "value": s.value, "colour": STATE_COLOURS[s]} for s in TcpState]


@bp.get("/")
def page() -> Response:
    html = render_template("timeline.html", states=state_palette())
    return Response(html, mimetype="text/html",
                    headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


@bp.get("/assets/states.css")
def states_css() -> Response:
    rules = [f'.st[data-state="{s.name}"] {{ --state: {STATE_COLOURS[s]}; }}' for s in TcpState]
    return Response("\n".join(rules) + "\n", mimetype="text/css")


@bp.get("/assets/<path:name>")
def asset(name: str) -> Response:
    mimetype = CONTENT_TYPES.get(PurePosixPath(name).suffix)
    if mimetype is None:
        abort(404)
    return send_from_directory(ASSETS, name, mimetype=mimetype)
