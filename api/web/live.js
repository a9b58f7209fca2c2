// The page's live layer: the API's push stream (WebSocket /api/v1/stream, its protocol in
// docs/api.md), or, where the stream is absent or refuses, a poll of latest-ticks every second.
// Either way the page receives the stream's own messages ({type: "tick" | "bar" | "heartbeat"
// | "error"}), so nothing above this module knows which one is running.

const STREAM_PATH = "/api/v1/stream";
// The stream's SSE twin is an HTTP route, so the OpenAPI document lists it where the stream
// exists: the page asks the document instead of opening a socket that fails (a failed socket
// is an error in the browser's console on every try).
const STREAM_MARK = "/api/v1/stream/sse";
const POLL_MS = 1000;
const QUIET_MS = 15000; // three heartbeats missed: the socket is dead even if not closed
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

let streamKnown = null; // one look at /openapi.json per page, shared by every feed

async function streamExists() {
  if (streamKnown === null) {
    streamKnown = fetch("/openapi.json")
      .then((answer) => (answer.ok ? answer.json() : { paths: {} }))
      .then((doc) => STREAM_MARK in (doc.paths || {}))
      .catch(() => false);
  }
  return streamKnown;
}

function streamUrl(apiKey) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : "";
  return `${scheme}://${location.host}${STREAM_PATH}${query}`;
}

// What a close code means for the page: the words shown, and whether to poll meanwhile.
function closeReason(event) {
  const known = {
    1008: "the stream refused this page (API key, or too many symbols)",
    1013: "the stream is full on this worker",
    4000: "this page fell behind the stream",
  };
  return (
    known[event.code] || `stream closed (${event.code}${event.reason ? ": " + event.reason : ""})`
  );
}

/**
 * One live channel: `symbols` ("universe" or a list), ticks conflated to `ticksMs`, 1-minute
 * bars when `bars`. `onMessage(message)` gets every tick, bar, heartbeat and error; `onMode(mode,
 * detail)` says "push", "polling" or "connecting", and why.
 */
export class LiveFeed {
  constructor({ symbols, ticksMs = 250, bars = false, apiKey = null, onMessage, onMode }) {
    this.symbols = symbols;
    this.ticksMs = ticksMs;
    this.bars = bars;
    this.apiKey = apiKey;
    this.onMessage = onMessage;
    this.onMode = onMode || (() => {});
    this.socket = null;
    this.polling = null;
    this.pollTimer = null;
    this.retryTimer = null;
    this.quietTimer = null;
    this.retries = 0;
    this.lastSeen = new Map(); // symbol -> the polled tick's identity, to pass on changes only
    this.stopped = false;
  }

  async start() {
    this.onMode("connecting", "");
    if (await streamExists()) this.connect();
    else this.poll("the API has no stream: polling latest ticks every second");
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.quietTimer);
    this.stopPolling();
    if (this.socket) this.socket.close(1000);
  }

  /** Follow other symbols: the socket's subscription moves, or the poll asks for them. */
  setSymbols(symbols) {
    const previous = this.symbols;
    this.symbols = symbols;
    this.lastSeen.clear();
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      if (Array.isArray(previous)) {
        const gone = previous.filter((symbol) => !symbols.includes(symbol));
        if (gone.length) this.send({ action: "unsubscribe", symbols: gone });
      }
      this.subscribe();
    }
  }

  // --- push ---------------------------------------------------------------------------------

  connect() {
    if (this.stopped) return;
    let opened = false;
    const socket = new WebSocket(streamUrl(this.apiKey));
    this.socket = socket;
    socket.onopen = () => {
      opened = true;
      this.retries = 0;
      this.stopPolling();
      this.subscribe();
      this.onMode("push", `stream, ticks every ${this.ticksMs} ms at most`);
      this.heard();
    };
    socket.onmessage = (event) => {
      this.heard();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // the protocol sends JSON text only; anything else is not ours to act on
      }
      if (message.type === "snapshot" || message.type === "changes") {
        for (const tick of message.ticks || []) this.onMessage({ ...tick, type: "tick" });
        for (const bar of message.bars || []) this.onMessage({ ...bar, type: "bar" });
      } else {
        this.onMessage(message);
      }
    };
    socket.onclose = (event) => {
      clearTimeout(this.quietTimer);
      if (this.stopped || socket !== this.socket) return;
      this.socket = null;
      if (!opened) {
        this.poll("the stream did not open: polling latest ticks every second");
        this.retry(RETRY_MS[RETRY_MS.length - 1]);
      } else if (event.code === 4000) {
        this.retry(0); // a fresh snapshot catches up at once
      } else {
        this.poll(closeReason(event));
        this.retry(RETRY_MS[Math.min(this.retries++, RETRY_MS.length - 1)]);
      }
    };
  }

  subscribe() {
    if (this.symbols.length === 0) return; // nothing to follow yet
    this.send({
      action: "subscribe",
      symbols: this.symbols,
      ticks_ms: this.ticksMs,
      bars: this.bars,
      batch: true, // one frame per ticks_ms, not one per symbol
    });
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  heard() {
    clearTimeout(this.quietTimer);
    this.quietTimer = setTimeout(() => this.socket && this.socket.close(4001), QUIET_MS);
  }

  retry(delay) {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // --- polling ------------------------------------------------------------------------------

  poll(why) {
    this.onMode("polling", why);
    if (this.polling) return;
    const loop = {}; // this loop's identity: a newer loop, or push, ends it
    this.polling = loop;
    const once = async () => {
      try {
        await this.pollOnce();
      } catch (error) {
        this.onMessage({ type: "error", message: `latest ticks: ${error.message}` });
      }
      if (!this.stopped && this.polling === loop) this.pollTimer = setTimeout(once, POLL_MS);
    };
    once();
  }

  stopPolling() {
    this.polling = null;
    clearTimeout(this.pollTimer);
  }

  async pollOnce() {
    if (this.symbols.length === 0) return;
    const query = Array.isArray(this.symbols)
      ? `?symbols=${encodeURIComponent(this.symbols.join(","))}`
      : ""; // the universe: every instrument with a tick
    const answer = await fetch(`/api/v1/websocket/latest-ticks${query}`);
    if (!answer.ok) throw new Error(`${answer.status} ${(await answer.json()).detail}`);
    for (const tick of (await answer.json()).ticks) {
      const identity = `${tick.ts}|${tick.received_at}`;
      if (this.lastSeen.get(tick.symbol) === identity) continue;
      this.lastSeen.set(tick.symbol, identity);
      this.onMessage({ ...tick, type: "tick" });
    }
  }
}
