"""Tiny stdlib HTTP client for the end-to-end suite (no third-party packages).

Used by scenario.py (talking to InvokeAI directly), matrix.py (talking through the guard), differentials.py and
browser/setup.py.

Browser-like by default: every request sends `Accept-Encoding: gzip, deflate, br` (as Chromium does) unless the
caller passes its own Accept-Encoding header (or builds the Client with another `accept_encoding`), and gzip /
deflate response bodies are decoded transparently. `br` (or any other coding) is an error, never silently
passed on: InvokeAI only gzips, so a brotli body means something in between re-encoded it. The wire is kept
visible: `Response.headers` are the headers as received (Content-Encoding included), `Response.raw_body` the
bytes as received, `Response.content_encoding` the coding that was decoded ("" for none).

Cookies too: `Client(base)` keeps cookies across requests like a browser (http.cookiejar: Set-Cookie,
Max-Age/Expires, deletion, path). `Client(base, cookie_jar=False)` is stateless and sends only the cookies a call
passes explicitly; only a client that must prove something about requests WITHOUT browser state asks for that
(the matrix's shared client: its "no credentials" cases must not carry a cookie an earlier login set), and says
why where it is built.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import http.cookiejar
import json
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field


BROWSER_ACCEPT_ENCODING = "gzip, deflate, br"


class ContentEncodingError(RuntimeError):
    """A response body in a content coding the suite does not decode (br, zstd, ...) or that does not decode."""


@dataclass
class Response:
    status: int
    headers: dict  # lower-case name -> list of values, exactly as received (Content-Encoding included)
    body: bytes  # decoded body
    url: str = ""
    raw_body: bytes = b""  # the body as received on the wire (compressed when content_encoding is set)
    content_encoding: str = ""  # the coding(s) decoded, e.g. "gzip"; "" when the body came unencoded
    request_headers: dict = field(default_factory=dict)  # what was sent (lower-case name -> value)

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return v[0] if v else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def detail(self) -> str:
        j = self.json()
        if isinstance(j, dict) and "detail" in j:
            d = j["detail"]
            if isinstance(d, list):
                return "; ".join(str(x.get("msg", x)) if isinstance(x, dict) else str(x) for x in d)[:200]
            return str(d)[:200]
        return self.text[:200]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def multipart(fields: list[tuple]) -> tuple[bytes, str]:
    """fields: (name, value) for text parts or (name, filename, bytes, content_type) for files."""
    boundary = "----igboundary" + uuid.uuid4().hex
    out = bytearray()
    for f in fields:
        out += f"--{boundary}\r\n".encode()
        if len(f) == 2:
            name, value = f
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            out += (value if isinstance(value, bytes) else str(value).encode()) + b"\r\n"
        else:
            name, filename, data, ctype = f
            out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
            out += f"Content-Type: {ctype}\r\n\r\n".encode()
            out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def decode_body(raw: bytes, content_encoding: str | None, url: str = "") -> tuple[bytes, str]:
    """Undo Content-Encoding (gzip, x-gzip, deflate; a list is undone right to left). Anything else raises."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    body = raw
    if not codings or not raw:
        return body, ",".join(codings)
    for coding in reversed(codings):
        try:
            if coding in ("gzip", "x-gzip"):
                body = gzip.decompress(body)
            elif coding == "deflate":
                try:
                    body = zlib.decompress(body)  # RFC 9110 deflate = zlib stream
                except zlib.error:
                    body = zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
            else:
                raise ContentEncodingError(
                    f"{url}: response has Content-Encoding {content_encoding!r}; the e2e client decodes only gzip and "
                    f"deflate (InvokeAI only gzips, so {coding!r} means something re-encoded the body)")
        except (OSError, EOFError, zlib.error) as e:
            raise ContentEncodingError(f"{url}: body does not decode as Content-Encoding {coding!r}: {e}") from e
    return body, ",".join(codings)


def ambiguous_multipart(data: bytes) -> dict:
    """Three multipart/form-data requests whose one part is `data` for Starlette (python-multipart) but that a
    parser taking the first parameter, or matching names case-sensitively, reads differently:
      a  two `boundary` parameters (the body is framed with the second; Starlette keeps the last one)
      b  a part with two `name` parameters, "zzz" then "data" (Starlette keeps the last one)
      c  `content-disposition: FORM-DATA; NAME="data"` (header, type and parameter names in other cases)
    Returns key -> (content_type, body, description)."""
    return {
        "a": ("multipart/form-data; boundary=AAA; boundary=BBB",
              b'--BBB\r\nContent-Disposition: form-data; name="data"\r\n\r\n' + data + b"\r\n--BBB--\r\n",
              "Content-Type: multipart/form-data; boundary=AAA; boundary=BBB (body framed with BBB)"),
        "b": ("multipart/form-data; boundary=igdiffB",
              b'--igdiffB\r\nContent-Disposition: form-data; name="zzz"; name="data"\r\n\r\n' + data
              + b"\r\n--igdiffB--\r\n",
              'part header Content-Disposition: form-data; name="zzz"; name="data"'),
        "c": ("multipart/form-data; boundary=igdiffC",
              b'--igdiffC\r\ncontent-disposition: FORM-DATA; NAME="data"\r\n\r\n' + data + b"\r\n--igdiffC--\r\n",
              'part header content-disposition: FORM-DATA; NAME="data"'),
    }


