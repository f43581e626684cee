"""The anchor of the web viewer's benchmark: onnxruntime-web running the official ViT in Chromium.

usage: python3 scripts/bench_ort_web.py <checkpoint.pth> [--size 480] [--threads 1] [--runs 5]
       (ORT_DIST: onnxruntime-web's dist/ folder, from `npm install onnxruntime-web`)

Exports facebookresearch/dino's `vit_small` (third_party/dino/vision_transformer.py) with the
checkpoint's weights to ONNX (output: the last block's self-attention, as
`get_last_selfattention`), serves it with onnxruntime-web on a cross-origin-isolated page
(COOP/COEP, which its threads need), opens it in headless Chromium through chromedriver and
prints one JSON line: the median and min of the warm runs of `session.run` (the first run is
dropped), with the wasm EP, SIMD and `--threads` threads. `scripts/time_web_viewer.py` is the
dinoscope side on the same file.
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
ap.add_argument("--size", type=int, default=480)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--patch-size", type=int, default=16)
args = ap.parse_args()

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ort_dist = os.environ.get("ORT_DIST", "/tmp/ortweb/node_modules/onnxruntime-web/dist")
if not os.path.isfile(os.path.join(ort_dist, "ort.min.js")):
    sys.exit(f"{ort_dist}/ort.min.js not found: `npm install onnxruntime-web` and set ORT_DIST to its dist/ folder")
sys.path.insert(0, os.path.join(root, "third_party", "dino"))
try:
    import torch
    import vision_transformer as vits
except ImportError as e:
    sys.exit(f"{e}: needs torch, onnx and the official dino .py files in third_party/dino (see BENCHMARKS.md)")

site = tempfile.mkdtemp()
model = vits.vit_small(patch_size=args.patch_size)
state = torch.load(args.checkpoint, map_location="cpu")
state = state.get("teacher", state)
state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
missing, _ = model.load_state_dict(state, strict=False)
if missing:
    sys.exit(f"{args.checkpoint}: not a ViT-S/{args.patch_size} backbone (missing {missing[:3]}…)")
model.eval()
side = args.size // args.patch_size * args.patch_size
x = torch.randn(1, 3, side, side)
# torch.onnx cannot trace the bicubic position-embedding resize: compute it once for this size.
with torch.no_grad():
    fixed = model.interpolate_pos_encoding(torch.zeros(1, (side // args.patch_size) ** 2 + 1, model.embed_dim), side, side)
model.interpolate_pos_encoding = lambda _x, _w, _h: fixed


class LastAttention(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, img):
        return self.m.get_last_selfattention(img)


onnx_path = os.path.join(site, "vit.onnx")
torch.onnx.export(LastAttention(model), (x,), onnx_path, input_names=["image"], output_names=["attention"],
                  opset_version=17, dynamo=False)
for f in os.listdir(ort_dist):
    if f.startswith("ort.min.js") or f.startswith("ort-wasm-simd-threaded"):
        shutil.copy(os.path.join(ort_dist, f), site)
with open(os.path.join(site, "index.html"), "w") as f:
    f.write(f"""<!DOCTYPE html><html><body><script src="ort.min.js"></script><script>
(async () => {{
  try {{
    ort.env.wasm.numThreads = {args.threads};
    ort.env.wasm.simd = true;
    const session = await ort.InferenceSession.create("vit.onnx", {{executionProviders: ["wasm"]}});
    const input = new ort.Tensor("float32", new Float32Array(3 * {side} * {side}).map(() => Math.random()), [1, 3, {side}, {side}]);
    const ms = [];
    for (let i = 0; i <= {args.runs}; i++) {{
      const t = performance.now();
      const out = await session.run({{image: input}});
      ms.push(performance.now() - t);
      if (i === 0) document.body.setAttribute("data-shape", out.attention.dims.join("x"));
    }}
    document.body.setAttribute("data-isolated", String(self.crossOriginIsolated));
    document.body.setAttribute("data-ms", JSON.stringify(ms.slice(1)));
    document.body.setAttribute("data-state", "done");
  }} catch (e) {{
    document.body.setAttribute("data-error", String(e));
    document.body.setAttribute("data-state", "error");
  }}
}})();
</script></body></html>""")


base, httpd = serve(site, isolated=True)
try:
    with Chromium() as browser:
        browser.goto(f"{base}/index.html")
        start = time.time()
        while browser.attr("data-state") not in ("done", "error"):
            if time.time() - start > 900:
                sys.exit("onnxruntime-web did not finish")
            time.sleep(0.5)
        if browser.attr("data-state") == "error":
            sys.exit(f"onnxruntime-web failed: {browser.attr('data-error')}")
        ms = sorted(json.loads(browser.attr("data-ms")))
        version = json.load(open(os.path.join(ort_dist, "..", "package.json")))["version"]
        print(json.dumps({"bench": "web-viewer", "side": "onnxruntime-web", "version": version, "size": side,
                          "threads": args.threads, "simd": True,
                          "cross_origin_isolated": browser.attr("data-isolated"), "output": browser.attr("data-shape"),
                          "runs": len(ms), "median_ms": round(ms[len(ms) // 2], 1), "min_ms": round(ms[0], 1)}))
finally:
    httpd.shutdown()
