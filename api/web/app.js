// The page: feed state and subscriptions, the latest tick of every symbol updating in place,
// and a candle chart of one symbol. Live data comes through live.js (push or polling).
import { LiveFeed } from "./live.js";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
// The stream needs the key where TICKVAULT_API_KEY is set; a browser socket carries it in the URL.
const apiKey = params.get("api_key");
const STATUS_MS = 2000;
const SUBSCRIPTIONS_MS = 30000;
const TAIL_MS = 10000; // while polling, the forming candle's volume comes from the bars route
const SIGNALS_MS = 5000; // the chart's signal markers, from the signals route

// --- theme ----------------------------------------------------------------------------------

const THEME_KEY = "tickvault.theme";
const prefersDark = matchMedia("(prefers-color-scheme: dark)");

function theme() {
  return localStorage.getItem(THEME_KEY) || (prefersDark.matches ? "dark" : "light");
}

function colors() {
  const style = getComputedStyle(document.documentElement);
  const read = (name) => style.getPropertyValue(name).trim();
  return {
    bg: read("--panel"),
    text: read("--text"),
    grid: read("--grid"),
    up: read("--up"),
    down: read("--down"),
    upSoft: read("--up-soft"),
    downSoft: read("--down-soft"),
  };
}

function applyTheme() {
  const name = theme();
  document.documentElement.dataset.theme = name;
  $("#theme").textContent = name === "dark" ? "light" : "dark";
  if (chart) chart.setColors(colors());
}

$("#theme").addEventListener("click", () => {
  localStorage.setItem(THEME_KEY, theme() === "dark" ? "light" : "dark");
  applyTheme();
});
prefersDark.addEventListener("change", applyTheme);

// --- formatting -----------------------------------------------------------------------------

