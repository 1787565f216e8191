// The side panel: a car park's details with a chart of its last day and one of its
// next three hours, and the answers of a nearby search. Text is set with textContent
// only: names and addresses come from operators; the charts are SVG elements made one
// by one, never markup.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type {
  ForecastPoint,
  ForecastResponse,
  NearbyCarPark,
  OccupancyBucket,
} from "./gen/citypark/v1/availability_pb.js";
import {
  type CarPark,
  type CarParkAvailability,
  CarParkKind,
  CarParkStatus,
  SpaceCategory,
  Weekday,
} from "./gen/citypark/v1/types_pb.js";
import { LOOKS, dotState } from "./state.js";

const KINDS: Record<number, string> = {
  [CarParkKind.GARAGE]: "Garage",
  [CarParkKind.SURFACE_LOT]: "Surface lot",
  [CarParkKind.ON_STREET]: "On-street",
  [CarParkKind.SHARED_PRIVATE]: "Shared private space",
  [CarParkKind.UNDERGROUND_GARAGE]: "Underground garage",
};
const CATEGORIES: Record<number, string> = {
  [SpaceCategory.STANDARD]: "Standard",
  [SpaceCategory.EV_CHARGING]: "EV charging",
  [SpaceCategory.ACCESSIBLE]: "Accessible",
  [SpaceCategory.MOTORCYCLE]: "Motorcycle",
};
const STATUSES: Record<number, string> = {
  [CarParkStatus.OPEN]: "Open",
  [CarParkStatus.CLOSED]: "Closed",
  [CarParkStatus.STALE]: "Stale: numbers too old",
  [CarParkStatus.NO_DATA]: "No data yet",
};
const DAYS: Record<number, string> = {
  [Weekday.MONDAY]: "Mon",
  [Weekday.TUESDAY]: "Tue",
  [Weekday.WEDNESDAY]: "Wed",
  [Weekday.THURSDAY]: "Thu",
  [Weekday.FRIDAY]: "Fri",
  [Weekday.SATURDAY]: "Sat",
  [Weekday.SUNDAY]: "Sun",
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text?: string,
  className?: string,
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function hhmm(minute: number): string {
  const h = Math.floor(minute / 60);
  const m = minute % 60;
  return `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}`;
}

function money(minor: bigint, currency: string): string {
  return `${(Number(minor) / 100).toFixed(2)} ${currency}`;
}

function rows(table: HTMLTableElement, pairs: [string, string][]) {
  for (const [k, v] of pairs) {
    const tr = table.insertRow();
    tr.append(el("th", k), el("td", v));
  }
}

/** Shows a car park; `history` and `forecast` are its charts (see `historyChart` and
 * `forecastChart`), the same elements every time the car park is shown again, so that
 * they outlive live updates. */
export function showCarPark(
  panel: HTMLElement,
  carPark: CarPark,
  availability: CarParkAvailability | undefined,
  history?: HTMLElement,
  forecast?: HTMLElement,
) {
  panel.replaceChildren();
  panel.append(el("h2", carPark.name || carPark.id));
  const state = availability ? dotState(availability) : "loading";
  const badge = el("span", LOOKS[state].label, `badge badge-${state}`);
  panel.append(badge);

  const facts = el("table", undefined, "facts");
  rows(facts, [
    ["Id", carPark.id],
    ["Address", carPark.address || "—"],
    ["Kind", KINDS[carPark.kind] ?? "—"],
    ["Operator", carPark.operatorId],
    ["Region", carPark.region],
    ["Location", `${carPark.location?.latitude.toFixed(5)}, ${carPark.location?.longitude.toFixed(5)}`],
  ]);
  if (carPark.closed) rows(facts, [["Operator says", "closed"]]);
  if (carPark.covered) rows(facts, [["Covered", "yes"]]);
  if (carPark.maxHeightCm > 0) rows(facts, [["Max height", `${carPark.maxHeightCm} cm`]]);
  const t = carPark.tariff;
  if (t && t.currency) {
    const parts = [`${money(t.hourlyRateMinor, t.currency)} / hour`];
    if (t.dailyCapMinor > 0n) parts.push(`cap ${money(t.dailyCapMinor, t.currency)} / day`);
    if (t.freeMinutes > 0) parts.push(`first ${t.freeMinutes} min free`);
    rows(facts, [["Tariff", parts.join(", ")]]);
  }
  rows(facts, [
    [
      "Opening hours",
      carPark.openingHours.length === 0
        ? "always open"
        : carPark.openingHours
            .map((p) => `${DAYS[p.day] ?? "?"} ${hhmm(p.openMinute)}–${hhmm(p.closeMinute)}`)
            .join(", "),
    ],
  ]);
  panel.append(facts);

  panel.append(el("h3", "Spaces now"));
  if (!availability) {
    panel.append(el("p", "Waiting for the live feed…"));
    if (history) panel.append(history);
    if (forecast) panel.append(forecast);
    return;
  }
  const live = el("table", undefined, "facts");
  rows(live, [["Status", STATUSES[availability.status] ?? "—"]]);
  if (availability.observedAt) {
    rows(live, [["Observed", timestampDate(availability.observedAt).toLocaleString()]]);
  }
  if (availability.dataAgeSeconds !== undefined) {
    rows(live, [["Data age", `${availability.dataAgeSeconds} s`]]);
  }
  panel.append(live);
  const spaces = el("table", undefined, "spaces");
  const head = spaces.createTHead().insertRow();
  for (const h of ["Category", "Available", "Free", "Held", "Capacity"]) head.append(el("th", h));
  const body = spaces.createTBody();
  for (const c of availability.categories) {
    const tr = body.insertRow();
    tr.append(
      el("td", CATEGORIES[c.category] ?? "—"),
      el("td", String(c.available)),
      el("td", String(c.free)),
      el("td", String(c.held)),
      el("td", String(c.capacity)),
    );
  }
  panel.append(spaces);
  if (history) panel.append(history);
  if (forecast) panel.append(forecast);
}

export function showNearby(
  panel: HTMLElement,
  at: { lat: number; lng: number },
  results: NearbyCarPark[],
  pick: (id: string) => void,
) {
  panel.replaceChildren();
  panel.append(el("h2", "Nearest with free spaces"));
  panel.append(el("p", `From ${at.lat.toFixed(5)}, ${at.lng.toFixed(5)}`, "muted"));
  if (results.length === 0) {
    panel.append(el("p", "No car park with a free space within the radius."));
    return;
  }
  const list = el("ol", undefined, "nearby");
  for (const r of results) {
    const li = el("li");
    const name = el("button", r.name || r.carParkId, "link");
    name.type = "button";
    name.dataset.carPark = r.carParkId;
    name.addEventListener("click", () => pick(r.carParkId));
    const price =
      r.priceMinor !== undefined ? ` · ${money(r.priceMinor, r.currency)} for the stay` : "";
    li.append(
      name,
      el("span", ` ${Math.round(r.distanceM)} m · ${r.available} of ${r.capacity} available${price}`),
    );
    list.append(li);
  }
  panel.append(list);
}

// --- the last day's occupancy ---------------------------------------------------------

/** What the chart shows: GetOccupancyHistory over this span, in steps of this. */
export const HISTORY_SPAN_MS = 24 * 3600_000;
export const HISTORY_STEP_MS = 30 * 60_000;

const SVG_NS = "http://www.w3.org/2000/svg";

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number>,
  text?: string,
): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) e.setAttribute(name, String(value));
  if (text !== undefined) e.textContent = text;
  return e;
}

