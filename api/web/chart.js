// Candles with volume for one symbol in one interval: history from the bars route, then the
// stream's 1-minute bars (or, while polling, the ticks' prices) folded into the forming candle;
// the custom handlers' signals of the symbol as markers on their candles (the signals route).
import {
  CandlestickSeries,
  HistogramSeries,
  createChart,
  createSeriesMarkers,
} from "./vendor/lightweight-charts.standalone.production.mjs";

// The bars route's intervals (store/bars.py BAR_INTERVALS), each with the history the chart
// loads: within the route's widest window (31 days), less a day for a clock ahead of the API's.
export const INTERVALS = [
  { name: "1m", seconds: 60, days: 2 },
  { name: "3m", seconds: 180, days: 5 },
  { name: "5m", seconds: 300, days: 10 },
  { name: "10m", seconds: 600, days: 15 },
  { name: "15m", seconds: 900, days: 20 },
  { name: "30m", seconds: 1800, days: 30 },
  { name: "1h", seconds: 3600, days: 30 },
  { name: "1d", seconds: 86400, days: 30 },
];
const MINUTE = 60;
// The chart draws UTC clock times; times moved by India's offset read as IST on its axis.
const IST = 19800;
// The session grid's origins, as seconds into a UTC day: intraday bars from 09:15 IST, daily
// bars from midnight IST (docs/api.md, "Bars of any interval are aligned to the NSE session").
const INTRADAY_ORIGIN = 3 * 3600 + 45 * 60;
const DAY_ORIGIN = 18 * 3600 + 30 * 60;

const seconds = (iso) => Date.parse(iso) / 1000;

function bucketOf(time, interval) {
  const origin = interval.name === "1d" ? DAY_ORIGIN : INTRADAY_ORIGIN;
  const width = interval.seconds;
  return time - ((((time - origin) % width) + width) % width);
}

/** One candle from the 1-minute bars of its bucket, oldest first (as the SQL bars() does). */
function fold(minutes) {
  const ordered = [...minutes.entries()].sort((a, b) => a[0] - b[0]).map(([, bar]) => bar);
  return {
    open: ordered[0].open,
    high: Math.max(...ordered.map((bar) => bar.high)),
    low: Math.min(...ordered.map((bar) => bar.low)),
    close: ordered[ordered.length - 1].close,
    volume: ordered.reduce((sum, bar) => sum + (bar.volume || 0), 0),
  };
}

async function readBars(symbol, interval, start) {
  const from = new Date(start * 1000).toISOString();
  const query = `interval=${interval}&start=${encodeURIComponent(from)}`;
  const answer = await fetch(`/api/v1/bars/${encodeURIComponent(symbol)}?${query}`);
  const body = await answer.json();
  if (!answer.ok)
    throw new Error(typeof body.detail === "string" ? body.detail : answer.statusText);
  return body.bars;
}

// The signals route's most, newest first: the chart marks the newest this many.
const SIGNALS_LIMIT = 1000;

async function readSignals(symbol, start) {
  const from = new Date(start * 1000).toISOString();
  const query = `symbol=${encodeURIComponent(symbol)}&start=${encodeURIComponent(from)}`;
  const answer = await fetch(`/api/v1/signals?${query}&limit=${SIGNALS_LIMIT}`);
  const body = await answer.json();
  if (!answer.ok)
    throw new Error(typeof body.detail === "string" ? body.detail : answer.statusText);
  return body.signals;
}