const price = new Intl.NumberFormat("en-IN", {
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
});
const count = new Intl.NumberFormat("en-IN");
const clock = new Intl.DateTimeFormat("en-GB", {
  timeZone: "Asia/Kolkata",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const number = (value, format) =>
  value === null || value === undefined ? "" : format.format(value);
const change = (tick) => (tick.cp ? ((tick.ltp - tick.cp) / tick.cp) * 100 : null);

function pill(element, text, state) {
  element.textContent = text;
  element.dataset.state = state;
}

// --- the tick table -------------------------------------------------------------------------

const rows = new Map(); // symbol -> {row, cells, ltp}
const COLUMNS = ["symbol", "ltp", "chg", "bid", "ask", "ltq", "volume", "time"];

function rowOf(symbol) {
  let entry = rows.get(symbol);
  if (entry) return entry;
  const row = document.createElement("tr");
  row.dataset.symbol = symbol;
  const cells = {};
  for (const column of COLUMNS) {
    const cell = row.insertCell();
    cell.className = column === "symbol" ? "sym" : "num";
    cells[column] = cell;
  }
  cells.symbol.textContent = symbol;
  row.addEventListener("click", () => pick(symbol));
  const body = $("#ticks tbody");
  const after = [...rows.keys()].filter((other) => other.localeCompare(symbol) > 0).sort()[0];
  body.insertBefore(row, after ? rows.get(after).row : null);
  entry = { row, cells, ltp: null };
  rows.set(symbol, entry);
  filterRow(entry);
  $("#tick-count").textContent = `${rows.size} symbols`;
  return entry;
}

function showTick(tick) {
  const entry = rowOf(tick.symbol);
  const { cells, row } = entry;
  const pct = change(tick);
  cells.ltp.textContent = number(tick.ltp, price);
  cells.chg.textContent = pct === null ? "" : `${pct >= 0 ? "+" : ""}${pct.toFixed(2)}`;
  cells.chg.dataset.sign = pct === null ? "" : pct >= 0 ? "up" : "down";
  cells.bid.textContent = number(tick.bid_price, price);
  cells.ask.textContent = number(tick.ask_price, price);
  cells.ltq.textContent = number(tick.ltq, count);
  cells.volume.textContent = number(tick.vtt, count);
  cells.time.textContent = clock.format(new Date(tick.ts));
  if (entry.ltp !== null && tick.ltp !== entry.ltp) {
    row.classList.remove("flash-up", "flash-down");
    void row.offsetWidth; // restart the animation
    row.classList.add(tick.ltp > entry.ltp ? "flash-up" : "flash-down");
  }
  entry.ltp = tick.ltp;
  if (tick.symbol === selected.symbol) showLast(tick);
}

function filterRow(entry) {
  const wanted = $("#filter").value.trim().toUpperCase();
  entry.row.hidden = wanted !== "" && !entry.row.dataset.symbol.toUpperCase().includes(wanted);
}

$("#filter").addEventListener("input", () => rows.forEach(filterRow));

// --- feed state and subscriptions -----------------------------------------------------------

async function getJson(path) {
  const answer = await fetch(path);
  const body = await answer.json();
  if (!answer.ok)
    throw new Error(typeof body.detail === "string" ? body.detail : `${answer.status}`);
  return body;
}

async function refreshStatus() {
  try {
    const status = await getJson("/api/v1/websocket/status");
    const state = status.feed.state || (status.websocket_connected ? "connected" : "disconnected");
    pill($("#feed"), `feed ${state} · ${status.feed.source}`, state === "connected" ? "ok" : "bad");
    const segments = Object.entries(status.pipeline.market_status || {});
    const open = segments.filter(([, value]) => value.includes("OPEN") && !value.includes("CLOSE"));
    const title = segments.map(([segment, value]) => `${segment}: ${value}`).join("\n");
    if (Date.now() - lastHeartbeat > HEARTBEAT_OWNS_MS) {
      pill($("#market"), `market ${open.length ? "open" : "closed"}`, open.length ? "ok" : "idle");
    }
    $("#market").title = title || "no session status from the feed yet";
    const subs = status.subscriptions;
    $("#subscriptions").textContent =
      `${subs.subscribed_count}/${subs.total_symbols} subscribed` +
      (subs.failed_count ? `, ${subs.failed_count} failed` : "") +
      (subs.pending_count ? `, ${subs.pending_count} pending` : "");
  } catch (error) {
    pill($("#feed"), `feed: ${error.message}`, "bad");
  }
}

async function refreshSubscriptions() {
  try {
    const list = $("#symbols");
    list.replaceChildren(
      ...(await getJson("/api/v1/websocket/subscriptions"))
        .map((subscription) => subscription.symbol)
        .sort()
        .map((symbol) => new Option(symbol, symbol)),
    );
  } catch {
    // the status pill already says what is wrong with the API
  }
}

// While the stream's heartbeats arrive (every 5 s) they say whether the market is open; the
// status's segments say it otherwise.
const HEARTBEAT_OWNS_MS = 12000;
let lastHeartbeat = -Infinity;

function showHeartbeat(message) {
  lastHeartbeat = Date.now();
  pill($("#market"), `market ${message.market}`, message.market === "open" ? "ok" : "idle");
  if (message.feed !== "connected") pill($("#feed"), `feed ${message.feed}`, "bad");
}

// --- the chart ------------------------------------------------------------------------------

let chart = null;
let chartModule = null;
const selected = { symbol: null, interval: null };
// The latest pick, which a load in flight is making true: an interval picked meanwhile is
// for the symbol being loaded, not for the one still shown.
const wanted = { symbol: null, interval: null };

function note(text) {
  $("#chart-note").textContent = text;
}

function showLast(tick) {
  const pct = change(tick);
  $("#last").textContent =
    `${number(tick.ltp, price)}${pct === null ? "" : ` ${pct >= 0 ? "+" : ""}${pct.toFixed(2)}%`}`;
  $("#last").dataset.sign = pct === null ? "" : pct >= 0 ? "up" : "down";
}

/** The chart of `symbol` in `interval`, and the live channel moved to it; false, with the
 * chart left as it was and the reason shown, when the bars route refuses (an unknown symbol);
 * null when a later pick overtook this one. */
let loads = 0; // loads begun: only the newest may clear or replace the note

async function load(symbol, interval) {
  const mine = ++loads;
  if (chart) {
    note("loading …");
    try {
      const candles = await chart.show(symbol, interval);
      if (candles === null) return null;
      if (mine === loads) note(candles ? "" : `no ${interval} bars of ${symbol} yet`);
    } catch (error) {
      note(`${symbol}: ${error.message}`);
      return false;
    }
  }
  if (symbol !== selected.symbol) {
    $("#last").textContent = "";
    chartFeed.setSymbols([symbol]);
  }
  selected.symbol = symbol;
  selected.interval = interval;
  // Not under someone typing: a load that ends meanwhile must not replace what they typed.
  if (document.activeElement !== $("#symbol")) $("#symbol").value = symbol;
  history.replaceState(null, "", `${location.search}#${encodeURIComponent(symbol)}/${interval}`);
  for (const button of document.querySelectorAll("#intervals button")) {
    button.setAttribute("aria-pressed", String(button.value === interval));
  }
  return true;
}

async function pick(symbol, interval = wanted.interval || selected.interval) {
  wanted.symbol = symbol;
  wanted.interval = interval;
  if ((await load(symbol, interval)) === false && wanted.symbol === symbol) {
    $("#symbol").value = selected.symbol || "";
    Object.assign(wanted, selected); // the shown chart stays what later picks start from
  }
}

$("#symbol").addEventListener("change", (event) => {
  const symbol = event.target.value.trim();
  if (symbol) pick(symbol);
});

// --- live -----------------------------------------------------------------------------------

function liveMode(channel) {
  return (mode, detail) => {
    modes[channel] = { mode, detail };
    const all = Object.values(modes);
    const shown =
      all.find((each) => each.mode === "polling") ||
      all.find((each) => each.mode === "connecting") ||
      all[0];
    pill(
      $("#live-mode"),
      shown.mode === "push"
        ? "live: push"
        : shown.mode === "polling"
          ? "live: polling 1 s"
          : "connecting …",
      shown.mode === "push" ? "ok" : "idle",
    );
    $("#live-mode").title = all
      .map((each) => each.detail)
      .filter(Boolean)
      .join("\n");
  };
}

const modes = {};
const tableFeed = new LiveFeed({
  symbols: "universe",
  ticksMs: 500,
  apiKey,
  onMode: liveMode("table"),
  onMessage(message) {
    if (message.type === "tick") showTick(message);
    else if (message.type === "heartbeat") showHeartbeat(message);
    else if (message.type === "error") note(message.message);
  },
});
const chartFeed = new LiveFeed({
  symbols: [],
  ticksMs: 250,
  bars: true,
  apiKey,
  onMode: liveMode("chart"),
  onMessage(message) {
    if (!chart) return;
    if (message.type === "bar") chart.applyBar(message);
    else if (message.type === "tick" && modes.chart.mode === "polling") chart.applyTick(message);
    else if (message.type === "error") note(message.message);
  },
});

async function start() {
  applyTheme();
  const [symbol, interval] = decodeURIComponent(location.hash.slice(1)).split("/");
  try {
    chartModule = await import("./chart.js");
    chart = new chartModule.CandleChart($("#chart"), colors());
  } catch {
    note("the chart library is missing: run `make setup` (npm installs it), then reload");
  }
  const names = chartModule ? chartModule.INTERVALS.map((each) => each.name) : [];
  $("#intervals").replaceChildren(
    ...names.map((name) => {
      const button = document.createElement("button");
      button.type = "button";
      button.value = name;
      button.textContent = name;
      button.addEventListener("click", () => pick(wanted.symbol || selected.symbol, name));
      return button;
    }),
  );
  refreshStatus();
  setInterval(refreshStatus, STATUS_MS);
  await refreshSubscriptions();
  setInterval(refreshSubscriptions, SUBSCRIPTIONS_MS);
  const known = [...document.querySelectorAll("#symbols option")].map((option) => option.value);
  // The index first: what a trader looks at before any one stock.
  const first = known.includes("NIFTY") || !known.length ? "NIFTY" : known[0];
  const chosen = names.includes(interval) ? interval : "1m";
  // The default only when the address's symbol was refused: a pick made meanwhile (null) wins.
  if ((symbol ? await load(symbol, chosen) : false) === false) await load(first, chosen);
  tableFeed.start();
  chartFeed.start();
  setInterval(
    () => chart && modes.chart?.mode === "polling" && chart.refreshTail().catch(() => {}),
    TAIL_MS,
  );
  setInterval(() => chart && chart.refreshSignals().catch(() => {}), SIGNALS_MS);
}

// For the console and the browser tests: what the page holds.
window.tickvault = {
  get chart() {
    return chart;
  },
  selected,
};

start();
