#!/usr/bin/env python3
"""Serves the built web viewer (web/dist) with the headers that make the page cross-origin
isolated (COOP/COEP), so that without WebGPU it computes on every core, not one.

    python3 web/serve.py [--port 8000] [--bind 127.0.0.1] [--dir web/dist] [--models DIR]

`--models DIR` also serves a folder of checkpoints under /models/, to open one with
`?checkpoint=/models/<file>`. `--port 0` picks a free port. The first line printed is the
address (`serving http://HOST:PORT/`). Standard library only.
"""
import argparse
import os
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class Handler(SimpleHTTPRequestHandler):
    """Static files with COOP/COEP/CORP on every answer; /models/ maps to --models."""

    models = None
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".mjs": "text/javascript"}

    def translate_path(self, path):
        if self.models and path.split("?", 1)[0].startswith("/models/"):
            rel = unquote(path.split("?", 1)[0][len("/models/"):])
            root = os.path.realpath(self.models)
            full = os.path.realpath(os.path.join(root, *[p for p in rel.split("/") if p]))
            # No way out of the folder (`..`, links pointing elsewhere).
            return full if full == root or full.startswith(root + os.sep) else os.path.join(root, "\0")
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        # A rebuilt module must not be mixed with a cached page.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--bind", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    ap.add_argument("--dir", default=os.path.join(here, "dist"), help="the built site (web/build.sh)")
    ap.add_argument("--models", help="a folder of checkpoints to serve under /models/")
    ap.add_argument("--quiet", action="store_true", help="no line per request")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.dir, "index.html")):
        sys.exit(f"{args.dir} has no index.html: build the site first with `bash web/build.sh`")
    if args.models and not os.path.isdir(args.models):
        sys.exit(f"--models {args.models}: no such folder")
    Handler.models = args.models
    try:
        httpd = ThreadingHTTPServer((args.bind, args.port), partial(Handler, directory=args.dir))
    except OSError as e:
        sys.exit(f"cannot listen on {args.bind}:{args.port}: {e.strerror} (try another --port)")
    httpd.quiet = args.quiet
    host, port = httpd.server_address[:2]
    print(f"serving http://{host}:{port}/", flush=True)
    if args.bind not in ("127.0.0.1", "localhost", "::1"):
        print(
            "note: other machines get this page over plain HTTP, which browsers do not trust with "
            "WebGPU, threads or the offline model cache: their viewer computes on one CPU thread "
            "(the page says so). Only this machine's own browser, on http://localhost, gets all three.",
            file=sys.stderr,
            flush=True,
        )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