export class CandleChart {
  constructor(container, colors) {
    this.chart = createChart(container, { autoSize: true });
    this.candles = this.chart.addSeries(CandlestickSeries, { priceLineVisible: true });
    this.volumes = this.chart.addSeries(HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "volume" },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    this.markers = createSeriesMarkers(this.candles, []);
    this.signals = []; // the shown symbol's signals since the chart's start, newest first
    this.chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.25 } });
    this.symbol = null;
    this.interval = INTERVALS[0];
    this.last = null; // the newest candle drawn, {time, open, high, low, close, volume}
    this.minutes = new Map(); // bucket -> (minute -> 1m bar), the newest two buckets only
    this.loading = 0; // a load's number: the answer of an older one is dropped
    this.setColors(colors);
  }

  setColors(colors) {
    this.colors = colors;
    if (this.signals) this.markSignals();
    this.chart.applyOptions({
      layout: { background: { color: colors.bg }, textColor: colors.text, fontSize: 12 },
      grid: { vertLines: { color: colors.grid }, horzLines: { color: colors.grid } },
      rightPriceScale: { borderColor: colors.grid },
      timeScale: { borderColor: colors.grid },
    });
    this.candles.applyOptions({
      upColor: colors.up,
      downColor: colors.down,
      borderUpColor: colors.up,
      borderDownColor: colors.down,
      wickUpColor: colors.up,
      wickDownColor: colors.down,
    });
    // Recoloured in place: the drawn candles (times already in IST) and their volumes.
    const candles = new Map(this.candles.data().map((candle) => [candle.time, candle]));
    this.volumes.setData(
      this.volumes.data().map(({ time, value }) => {
        const candle = candles.get(time);
        return {
          time,
          value,
          color: candle.close >= candle.open ? colors.upSoft : colors.downSoft,
        };
      }),
    );
  }

  /** History of `symbol` in `intervalName`; resolves with the number of candles drawn. */
  async show(symbol, intervalName) {
    const load = ++this.loading;
    const interval = INTERVALS.find((each) => each.name === intervalName);
    const start = bucketOf(Date.now() / 1000 - interval.days * 86400, interval);
    const bars = await readBars(symbol, interval.name, start);
    if (load !== this.loading) return null;
    this.symbol = symbol;
    this.interval = interval;
    this.minutes = new Map();
    const candles = bars.map((bar) => this.candleOf(seconds(bar.bucket), bar));
    this.candles.setData(candles.map((candle) => this.shown(candle)));
    this.volumes.setData(candles.map((candle) => this.volumeOf(candle)));
    this.chart
      .timeScale()
      .applyOptions({ timeVisible: interval.name !== "1d", secondsVisible: false });
    this.chart.timeScale().fitContent();
    this.last = candles.length ? candles[candles.length - 1] : null;
    this.start = start;
    this.signals = [];
    this.markSignals();
    // Markers are extra: the candles stand without them (a store without signals, say).
    await Promise.all([this.seedMinutes(load), this.refreshSignals().catch(() => {})]);
    return candles.length;
  }

  /** The symbol's signals again from the signals route, as markers on their candles. */
  async refreshSignals() {
    if (this.symbol === null) return;
    const load = this.loading;
    const signals = await readSignals(this.symbol, this.start);
    if (load !== this.loading) return;
    this.signals = signals;
    this.markSignals();
  }

  /** One marker per signal at its tick's candle: an arrow up below it for a buy, down above
   * it for a sell, a circle otherwise; its text the signal's name. */
  markSignals() {
    const markers = this.signals
      .map((signal) => {
        const time = bucketOf(seconds(signal.ts), this.interval) + IST;
        const sell = signal.side === "sell";
        return {
          time,
          position: sell ? "aboveBar" : "belowBar",
          shape: sell ? "arrowDown" : signal.side === "buy" ? "arrowUp" : "circle",
          color: sell ? this.colors.down : signal.side === "buy" ? this.colors.up : this.colors.text,
          text: signal.name,
          id: `${signal.ts} ${signal.handler} ${signal.name}`,
        };
      })
      .reverse(); // oldest first, as the library asks
    this.markers.setMarkers(markers);
  }

  /** The stored 1-minute bars of the newest candle, so that live minutes add to it exactly;
   * the live ones that came while they were read stay on top of them. */
  async seedMinutes(load) {
    if (this.interval.seconds === MINUTE || this.last === null) return;
    const bars = await readBars(this.symbol, "1m", this.last.time);
    if (load !== this.loading) return;
    const live = this.minutes;
    this.minutes = new Map();
    for (const bar of bars) this.addMinute(seconds(bar.bucket), bar);
    for (const minutes of live.values()) {
      for (const [minute, bar] of minutes) this.draw(this.addMinute(minute, bar));
    }
  }

  addMinute(minute, bar) {
    const bucket = bucketOf(minute, this.interval);
    if (!this.minutes.has(bucket)) {
      const newest = Math.max(-Infinity, ...this.minutes.keys());
      if (bucket < newest) return null; // older than the newest two: the stored bar stands
      this.minutes.set(bucket, new Map());
      for (const old of this.minutes.keys()) if (old < newest) this.minutes.delete(old);
    }
    this.minutes.get(bucket).set(minute, bar);
    return this.candleOf(bucket, fold(this.minutes.get(bucket)));
  }

  /** A 1-minute bar of the stream (forming or final). */
  applyBar(bar) {
    if (bar.symbol !== this.symbol || (bar.interval && bar.interval !== "1m")) return;
    const minute = seconds(bar.bucket);
    this.draw(
      this.interval.seconds === MINUTE ? this.candleOf(minute, bar) : this.addMinute(minute, bar),
    );
  }

  /** A tick's price while no bars are pushed: the forming candle follows it (volume does not). */
  applyTick(tick) {
    if (tick.symbol !== this.symbol) return;
    const bucket = bucketOf(seconds(tick.ts), this.interval);
    const last = this.last;
    if (last && bucket < last.time) return;
    const price = tick.ltp;
    this.draw(
      last && bucket === last.time
        ? {
            ...last,
            high: Math.max(last.high, price),
            low: Math.min(last.low, price),
            close: price,
          }
        : { time: bucket, open: price, high: price, low: price, close: price, volume: 0 },
    );
  }

  /** The newest candles again from the bars route: while polling, the volume comes from here. */
  async refreshTail() {
    if (this.last === null) return;
    const load = this.loading;
    const bars = await readBars(
      this.symbol,
      this.interval.name,
      this.last.time - this.interval.seconds,
    );
    if (load !== this.loading) return;
    for (const bar of bars) this.draw(this.candleOf(seconds(bar.bucket), bar));
    this.minutes = new Map(); // no bars are pushed while polling: only stored minutes count
    await this.seedMinutes(load);
  }

  candleOf(time, bar) {
    return {
      time,
      open: bar.open,
      high: bar.high,
      low: bar.low,
      close: bar.close,
      volume: bar.volume || 0,
    };
  }

  draw(candle) {
    if (candle === null) return;
    const historical = this.last !== null && candle.time < this.last.time;
    this.candles.update(this.shown(candle), historical);
    this.volumes.update(this.volumeOf(candle), historical);
    if (!historical) this.last = candle;
  }

  shown(candle) {
    const { volume, ...ohlc } = candle;
    return { ...ohlc, time: candle.time + IST };
  }

  volumeOf(candle) {
    const color = candle.close >= candle.open ? this.colors.upSoft : this.colors.downSoft;
    return { time: candle.time + IST, value: candle.volume, color };
  }
}
