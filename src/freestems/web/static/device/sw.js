// The page's service worker (served as /sw.js, scope: the whole site), registered only by a page whose
// server offers separating on the device: it lets the page, and separating on the device, work offline.
//
// Network first, always: online nothing changes (every response is the server's, fresh). A successful GET
// of the page, its static files, the in-browser runtime, GET /config, a model's device manifest or the web
// app manifest (with the icons it lists: the installed app starts offline) is also put in a cache; when the
// network fails, that copy answers. Everything else (jobs, uploads, the session
// socket, results) is not touched. The networks themselves are kept by the engine (device/files.js, Cache
// Storage, checked against the manifest's sha256), not here. The page tells this worker what it loaded
// before it was controlled ({type: "keep", urls}), so a first visit is enough.

const CACHE = "freestems-offline-v1";
const SCOPE = new URL("./", self.location).href; // where the page lives (behind a proxy: a prefix)
const APP_MANIFEST = "manifest.webmanifest";
const KEPT = [/^static\//, /^vendor\/onnxruntime-web\//, /^config$/, /^models\/[^/]+\/device\/manifest\.json$/, /^manifest\.webmanifest$/];

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

/** The icons the web app manifest `response` lists, as URLs (none when it cannot be read). */
async function iconsOf(response, url) {
  try {
    const manifest = await response.json();
    return (manifest.icons || []).map((icon) => new URL(icon.src, url).href);
  } catch (ignored) {
    return [];
  }
}

async function keep(urls) {
  const cache = await caches.open(CACHE);
  const queue = [...urls];
  while (queue.length) {
    const url = queue.shift();
    const page = url === SCOPE;
    if (!kept(url, page)) continue;
    let response = await cache.match(url);
    try {
      if (!response) {
        response = await fetch(url, page ? { headers: { Accept: "text/html" } } : {});
        if (!response.ok) continue;
        await cache.put(url, response.clone());
      }
      if (url === SCOPE + APP_MANIFEST) queue.push(...(await iconsOf(response, url))); // kept or not yet
    } catch (ignored) {
      // offline already: kept next time
    }
  }
}

self.addEventListener("message", (event) => {
  const message = event.data;
  if (!message || message.type !== "keep" || !Array.isArray(message.urls)) return;
  event.waitUntil(keep(message.urls));
});
