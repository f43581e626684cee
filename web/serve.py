#!/usr/bin/env python3
"""Serves the built web viewer (web/dist) with the headers that make the page cross-origin
isolated (COOP/COEP), so that without WebGPU it computes on every core, not one.

    python3 web/serve.py [--port 8000] [--bind 127.0.0.1] [--dir web/dist] [--models DIR]
                         [--https | --cert FILE --key FILE]

`--models DIR` also serves a folder of checkpoints under /models/, to open one with
`?checkpoint=/models/<file>`. `--port 0` picks a free port. The first line printed is the
address (`serving http://HOST:PORT/`, or https). Browsers give WebGPU, threads and the
offline cache only to secure contexts: `localhost`, or HTTPS. For a class on the network,
`--cert/--key` serve a real certificate (from your institution, Let's Encrypt or mkcert), and
`--https` makes a self-signed one (with `openssl`, kept in web/.tls/ for 90 days) that each
student's browser asks to accept once. Standard library only (and the openssl command).
"""
import argparse
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
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


class Server(ThreadingHTTPServer):
    """Threads per connection; with `context`, each connection speaks TLS, its handshake in
    its own thread, so a client that stalls there holds up nobody."""

    context = None
    quiet = False

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.context:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        # A browser that has not accepted the self-signed certificate yet closes the handshake.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


def addresses():
    """The names and addresses other machines may use for this one."""
    names, ips = {"localhost", socket.gethostname()}, {"127.0.0.1"}
    try:
        names.add(socket.getfqdn())
        ips.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    # The address of the route out (no packet is sent by connecting a UDP socket).
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ips.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(n for n in names if n), sorted(ips)


def self_signed(folder):
    """A self-signed certificate and key in `folder`, made with openssl when missing or older
    than 80 days (they last 90); returns their paths."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    if os.path.isfile(cert) and os.path.isfile(key) and time.time() - os.path.getmtime(cert) < 80 * 86400:
        return cert, key
    os.makedirs(folder, exist_ok=True)
    names, ips = addresses()
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ipaddress.ip_address(i)}" for i in ips])
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "90",
           "-subj", "/CN=dinoscope classroom", "-addext", f"subjectAltName={san}",
           "-keyout", key, "-out", cert]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except FileNotFoundError:
        sys.exit("--https needs the openssl command to make a certificate; install it, or give "
                 "--cert and --key (e.g. from mkcert)")
    except subprocess.CalledProcessError as e:
        sys.exit(f"openssl could not make a certificate: {e.stderr.decode(errors='replace').strip()}")
    os.chmod(key, 0o600)
    return cert, key


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--bind", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    ap.add_argument("--dir", default=os.path.join(here, "dist"), help="the built site (web/build.sh)")
    ap.add_argument("--models", help="a folder of checkpoints to serve under /models/")
    ap.add_argument("--quiet", action="store_true", help="no line per request")
    ap.add_argument("--https", action="store_true",
                    help="serve HTTPS with a self-signed certificate (made with openssl, kept in --tls-dir)")
    ap.add_argument("--tls-dir", default=os.path.join(here, ".tls"),
                    help="where --https keeps its certificate")
    ap.add_argument("--cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--key", help="the certificate's private key (PEM)")
    args = ap.parse_args()
    if bool(args.cert) != bool(args.key):
        sys.exit("--cert and --key go together")
    if args.cert and args.https:
        sys.exit("--https makes its own certificate; give either it or --cert/--key")
    if not os.path.isfile(os.path.join(args.dir, "index.html")):
        sys.exit(f"{args.dir} has no index.html: build the site first with `bash web/build.sh`")
    if args.models and not os.path.isdir(args.models):
        sys.exit(f"--models {args.models}: no such folder")
    Handler.models = args.models
    try:
        httpd = Server((args.bind, args.port), partial(Handler, directory=args.dir))
    except OSError as e:
        sys.exit(f"cannot listen on {args.bind}:{args.port}: {e.strerror} (try another --port)")
    httpd.quiet = args.quiet
    tls = args.https or args.cert
    if tls:
        cert, key = self_signed(args.tls_dir) if args.https else (args.cert, args.key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            sys.exit(f"cannot use the certificate {cert} with the key {key}: {e}")
        httpd.context = ctx
    host, port = httpd.server_address[:2]
    print(f"serving {'https' if tls else 'http'}://{host}:{port}/", flush=True)
    if args.https:
        names, ips = addresses()
        print(
            f"note: the certificate is self-signed (valid for {', '.join(names + ips)}): each "
            "browser shows a warning once; accept it (Advanced, Proceed) and the page gets "
            "WebGPU, threads and the offline cache.",
            file=sys.stderr,
            flush=True,
        )
    elif not tls and args.bind not in ("127.0.0.1", "localhost", "::1"):
        print(
            "note: other machines get this page over plain HTTP, which browsers do not trust with "
            "WebGPU, threads or the offline model cache: their viewer computes on one CPU thread "
            "(the page says so). Only this machine's own browser, on http://localhost, gets all three; "
            "--https (or --cert/--key) gives them to everyone.",
            file=sys.stderr,
            flush=True,
        )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
