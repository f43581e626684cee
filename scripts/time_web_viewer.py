"""Times the web viewer: request -> maps on screen, for a checkpoint, in headless Chromium.

usage: python3 scripts/time_web_viewer.py <checkpoint> [--runs 3] [--no-webgpu] [--size 480] [--threads N]

Serves web/dist plus the checkpoint on 127.0.0.1, opens the page with ?checkpoint= through
chromedriver (Debian's chromium + chromium-driver), waits for the first sample's maps at
--size px (480 by default, as the official script; 518 is DINOv2's trained size) and prints,
per run, the latency the page measured for that size (data-latency: request to maps, seconds;
the page first shows a 224 px preview, whose latency is preview_latency_s; network_s is the
worker's forward pass and read-back within it) and the time from
navigation to the full-size maps. `--threads N` serves the page cross-origin isolated (COOP/COEP,
as web/serve.py) and asks for N threads, so that without WebGPU the worker runs the threaded
module (pkg-threads/); `--threads 1` is the single-threaded module.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from headless_chromium import Chromium, serve

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--no-webgpu", action="store_true", help="hide WebGPU: the worker computes on the wasm CPU backend")
ap.add_argument("--size", type=int, default=480, help="input side in pixels (rounded down to the patch)")
ap.add_argument("--threads", type=int, help="CPU threads of the worker (isolated page); default: the page's choice")
args = ap.parse_args()

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
site = tempfile.mkdtemp()
shutil.copytree(os.path.join(root, "web", "dist"), site, dirs_exist_ok=True)
shutil.copy(args.checkpoint, os.path.join(site, "model.safetensors"))
base, httpd = serve(site, isolated=bool(args.threads and args.threads > 1))
page = f"{base}/index.html?checkpoint=model.safetensors&size={args.size}"
if args.threads:
    page += f"&threads={args.threads}"

flags = ["--enable-unsafe-swiftshader", "--window-size=1280,800"]
if not args.no_webgpu:
    flags += ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]
try:
    with Chromium(flags) as browser:
        for run in range(args.runs):
            browser.goto(page)
            start = time.time()
            first = None
            while True:
                state = browser.attr("data-state") or ""
                if first is None and state.startswith("ready"):
                    first = round(time.time() - start, 2)
                if (state.startswith("ready") and browser.attr("data-final") == "true") or state == "error":
                    break
                if time.time() - start > 600:
                    sys.exit("the page never drew its maps")
                time.sleep(0.2)
            print(json.dumps({"run": run, "state": state, "latency_s": float(browser.attr("data-latency") or "nan"),
                              "preview_latency_s": float(browser.attr("data-preview-latency") or "nan"),
                              "network_s": float(browser.attr("data-network") or "nan"),
                              "backend": browser.attr("data-backend"), "page_load_to_first_maps_s": first,
                              "page_load_to_maps_s": round(time.time() - start, 2)}))
finally:
    httpd.shutdown()
