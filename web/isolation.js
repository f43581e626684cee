// A service worker that makes the viewer's page cross-origin isolated on hosts that cannot
// send headers (GitHub Pages, a plain `python3 -m http.server`): it adds COOP/COEP to the
// site's own responses, which is what SharedArrayBuffer, and so the threaded CPU module,
// needs. index.html registers it only when the browser has no WebGPU adapter; web/serve.py
// sends the same headers itself and makes it unnecessary.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  // Other origins (the Hugging Face Hub, a checkpoint URL) pass untouched: they are fetched
  // with CORS, which an isolated page accepts.
  if (new URL(request.url).origin !== self.location.origin) return;
  if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;
  event.respondWith(
    fetch(request).then((response) => {
      if (response.status === 0) return response;
      const headers = new Headers(response.headers);
      headers.set("Cross-Origin-Opener-Policy", "same-origin");
      headers.set("Cross-Origin-Embedder-Policy", "require-corp");
      headers.set("Cross-Origin-Resource-Policy", "same-origin");
      return new Response(response.body, {
        status: response.status,
        statusText: response.statusText,
        headers,
      });
    }),
  );
});
