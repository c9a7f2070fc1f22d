"""Run under wonder-run: send raw HTTP/1.1 requests to the proxy named in HTTP_PROXY and
print, as JSON, each reply (status, lower-case headers, body) or null if none came.

Argument: a JSON file with a list of requests (latin-1 text) in which ``{auth}`` becomes
the ``Proxy-Authorization`` line built from the proxy URL's credentials (nothing if it has
none), ``{secret}`` the password, ``{upstream}`` the upstream's host:port (argv[2]), and
``{good}``, ``{near_short}``, ``{near_long}``, ``{other_user}`` the base64 of
``wonders:<secret>`` and of near misses: one character short, one too many, another user.
A request may hold ``{then}``: what comes before is sent first (a CONNECT) and its reply
read, then the rest goes through the tunnel; the second reply is the one printed.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from urllib.parse import urlsplit


def _reply(sock: socket.socket) -> dict[str, object] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return {"status": int(lines[0].split()[1]), "headers": headers,
            "body": body.decode("utf-8", "replace")}


def main() -> None:
    proxy = urlsplit(os.environ["HTTP_PROXY"])
    secret = proxy.password or ""
    auth = ""
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{secret}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {token}\r\n"
    with open(sys.argv[1], encoding="utf-8") as f:
        requests = json.load(f)
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    values = {"auth": auth, "secret": secret, "upstream": sys.argv[2],
              "good": b64(f"wonders:{secret}"), "near_short": b64(f"wonders:{secret[:-1]}"),
              "near_long": b64(f"wonders:{secret}A"), "other_user": b64(f"root:{secret}")}
    results = []
    for text in requests:
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        first, _, then = text.partition("{then}")
        with socket.create_connection(("127.0.0.1", proxy.port or 80), timeout=60) as sock:
            sock.sendall(first.encode("latin-1"))
            try:
                reply = _reply(sock)
                if then and reply is not None and reply["status"] == 200:
                    sock.sendall(then.encode("latin-1"))
                    reply = _reply(sock)
                results.append(reply)
            except ConnectionResetError:
                results.append(None)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
