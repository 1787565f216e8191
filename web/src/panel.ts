// The side panel: a car park's details with a chart of its last day, and the answers
// of a nearby search. Text is set with textContent only: names and addresses come
// from operators; the chart is SVG elements made one by one, never markup.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { NearbyCarPark, OccupancyBucket } from "./gen/citypark/v1/availability_pb.js";
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

/** Shows a car park; `history` is its chart (see `historyChart`), the same element
 * every time the car park is shown again, so that it outlives live updates. */
export function showCarPark(
  panel: HTMLElement,
  carPark: CarPark,
  availability: CarParkAvailability | undefined,
  history?: HTMLElement,
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

/** A car park's history chart, loading until `showHistory` or `historyFailed` fills
 * it. Its `data-state` is "loading", "chart", "empty" or "error". */
export function historyChart(): HTMLElement {
  const figure = el("figure", undefined, "history-chart");
  figure.dataset.state = "loading";
  figure.setAttribute("aria-busy", "true");
  figure.append(el("figcaption", "Free spaces, last 24 h"), el("p", "Loading history…", "muted"));
  return figure;
}

function settle(figure: HTMLElement, state: "chart" | "empty" | "error", ...content: Node[]) {
  figure.dataset.state = state;
  figure.removeAttribute("aria-busy");
  figure.replaceChildren(el("figcaption", "Free spaces, last 24 h"), ...content);
}

/** The history could not be read: says so, and only in the chart. */
export function historyFailed(figure: HTMLElement, why: string) {
  const p = el("p", "History unavailable", "muted");
  p.title = why;
  settle(figure, "error", p);
}

// The drawing, in the SVG's own units (it is scaled to the panel's width).
const W = 312;
const H = 124;
const LEFT = 30;
const RIGHT = 8;
const TOP = 8;
const BOTTOM = 18;

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
    settle(figure, "empty", el("p", "No history yet", "muted"));
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
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": label,
  });
  chart.append(svg("title", {}, label));

  // The frame: 0 and the top of the scale, a tick every 6 hours.
  const axes = svg("g", { class: "axes" });
  axes.append(
    svg("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(top), y2: y(top) }),
    svg("line", { class: "axis", x1: LEFT, x2: W - RIGHT, y1: y(0), y2: y(0) }),
    svg("text", { x: LEFT - 4, y: y(top) + 3.5, "text-anchor": "end" }, String(top)),
    svg("text", { x: LEFT - 4, y: y(0) + 3.5, "text-anchor": "end" }, "0"),
  );
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
  settle(figure, "chart", chart, summary);
}
