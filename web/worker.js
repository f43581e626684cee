// The viewer's compute worker (see viewer/src/worker.rs): it holds the network so that
// decoding and inference never freeze the tab. Requests are handled one at a time, in order.
//
// Which module it runs: with a WebGPU adapter, the page's own module (network on WebGPU).
// Without one, on a cross-origin isolated page (web/serve.py, or the service worker in
// isolation.js), the threaded module in pkg-threads/: burn's CPU kernels on a pool of
// `?threads=` Web Workers (default: every core). Otherwise the page's module on one thread.
const asked = parseInt(new URL(self.location.href).searchParams.get("threads") ?? "", 10);
const threads = asked > 0 ? asked : (navigator.hardwareConcurrency || 1);

async function hasAdapter() {
  try {
    return Boolean(navigator.gpu && (await navigator.gpu.requestAdapter()));
  } catch {
    return false;
  }
}

async function start() {
  if (threads > 1 && self.crossOriginIsolated && !(await hasAdapter())) {
    try {
      const threaded = await import("./pkg-threads/dino-viewer-threads.js");
      await threaded.default();
      await threaded.initThreadPool(threads);
      return threaded.dino_worker_handle;
    } catch (e) {
      console.warn(`the threaded CPU module did not start (${e}); computing on one thread`);
    }
  }
  const single = await import("./pkg/dino-viewer.js");
  await single.default();
  return single.dino_worker_handle;
}

let queue = start();
self.onmessage = (event) => {
  queue = queue.then(async (handle) => {
    const reply = await handle(event.data);
    const transfer = ["rgb", "display_rgb", "attention", "features"]
      .map((k) => reply[k] && reply[k].buffer)
      .filter(Boolean);
    self.postMessage(reply, transfer);
    return handle;
  });
};
