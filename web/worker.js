// The viewer's compute worker: the same wasm module as the page, holding the network so that
// decoding and inference never freeze the tab (see viewer/src/worker.rs). Requests are
// handled one at a time, in order.
import init, { dino_worker_handle } from "./pkg/dino-viewer.js";

let queue = init();
self.onmessage = (event) => {
  queue = queue.then(async () => {
    const reply = await dino_worker_handle(event.data);
    const transfer = ["rgb", "display_rgb", "attention", "features"]
      .map((k) => reply[k] && reply[k].buffer)
      .filter(Boolean);
    self.postMessage(reply, transfer);
  });
};