@dataclass
class Client:
    base: str
    timeout: float = 60.0
    calls: int = field(default=0)
    # Sent on every request unless the call passes its own Accept-Encoding; None sends urllib's "identity".
    accept_encoding: str | None = BROWSER_ACCEPT_ENCODING
    # True (default): keep cookies across requests like a browser (see module doc). False: stateless (say why at
    # the call site). Or pass a CookieJar to share one.
    cookie_jar: bool | http.cookiejar.CookieJar = True
    jar: http.cookiejar.CookieJar | None = field(default=None, init=False, repr=False)
    codings: dict = field(default_factory=dict)  # content coding -> number of responses decoded from it

    def __post_init__(self):
        if isinstance(self.cookie_jar, http.cookiejar.CookieJar):
            self.jar = self.cookie_jar
        elif self.cookie_jar:
            self.jar = http.cookiejar.CookieJar()

    def cookies(self) -> dict:
        """The jar's cookies (name -> value); {} without a jar."""
        return {c.name: c.value for c in self.jar} if self.jar is not None else {}

    def request(self, method: str, path: str, token: str | None = None, *, params=None, json_body=None,
                data: bytes | None = None, content_type: str | None = None, files: list[tuple] | None = None,
                headers: dict | None = None, cookies: dict | None = None, raw_json: bool = False) -> Response:
        url = self.base.rstrip("/") + path
        if params:
            items = [(k, v) for k, v in (params.items() if isinstance(params, dict) else params) if v is not None]
            items = [(k, ("true" if v is True else "false" if v is False else v)) for k, v in items]
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(items, doseq=True)
        hdrs = dict(headers or {})
        body = data
        if files is not None:
            body, ctype = multipart(files)
            hdrs["Content-Type"] = ctype
        elif json_body is not None or raw_json:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif content_type:
            hdrs["Content-Type"] = content_type
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if self.accept_encoding is not None and not any(k.lower() == "accept-encoding" for k in hdrs):
            hdrs["Accept-Encoding"] = self.accept_encoding
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
        if self.jar is not None:
            self.jar.add_cookie_header(req)  # (not when the caller sent a raw Cookie header)
        if cookies:
            # explicit cookies of this call, on top of (and overriding) the jar's
            merged = {}
            for part in (req.unredirected_hdrs.pop("Cookie", None) or "").split(";"):
                if "=" in part:
                    k, v = part.split("=", 1)
                    merged[k.strip()] = v.strip()
            merged.update(cookies)
            req.add_unredirected_header("Cookie", "; ".join(f"{k}={v}" for k, v in merged.items()))
        sent = {k.lower(): v for k, v in req.header_items()}
        self.calls += 1
        try:
            with _OPENER.open(req, timeout=self.timeout) as r:
                raw, status, msg, resp = r.read(), r.status, r.headers, r
                return self._response(req, resp, status, msg, raw, url, sent)
        except urllib.error.HTTPError as e:
            raw = e.read() if e.fp else b""
            return self._response(req, e, e.code, e.headers, raw, url, sent)

    def _response(self, req, resp, status, msg, raw, url, sent) -> Response:
        if self.jar is not None:
            self.jar.extract_cookies(resp, req)
        hdrs = _headers(msg)
        ce = ", ".join(hdrs.get("content-encoding", []))
        body, decoded = decode_body(raw, ce, url)
        if decoded:
            self.codings[decoded] = self.codings.get(decoded, 0) + 1
        return Response(status, hdrs, body, url, raw_body=raw, content_encoding=decoded, request_headers=sent)


def _headers(msg) -> dict:
    out: dict[str, list[str]] = {}
    for k, v in msg.items():
        out.setdefault(k.lower(), []).append(v)
    return out


def cookies_from(resp: Response) -> dict:
    jar = {}
    for sc in resp.headers.get("set-cookie", []):
        first = sc.split(";", 1)[0]
        if "=" in first:
            k, v = first.split("=", 1)
            jar[k.strip()] = v.strip()
    return jar


# --------------------------------------------------------------------------- images
def png(w: int, h: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid RGB PNG of one flat colour (no PIL)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- JWT (HS256, for forged tokens)
def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_hs256(claims: dict, secret: str) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def now() -> int:
    return int(time.time())