function clock(at: Date): string {
  return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const HISTORY_CAPTION = "Free spaces, last 24 h";

/** A chart of class `kind` under `caption`, loading `what` until it is settled. Its
 * `data-state` is "loading", then "chart", "empty" or "error" (see `settle`). */
function loadingChart(kind: string, caption: string, what: string): HTMLElement {
  const figure = el("figure", undefined, kind);
  figure.dataset.state = "loading";
  figure.setAttribute("aria-busy", "true");
  figure.append(el("figcaption", caption), el("p", `Loading ${what}…`, "muted"));
  return figure;
}

/** A car park's history chart, loading until `showHistory` or `historyFailed` fills
 * it. */
export function historyChart(): HTMLElement {
  return loadingChart("history-chart", HISTORY_CAPTION, "history");
}

/** Ends a chart's loading: its state, and its caption above `content`. */
function settle(
  figure: HTMLElement,
  caption: string,
  state: "chart" | "empty" | "error",
  ...content: Node[]
) {
  figure.dataset.state = state;
  figure.removeAttribute("aria-busy");
  figure.replaceChildren(el("figcaption", caption), ...content);
}

/** The history could not be read: says so, and only in the chart. */
export function historyFailed(figure: HTMLElement, why: string) {
  const p = el("p", "History unavailable", "muted");
  p.title = why;
  settle(figure, HISTORY_CAPTION, "error", p);
}

// The drawing, in the SVG's own units (it is scaled to the panel's width).
const W = 312;
const H = 124;
const LEFT = 30;
const RIGHT = 8;
const TOP = 8;
const BOTTOM = 18;

/** A chart's SVG titled `label`, and its axes: 0 and `top` of the scale (placed by
 * `y`), to which the caller adds its time ticks before appending them. */
function frame(label: string, top: number, y: (n: number) => number) {
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  chart.append(svg("title", {}, label));
  const axes = svg("g", { class: "axes" });
  axes.append(
    svg("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(top), y2: y(top) }),
    svg("line", { class: "axis", x1: LEFT, x2: W - RIGHT, y1: y(0), y2: y(0) }),
    svg("text", { x: LEFT - 4, y: y(top) + 3.5, "text-anchor": "end" }, String(top)),
    svg("text", { x: LEFT - 4, y: y(0) + 3.5, "text-anchor": "end" }, "0"),
  );
  return { chart, axes };
}

/** Draws `buckets` (GetOccupancyHistory's, oldest first, `HISTORY_STEP_MS` apart)
 * over [from, to): a band from the fewest to the most free spaces of each step, a
 * line through the free spaces at its end, lighter and dashed where a step only
 * carries the one before forward. */
export function showHistory(
  figure: HTMLElement,
  buckets: OccupancyBucket[],
  from: Date,
  to: Date,
) {
  if (buckets.length === 0) {
    settle(figure, HISTORY_CAPTION, "empty", el("p", "No history yet", "muted"));
    return;
  }
  const lo = Math.min(...buckets.map((b) => b.minFree));
  const hi = Math.max(...buckets.map((b) => b.maxFree));
  const capacity = Math.max(...buckets.map((b) => b.capacity));
  const top = Math.max(1, capacity, hi);
  const t0 = from.getTime();
  const span = Math.max(1, to.getTime() - t0);
  const plotW = W - LEFT - RIGHT;
  const plotH = H - TOP - BOTTOM;
  const round = (n: number) => Math.round(n * 10) / 10;
  const x = (ms: number) => round(LEFT + (Math.min(Math.max(ms - t0, 0), span) / span) * plotW);
  const y = (free: number) => round(TOP + plotH - (Math.min(free, top) / top) * plotH);

  const label = `Free spaces over the last 24 hours, between ${lo} and ${hi} of ${capacity}`;
  // The frame, and a tick every 6 hours.
  const { chart, axes } = frame(label, top, y);
  for (let h = 0; h <= 24; h += 6) {
    const at = x(t0 + (h / 24) * span);
    axes.append(svg("line", { class: "grid", x1: at, x2: at, y1: y(top), y2: y(0) + 3 }));
  }
  const baseline = H - 4;
  axes.append(
    svg("text", { x: LEFT, y: baseline, "text-anchor": "start" }, clock(from)),
    svg("text", { x: x(t0 + span / 2), y: baseline, "text-anchor": "middle" }, clock(new Date(t0 + span / 2))),
    svg("text", { x: W - RIGHT, y: baseline, "text-anchor": "end" }, "now"),
  );
  chart.append(axes);

  // One band per step, with its numbers on hover.
  const bands = svg("g", { class: "bands" });
  const points: { x: number; y: number; observed: boolean }[] = [];
  let carried = 0;
  for (const b of buckets) {
    const start = b.start ? timestampDate(b.start).getTime() : t0;
    const x0 = x(start);
    const x1 = x(start + HISTORY_STEP_MS);
    if (!b.observed) carried++;
    if (x1 <= x0) continue;
    const yTop = y(b.maxFree);
    const band = svg("rect", {
      class: b.observed ? "band" : "band carried",
      x: x0,
      y: yTop,
      width: round(x1 - x0),
      height: Math.max(1, round(y(b.minFree) - yTop)),
    });
    const status = b.status === CarParkStatus.OPEN ? "" : ` (${STATUSES[b.status] ?? "status unknown"})`;
    band.append(
      svg(
        "title",
        {},
        `${clock(new Date(start))}–${clock(new Date(start + HISTORY_STEP_MS))}: ` +
          (b.minFree === b.maxFree ? `${b.minFree}` : `${b.minFree}–${b.maxFree}`) +
          ` free, ${b.lastFree} at the end, of ${b.capacity}${status}` +
          (b.observed ? "" : "; unchanged, carried forward"),
      ),
    );
    bands.append(band);
    points.push({ x: round((x0 + x1) / 2), y: y(b.lastFree), observed: b.observed });
  }
  chart.append(bands);

  // The line through the free spaces at each step's end, a polyline per run of
  // segments alike: a segment into a carried-forward step is dashed.
  const line = svg("g", { class: "lines" });
  let run: string[] = [];
  let runCarried = false;
  const flush = () => {
    if (run.length > 1) {
      line.append(
        svg("polyline", { class: runCarried ? "line carried" : "line", points: run.join(" ") }),
      );
    }
  };
  for (let i = 1; i < points.length; i++) {
    const isCarried = !points[i].observed;
    if (run.length === 0 || isCarried !== runCarried) {
      flush();
      run = [`${points[i - 1].x},${points[i - 1].y}`];
      runCarried = isCarried;
    }
    run.push(`${points[i].x},${points[i].y}`);
  }
  flush();
  const last = points.at(-1);
  if (last) line.append(svg("circle", { class: "last", cx: last.x, cy: last.y, r: 2.5 }));
  chart.append(line);

  const summary = el(
    "p",
    `Fewest free ${lo}, most ${hi}, of ${capacity}` +
      (carried > 0 ? ". Dashed: unchanged, carried forward." : "."),
    "muted history-summary",
  );
  settle(figure, HISTORY_CAPTION, "chart", chart, summary);
}

// --- the next three hours -------------------------------------------------------------

/** What the forecast shows: Forecast at FORECAST_STEPS + 1 times FORECAST_STEP_MS
 * apart, over the next FORECAST_HOURS. */
export const FORECAST_HOURS = 3;
export const FORECAST_STEP_MS = 15 * 60_000;
export const FORECAST_STEPS = (FORECAST_HOURS * 3600_000) / FORECAST_STEP_MS;

const FORECAST_CAPTION = `Next ${FORECAST_HOURS} hours`;

/** A car park's forecast chart, loading until `showForecast` or `forecastFailed`
 * fills it. */
export function forecastChart(): HTMLElement {
  return loadingChart("forecast-chart", FORECAST_CAPTION, "forecast");
}

/** No forecast, only in the chart: "empty" when the car park has nothing to forecast
 * from (FAILED_PRECONDITION: no numbers yet, or no standard spaces), else "error". */
export function forecastFailed(figure: HTMLElement, nothingYet: boolean, why: string) {
  const p = el("p", nothingYet ? "No forecast yet" : "Forecast unavailable", "muted");
  p.title = why;
  settle(figure, FORECAST_CAPTION, nothingYet ? "empty" : "error", p);
}

/** A probability as a percentage, never "0%" or "100%": a forecast is never sure. */
function chance(probability: number): string {
  if (probability > 0.99) return ">99%";
  if (probability < 0.01) return "<1%";
  return `${Math.round(probability * 100)}%`;
}

/** A point's spaces and their 80% interval, e.g. "12 spaces (6–20)". */
function spacesAround(p: ForecastPoint): string {
  const n = `${p.available} space${p.available === 1 ? "" : "s"}`;
  return p.p10 === p.p90 ? n : `${n} (${p.p10}–${p.p90})`;
}

/** What the forecast has learned from, by `days_learned`. */
function learned(days: number): string {
  if (days === 0) return "From its latest numbers only: no day learned yet.";
  // Under a week, some weekdays are known only from the others.
  return (
    `Learned from ${days} day${days === 1 ? "" : "s"} of its numbers` +
    (days < 7 ? ", some weekdays from the others." : ".")
  );
}

/** Draws Forecast's `answer` (its times in order, the first about now): a band from
 * p10 to p90, a line through the available spaces with a dot per time, scaled to
 * `capacity` when known; below it the spaces in 1 and in 3 hours. */
export function showForecast(figure: HTMLElement, answer: ForecastResponse, capacity?: number) {
  const points = answer.forecasts.flatMap((p) =>
    p.time ? [{ at: timestampDate(p.time).getTime(), p }] : [],
  );
  const first = points[0];
  const last = points.at(-1);
  if (!first || !last) {
    settle(figure, FORECAST_CAPTION, "empty", el("p", "No forecast yet", "muted"));
    return;
  }
  const lo = Math.min(...points.map((q) => q.p.available));
  const hi = Math.max(...points.map((q) => q.p.available));
  const top = Math.max(1, capacity ?? 0, ...points.map((q) => q.p.p90));
  const t0 = first.at;
  const span = Math.max(1, last.at - t0);
  const plotW = W - LEFT - RIGHT;
  const plotH = H - TOP - BOTTOM;
  const round = (n: number) => Math.round(n * 10) / 10;
  const x = (ms: number) => round(LEFT + (Math.min(Math.max(ms - t0, 0), span) / span) * plotW);
  const y = (n: number) => round(TOP + plotH - (Math.min(Math.max(n, 0), top) / top) * plotH);

  const label =
    `Available spaces over the next ${FORECAST_HOURS} hours, forecast between ${lo} and ${hi}` +
    (capacity ? ` of ${capacity}` : "");
  // The history's frame, and a tick every hour.
  const { chart, axes } = frame(label, top, y);
  const baseline = H - 4;
  for (let h = 0; h <= FORECAST_HOURS; h++) {
    const at = x(t0 + (h / FORECAST_HOURS) * span);
    const anchor = h === 0 ? "start" : h === FORECAST_HOURS ? "end" : "middle";
    axes.append(
      svg("line", { class: "grid", x1: at, x2: at, y1: y(top), y2: y(0) + 3 }),
      svg("text", { x: at, y: baseline, "text-anchor": anchor }, h === 0 ? "now" : `+${h} h`),
    );
  }
  chart.append(axes);

  // The 80% interval: up along p90, back along p10.
  const band = svg("polygon", {
    class: "band",
    points: [
      ...points.map((q) => `${x(q.at)},${y(q.p.p90)}`),
      ...[...points].reverse().map((q) => `${x(q.at)},${y(q.p.p10)}`),
    ].join(" "),
  });
  band.append(svg("title", {}, "8 times in 10 the spaces will be in this band"));
  chart.append(band);

  const line = svg("g", { class: "lines" });
  line.append(
    svg("polyline", {
      class: "line",
      points: points.map((q) => `${x(q.at)},${y(q.p.available)}`).join(" "),
    }),
  );
  for (const q of points) {
    const dot = svg("circle", { class: "point", cx: x(q.at), cy: y(q.p.available), r: 2 });
    dot.append(
      svg(
        "title",
        {},
        `${clock(new Date(q.at))}: ${spacesAround(q.p)}, ${chance(q.p.probability)} chance of a space`,
      ),
    );
    line.append(dot);
  }
  chart.append(line);

  // The first point at or past `hours` from the first (the last if none is).
  const inHours = (hours: number) =>
    (points.find((q) => q.at - t0 >= hours * 3600_000) ?? last).p;
  const soon = inHours(1);
  const later = inHours(FORECAST_HOURS);
  const summary = el(
    "p",
    `In 1 h: ${spacesAround(soon)}, ${chance(soon.probability)} chance of a space. ` +
      `In ${FORECAST_HOURS} h: ${spacesAround(later)}, ${chance(later.probability)} chance.`,
    "forecast-summary",
  );
  const note = el("p", learned(answer.daysLearned), "muted forecast-learned");
  settle(figure, FORECAST_CAPTION, "chart", chart, summary, note);
}
