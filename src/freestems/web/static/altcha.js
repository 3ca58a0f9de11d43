// ALTCHA v2 proof of work, solved with WebCrypto (written for freestems from the protocol; no widget code).
//
// A challenge's parameters: algorithm ("PBKDF2/SHA-256|384|512" or "SHA-256|384|512"), nonce and salt (hex),
// cost (iterations), keyLength (bytes), keyPrefix (hex). For counter = 0, 1, 2, ... the client derives a key
// from password = nonce bytes + counter as a big-endian uint32 and salt = salt bytes, until the key's hex
// starts with keyPrefix. The answer is {counter, derivedKey (hex of the whole key), time (ms)}; the payload
// sent to the server is base64 of the JSON {challenge, solution}.

const PBKDF2_HASHES = { "PBKDF2/SHA-384": "SHA-384", "PBKDF2/SHA-512": "SHA-512" };
const SHA_HASHES = { "SHA-384": "SHA-384", "SHA-512": "SHA-512" };

export function hexToBytes(hex) {
  if (typeof hex !== "string" || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error("not a hex string");
  }
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(hex.substr(i * 2, 2), 16);
  return bytes;
}

export function bytesToHex(bytes) {
  let hex = "";
  for (const byte of bytes) hex += byte.toString(16).padStart(2, "0");
  return hex;
}

/** The KDF password: the nonce's bytes followed by the counter as a big-endian uint32. */
export function makePassword(nonce, counter) {
  const password = new Uint8Array(nonce.length + 4);
  password.set(nonce, 0);
  new DataView(password.buffer).setUint32(nonce.length, counter >>> 0, false);
  return password;
}

/** A function (password) -> Promise<Uint8Array key> for the challenge's parameters. */
export function keyDeriver(parameters) {
  const algorithm = String(parameters.algorithm || "").toUpperCase();
  const salt = hexToBytes(parameters.salt);
  const keyLength = parameters.keyLength || 32;
  const cost = Math.max(1, parameters.cost | 0);
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) throw new Error("this browser has no WebCrypto (is the page served over https?)");
  if (algorithm.startsWith("PBKDF2")) {
    const hash = PBKDF2_HASHES[algorithm] || "SHA-256";
    return async (password) => {
      const key = await subtle.importKey("raw", password, "PBKDF2", false, ["deriveBits"]);
      const bits = await subtle.deriveBits({ name: "PBKDF2", hash, salt, iterations: cost }, key, keyLength * 8);
      return new Uint8Array(bits);
    };
  }
  if (algorithm.startsWith("SHA-")) {
    // Iterated hash: h1 = H(salt + password), h(i+1) = H(h(i)); the key is the first keyLength bytes.
    const hash = SHA_HASHES[algorithm] || "SHA-256";
    return async (password) => {
      let data = new Uint8Array(salt.length + password.length);
      data.set(salt, 0);
      data.set(password, salt.length);
      for (let i = 0; i < cost; i += 1) data = new Uint8Array(await subtle.digest(hash, data));
      return data.slice(0, keyLength);
    };
  }
  throw new Error(`the proof-of-work algorithm ${parameters.algorithm} is not supported by this page`);
}

/** True when the key's hex starts with the (lower-case hex) prefix. */
export function startsWithPrefix(key, prefix) {
  const bytesNeeded = Math.ceil(prefix.length / 2);
  if (bytesNeeded > key.length) return false;
  return bytesToHex(key.subarray(0, bytesNeeded)).startsWith(prefix);
}

/**
 * Try counters start, start + step, ... until one derives a key with the challenge's prefix.
 * onTries(n) is called now and then with the tries made since the last call; shouldStop() ends the search.
 * Resolves to {counter, derivedKey, time} or null when stopped or past maxCounter.
 */
export async function search(parameters, { start = 0, step = 1, maxCounter = 0xffffffff, onTries, shouldStop } = {}) {
  const derive = keyDeriver(parameters);
  const nonce = hexToBytes(parameters.nonce);
  const prefix = String(parameters.keyPrefix || "00").toLowerCase();
  const began = performance.now();
  let reported = began;
  let tries = 0;
  for (let counter = start; counter <= maxCounter; counter += step) {
    if (shouldStop && shouldStop()) return null;
    const key = await derive(makePassword(nonce, counter));
    tries += 1;
    if (startsWithPrefix(key, prefix)) {
      if (onTries) onTries(tries);
      return { counter, derivedKey: bytesToHex(key), time: Math.round(performance.now() - began) };
    }
    const now = performance.now();
    if (onTries && now - reported > 100) {
      onTries(tries);
      tries = 0;
      reported = now;
    }
  }
  return null;
}

/** Base64 of the UTF-8 JSON payload the server verifies: {challenge, solution}. */
export function encodePayload(challenge, solution) {
  const json = JSON.stringify({ challenge, solution });
  const bytes = new TextEncoder().encode(json);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
