"""Tiny stdlib HTTP client for the end-to-end suite (no third-party packages).

Used by scenario.py (talking to InvokeAI directly) and matrix.py (talking through the guard).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    headers: dict  # lower-case name -> list of values
    body: bytes
    url: str = ""

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


@dataclass
class Client:
    base: str
    timeout: float = 60.0
    calls: int = field(default=0)

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
        if cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
        self.calls += 1
        try:
            with _OPENER.open(req, timeout=self.timeout) as r:
                return Response(r.status, _headers(r.headers), r.read(), url)
        except urllib.error.HTTPError as e:
            return Response(e.code, _headers(e.headers), e.read() if e.fp else b"", url)


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
