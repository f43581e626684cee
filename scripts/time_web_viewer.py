"""Times the web viewer: request -> maps on screen, for a checkpoint, in headless Chromium.

usage: python3 scripts/time_web_viewer.py <checkpoint> [--runs 3] [--no-webgpu] [--size 480]

Serves web/dist plus the checkpoint on 127.0.0.1, opens the page with ?checkpoint= through
chromedriver (Debian's chromium + chromium-driver), waits for the first sample's maps at
--size px (480 by default, as the official script; 518 is DINOv2's trained size) and prints,
per run, the latency the page measured for that size (data-latency: request to maps, seconds;
the page first shows a 224 px preview, whose latency is preview_latency_s) and the time from
navigation to the full-size maps.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--no-webgpu", action="store_true", help="hide WebGPU: the worker computes on the wasm CPU backend")
ap.add_argument("--size", type=int, default=480, help="input side in pixels (rounded down to the patch)")
args = ap.parse_args()

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
site = tempfile.mkdtemp()
shutil.copytree(os.path.join(root, "web", "dist"), site, dirs_exist_ok=True)
shutil.copy(args.checkpoint, os.path.join(site, "model.safetensors"))


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


Quiet.extensions_map[".wasm"] = "application/wasm"
Quiet.extensions_map[".js"] = "text/javascript"
httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=site))
threading.Thread(target=httpd.serve_forever, daemon=True).start()
page = f"http://127.0.0.1:{httpd.server_address[1]}/index.html?checkpoint=model.safetensors&size={args.size}"

s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"


def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["value"]


try:
    for _ in range(100):
        try:
            call("GET", "/status")
            break
        except OSError:
            time.sleep(0.1)
    flags = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader", "--window-size=1280,800",
             f"--user-data-dir={tempfile.mkdtemp()}"]
    if not args.no_webgpu:
        flags += ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]
    sid = call("POST", "/session", {"capabilities": {"alwaysMatch": {"browserName": "chrome",
               "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": flags}}}})["sessionId"]
    for run in range(args.runs):
        call("POST", f"/session/{sid}/url", {"url": page})
        start = time.time()
        first = None
        while True:
            state = call("POST", f"/session/{sid}/execute/sync",
                         {"script": "return document.body.getAttribute('data-state') || ''", "args": []})
            final = call("POST", f"/session/{sid}/execute/sync",
                         {"script": "return document.body.getAttribute('data-final') || ''", "args": []})
            if first is None and state.startswith("ready"):
                first = round(time.time() - start, 2)
            if (state.startswith("ready") and final == "true") or state == "error":
                break
            if time.time() - start > 600:
                sys.exit("the page never drew its maps")
            time.sleep(0.2)
        latency = call("POST", f"/session/{sid}/execute/sync",
                       {"script": "return document.body.getAttribute('data-latency')", "args": []})
        backend = call("POST", f"/session/{sid}/execute/sync",
                       {"script": "return document.body.getAttribute('data-backend')", "args": []})
        preview = call("POST", f"/session/{sid}/execute/sync",
                       {"script": "return document.body.getAttribute('data-preview-latency')", "args": []})
        print(json.dumps({"run": run, "state": state, "latency_s": float(latency or "nan"),
                          "preview_latency_s": float(preview or "nan"), "backend": backend,
                          "page_load_to_first_maps_s": first, "page_load_to_maps_s": round(time.time() - start, 2)}))
    call("DELETE", f"/session/{sid}")
finally:
    driver.kill()
    httpd.shutdown()
