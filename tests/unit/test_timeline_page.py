"""The timeline page as served: HTML, assets and their types, offline, accessible parts.

The app here is the timeline blueprint beside a tiny stand-in for the JSON API (canned
JSON on the contract's paths), as the daemon's app will hold the page beside the real
one. What the page does in a browser is tests/live/test_timeline_browser.py's part.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask, jsonify

from tracer.core.states import TcpState
from tracer.web import timeline

STATIC = Path(timeline.__file__).parent / "static"
TEMPLATES = Path(timeline.__file__).parent / "templates"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# XML namespace names are identifiers that nothing ever fetches.
NAMESPACES = {"http://www.w3.org/2000/svg"}
URL = re.compile(r"""https?://[^\s"'`<>)]+""")

SOCKET = {
    "id": 1, "netns": 4026531840, "family": "ipv4", "laddr": "127.0.0.1", "lport": 40000,
    "raddr": "127.0.0.1", "rport": 8080, "role": "active", "service_port": 8080, "pid": 3808,
    "comm": "curl", "open": True,
    "states": [{"state": "SYN_SENT", "since": 1767000000.0, "until": 1767000000.000321},
               {"state": "ESTABLISHED", "since": 1767000000.000321, "until": None}],
}


@pytest.fixture
def client():
    app = Flask(__name__)
    app.register_blueprint(timeline.bp)

    @app.get("/api/v1/sockets")
    def sockets():
        return jsonify(total=1, sockets=[SOCKET], next=None)

    @app.get("/api/v1/sockets/<int:sid>")
    def one(sid: int):
        return jsonify({**SOCKET, "peer": None})

    return app.test_client()


class Page(HTMLParser):
    """What the tests look at in the page: elements with their attributes, and text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.inline_scripts: list[dict[str, str | None]] = []
        self._open: list[str] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag == "script" and "src" not in a:
            self.inline_scripts.append(a)
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            tag = self._open[-1]
            self.text[tag] = self.text.get(tag, "") + data

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def page_of(client) -> tuple[str, Page]:
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    parsed = Page()
    parsed.feed(html)
    return html, parsed


def assets() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*") if p.is_file())


def test_page_is_html_and_forbids_other_origins(client) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.content_type == "text/html; charset=utf-8"
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy


@pytest.mark.parametrize("path", assets(), ids=lambda p: p.name)
def test_every_asset_is_served_with_its_type(client, path: Path) -> None:
    with client.get(f"/assets/{path.relative_to(STATIC).as_posix()}") as resp:
        assert resp.status_code == 200
        assert resp.mimetype == TYPES[path.suffix]
        assert resp.data == path.read_bytes()


def test_state_colours_are_served_as_css_for_every_state(client) -> None:
    resp = client.get("/assets/states.css")
    assert resp.status_code == 200 and resp.mimetype == "text/css"
    css = resp.get_data(as_text=True)
    for state in TcpState:
        assert re.search(rf'\.st\[data-state="{state.name}"\] {{ --state: #[0-9a-f]{{6}}; }}', css), state


@pytest.mark.parametrize("path", ["/assets/timeline.py", "/assets/../timeline.py", "/assets/nothing.js",
                                  "/assets/%2e%2e/timeline.py", "/assets/%2e%2e/templates/timeline.html"])
def test_nothing_but_assets_is_served(client, path: str) -> None:
    with client.get(path) as resp:
        assert resp.status_code == 404


def test_page_loads_only_local_assets(client) -> None:
    _, page = page_of(client)
    refs = [a["src"] for t, a in page.elements if t in ("script", "img") and a.get("src")]
    refs += [a["href"] for t, a in page.elements if t == "link" and a.get("href")]
    assert len(refs) >= 4  # the module, two stylesheets, the icon
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        with client.get(ref) as resp:
            assert resp.status_code == 200, ref
    # No inline script runs (the policy would refuse it): only a JSON data block.
    assert [a.get("type") for a in page.inline_scripts] == ["application/json"]
    assert page.find("script", type="module")


def test_no_address_of_another_host_in_page_or_assets(client) -> None:
    html, _ = page_of(client)
    texts = {"/": html} | {p.name: p.read_text() for p in assets()}
    texts |= {p.name: p.read_text() for p in TEMPLATES.glob("*.html")}
    for name, text in texts.items():
        assert set(URL.findall(text)) <= NAMESPACES, name
        assert not re.search(r"""(src|href)\s*=\s*["']//""", text), name
        assert "@import" not in text, name
        assert not re.search(r"url\(\s*['\"]?(?!#)", text), name  # only url(#fragment), in the SVG


