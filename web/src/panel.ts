// The side panel: a car park's details, and the answers of a nearby search. Text is
// set with textContent only: names and addresses come from operators.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { NearbyCarPark } from "./gen/citypark/v1/availability_pb.js";
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

export function showCarPark(
  panel: HTMLElement,
  carPark: CarPark,
  availability: CarParkAvailability | undefined,
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
