// The page's service worker (served as /sw.js, scope: the whole site), registered only by a page whose
// server offers separating on the device: it lets the page, and separating on the device, work offline.
//
// Network first, always: online nothing changes (every response is the server's, fresh). A successful GET
// of the page, its static files, the in-browser runtime, GET /config or a model's device manifest is also
// put in a cache; when the network fails, that copy answers. Everything else (jobs, uploads, the session
// socket, results) is not touched. The networks themselves are kept by the engine (device/files.js, Cache
// Storage, checked against the manifest's sha256), not here. The page tells this worker what it loaded
// before it was controlled ({type: "keep", urls}), so a first visit is enough.

const CACHE = "freestems-offline-v1";
const SCOPE = new URL("./", self.location).href; // where the page lives (behind a proxy: a prefix)
const KEPT = [/^static\//, /^vendor\/onnxruntime-web\//, /^config$/, /^models\/[^/]+\/device\/manifest\.json$/];

/** Whether a GET of `url` is one this worker keeps a copy of ("" is the page itself, when navigated to). */
function kept(url, navigate) {
  const address = new URL(url);
  if (!address.href.startsWith(SCOPE) || address.search) return false;
  const path = address.href.slice(SCOPE.length);
  return path === "" ? navigate : KEPT.some((pattern) => pattern.test(path));
}

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok && response.type === "basic") await cache.put(request.url, response.clone());
    return response;
  } catch (error) {
    const copy = await cache.match(request.url);
    if (copy) return copy;
    throw error;
  }
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const { request } = event;
  if (request.method !== "GET" || !kept(request.url, request.mode === "navigate")) return;
  event.respondWith(networkFirst(request));
});

self.addEventListener("message", (event) => {
  const message = event.data;
  if (!message || message.type !== "keep" || !Array.isArray(message.urls)) return;
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      for (const url of message.urls) {
        const page = url === SCOPE;
        if (!kept(url, page) || (await cache.match(url))) continue;
        try {
          const response = await fetch(url, page ? { headers: { Accept: "text/html" } } : {});
          if (response.ok) await cache.put(url, response);
        } catch (ignored) {
          // offline already: kept next time
        }
      }
    })(),
  );
});