def test_javascript_modules_import_only_their_siblings() -> None:
    for path in STATIC.glob("*.js"):
        for spec in re.findall(r"""^import .* from "([^"]+)";$""", path.read_text(), re.M):
            assert spec.startswith("./") and (STATIC / spec[2:]).is_file(), (path.name, spec)


def test_javascript_asks_the_api_contract_paths_relative_to_the_page() -> None:
    js = (STATIC / "timeline.js").read_text()
    assert 'const API = "api/v1";' in js
    assert set(re.findall(r"`\$\{API\}/([a-z]+)", js)) == {"sockets", "stream"}


def test_table_has_a_caption_and_column_headers(client) -> None:
    html, page = page_of(client)
    table = re.search(r'<table id="sockets".*?</table>', html, re.S).group(0)
    caption = re.search(r"<caption[^>]*>(.*?)</caption>", table, re.S)
    assert caption and "Sockets on this page" in caption.group(1)
    headers = re.findall(r'<th scope="col">([^<]+)</th>', table)
    assert headers == ["ID", "Local", "Remote", "Role", "Process", "Started", "States (time in each)"]
    assert "<tbody>" in table


def test_filter_form_has_port_address_state_and_time_range(client) -> None:
    html, page = page_of(client)
    assert page.find("form", id="filters", role="search")
    assert page.find("input", name="port", type="number")
    assert page.find("input", name="addr", type="text")
    assert page.find("input", name="since", type="datetime-local")
    assert page.find("input", name="until", type="datetime-local")
    assert page.find("select", name="per_page")
    assert page.find("input", name="live", type="checkbox")
    select = re.search(r'<select name="state">(.*?)</select>', html, re.S).group(1)
    values = re.findall(r'<option value="([^"]*)">', select)
    assert values == [""] + [s.name for s in TcpState]  # any, then the kernel's twelve in order


def test_page_has_the_canvas_the_legend_and_the_ladder(client) -> None:
    html, page = page_of(client)
    canvas = page.find("canvas", id="lifelines")
    assert canvas and canvas[0]["tabindex"] == "0" and canvas[0]["aria-label"]
    legend = re.findall(r'<li class="st" data-state="([A-Z_0-9]+)">\1</li>', html)
    assert legend == [s.name for s in TcpState]  # colour and name, never colour alone
    assert page.find("figure", id="ladder")
    for button in ("zoom-in", "zoom-out", "zoom-fit", "zoom-selected", "prev-page", "next-page"):
        assert page.find("button", id=button), button
    assert page.find("p", id="summary")
    assert page.find("p", id="live-status", role="status")


def test_page_embeds_the_states_and_their_colours_from_the_enum(client) -> None:
    html, _ = page_of(client)
    data = re.search(r'<script type="application/json" id="tcp-states">(.*?)</script>', html, re.S).group(1)
    states = json.loads(data)
    assert [s["name"] for s in states] == [s.name for s in TcpState]
    assert [s["value"] for s in states] == [s.value for s in TcpState]
    assert {s["colour"] for s in states} == set(timeline.STATE_COLOURS.values())
    assert len(set(timeline.STATE_COLOURS.values())) == len(TcpState)  # twelve distinct colours


def test_page_leaves_the_api_paths_to_the_api(client) -> None:
    rules = [r.rule for r in client.application.url_map.iter_rules() if r.endpoint.startswith("timeline.")]
    assert all(rule == "/" or rule.startswith("/assets/") for rule in rules), rules
    resp = client.get("/api/v1/sockets?limit=1000")
    assert resp.mimetype == "application/json" and resp.get_json()["sockets"] == [SOCKET]
    assert client.get("/api/v1/sockets/1").get_json()["peer"] is None
