"""What the browser benchmarks share: a static server on 127.0.0.1 and a headless Chromium
driven through chromedriver (Debian's chromium + chromium-driver), read through the page's
`data-*` attributes.
"""
import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

BASE_FLAGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"]


def serve(directory, isolated=False):
    """Serves `directory` in a background thread; returns (base URL, server). `isolated` sends
    COOP/COEP, which cross-origin isolation (SharedArrayBuffer, wasm threads) needs."""

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self):
            if isolated:
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def log_message(self, *a):
            pass

    Handler.extensions_map[".wasm"] = "application/wasm"
    Handler.extensions_map[".js"] = "text/javascript"
    Handler.extensions_map[".mjs"] = "text/javascript"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=directory))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", httpd


class Chromium:
    """One chromedriver and one headless Chromium session; use as a context manager."""

    def __init__(self, extra_flags=()):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        self.driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.sid = None
        for _ in range(100):
            try:
                self.call("GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        flags = BASE_FLAGS + [f"--user-data-dir={tempfile.mkdtemp()}"] + list(extra_flags)
        self.sid = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                             "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": flags}}}})["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["value"]

    def goto(self, url):
        self.call("POST", f"/session/{self.sid}/url", {"url": url})

    def attr(self, name):
        """The body's `name` attribute, or None."""
        return self.call("POST", f"/session/{self.sid}/execute/sync",
                         {"script": f"return document.body.getAttribute('{name}')", "args": []})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self.sid:
                self.call("DELETE", f"/session/{self.sid}")
        finally:
            self.driver.kill()
