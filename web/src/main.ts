// citypark's live city map: every car park of a region as a dot coloured by its live
// availability, kept current by one WatchAvailability stream over gRPC-Web; a click
// asks FindNearby; the side panel shows GetCarPark, a chart of GetOccupancyHistory and
// one of Forecast.

import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import L from "leaflet";
import "leaflet/dist/leaflet.css";
import "./map.css";
import { Availability } from "./gen/citypark/v1/availability_pb.js";
import { Registry } from "./gen/citypark/v1/registry_pb.js";
import {
  type CarPark,
  type CarParkAvailability,
  SpaceCategory,
} from "./gen/citypark/v1/types_pb.js";
import {
  FORECAST_STEPS,
  FORECAST_STEP_MS,
  HISTORY_SPAN_MS,
  HISTORY_STEP_MS,
  forecastChart,
  forecastFailed,
  historyChart,
  historyFailed,
  showCarPark,
  showForecast,
  showHistory,
  showNearby,
} from "./panel.js";
import { type DotState, LOOKS, dotState, headline } from "./state.js";

/** What the server tells the page (GET config.json). */
interface Config {
  grpc_web_url: string | null;
  grpc_port: number;
  tiles_url: string | null;
  tiles_attribution: string;
  max_watch_car_parks: number;
  regions: {
    id: string;
    car_parks: number;
    south_west: [number, number];
    north_east: [number, number];
  }[];
}

interface Dot {
  carPark: CarPark;
  marker: L.CircleMarker;
  availability?: CarParkAvailability;
  state: DotState;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const statusLine = $("status");
const panel = $("panel");
const regionSelect = $<HTMLSelectElement>("region");
const searchForm = $<HTMLFormElement>("search");
const searchInput = $<HTMLInputElement>("search-at");

function say(text: string, problem = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("problem", problem);
}

const config: Config = await (await fetch("config.json")).json();
const baseUrl =
  config.grpc_web_url ?? `${location.protocol}//${location.hostname}:${config.grpc_port}`;
const transport = createGrpcWebTransport({ baseUrl });
const availability = createClient(Availability, transport);
const registry = createClient(Registry, transport);

const map = L.map("map", { preferCanvas: false, zoomSnap: 0.25 });
if (config.tiles_url) {
  L.tileLayer(config.tiles_url, { attribution: config.tiles_attribution, maxZoom: 19 }).addTo(map);
} else {
  $("map").classList.add("no-tiles");
}
// One SVG renderer for every dot, so the dots are elements a test (or a user's
// inspector) can read.
const renderer = L.svg({ padding: 0.5 });
const dots = new Map<string, Dot>();
const legend = $("legend");
for (const state of ["free", "few", "full", "closed", "stale", "no-data"] as DotState[]) {
  const look = LOOKS[state];
  const item = document.createElement("li");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = look.fill;
  swatch.style.borderColor = look.stroke;
  swatch.style.borderStyle = look.dashArray ? "dashed" : "solid";
  item.append(swatch, document.createTextNode(look.label));
  legend.append(item);
}

function restyle(dot: Dot) {
  const look = LOOKS[dot.state];
  dot.marker.setStyle({
    fillColor: look.fill,
    color: look.stroke,
    fillOpacity: look.fillOpacity,
    dashArray: look.dashArray ?? "",
  });
  const e = dot.marker.getElement();
  if (e) e.setAttribute("data-state", dot.state);
  const a = dot.availability;
  const numbers = a ? headline(a) : undefined;
  // An element, not a string: Leaflet puts strings in as HTML, and names are the
  // operators'.
  const tip = document.createElement("span");
  tip.textContent =
    `${dot.carPark.name || dot.carPark.id} — ${LOOKS[dot.state].label}` +
    (numbers && dot.state !== "no-data" ? ` (${numbers.available}/${numbers.capacity})` : "");
  dot.marker.setTooltipContent(tip);
}

let selected: string | null = null;
/** The selected car park's history chart, shown again with each update of it. */
let selectedHistory: HTMLElement | undefined;
/** The selected car park's forecast chart, likewise. */
let selectedForecast: HTMLElement | undefined;

function addDot(carPark: CarPark) {
  const existing = dots.get(carPark.id);
  if (existing) existing.marker.remove();
  const loc = carPark.location;
  if (!loc) return;
  const marker = L.circleMarker([loc.latitude, loc.longitude], {
    renderer,
    radius: 6,
    weight: 1.5,
    className: "cp-dot",
  })
    .bindTooltip("")
    .on("click", (e) => {
      L.DomEvent.stopPropagation(e);
      void select(carPark.id);
    })
    .addTo(map);
  marker.getElement()?.setAttribute("data-car-park", carPark.id);
  const dot: Dot = { carPark, marker, state: "loading", availability: existing?.availability };
  if (dot.availability) dot.state = dotState(dot.availability);
  dots.set(carPark.id, dot);
  restyle(dot);
}

function removeDot(id: string) {
  dots.get(id)?.marker.remove();
  dots.delete(id);
}

async function select(id: string) {
  selected = id;
  const known = dots.get(id);
  const history = historyChart();
  selectedHistory = history;
  void loadHistory(id, history);
  const forecast = forecastChart();
  selectedForecast = forecast;
  void loadForecast(id, forecast, known && standardSpaces(known.carPark));
  if (known) showCarPark(panel, known.carPark, known.availability, history, forecast);
  try {
    const got = await registry.getCarPark({ id });
    if (selected === id && got.carPark) {
      showCarPark(panel, got.carPark, got.availability, history, forecast);
    }
  } catch (e) {
    if (selected === id) say(`Could not read ${id}: ${ConnectError.from(e).rawMessage}`, true);
  }
}

/** Fills `chart` with the last day of `id`'s standard spaces, beside GetCarPark: a
 * failure shows in the chart and nowhere else. */
async function loadHistory(id: string, chart: HTMLElement) {
  const to = new Date();
  const from = new Date(to.getTime() - HISTORY_SPAN_MS);
  try {
    const got = await availability.getOccupancyHistory({
      carParkId: id,
      category: SpaceCategory.STANDARD,
      from: timestampFromDate(from),
      // `to` unset: up to the server's now, whatever this machine's clock says.
      step: { seconds: BigInt(HISTORY_STEP_MS / 1000) },
    });
    showHistory(chart, got.buckets, from, to);
  } catch (e) {
    historyFailed(chart, ConnectError.from(e).rawMessage);
  }
}

/** A car park's registered standard spaces, the top of its forecast's scale. */
function standardSpaces(carPark: CarPark): number | undefined {
  return carPark.capacity.find((c) => c.category === SpaceCategory.STANDARD)?.spaces;
}

/** Fills `chart` with the next hours of `id`'s standard spaces, beside GetCarPark: a
 * failure shows in the chart and nowhere else. */
async function loadForecast(id: string, chart: HTMLElement, capacity: number | undefined) {
  // From a minute ahead, so that a clock a little behind the server's still asks
  // about now or later (the server takes up to 5 minutes past as now).
  const start = Date.now() + 60_000;
  const times = Array.from({ length: FORECAST_STEPS + 1 }, (_, i) =>
    timestampFromDate(new Date(start + i * FORECAST_STEP_MS)),
  );
  try {
    const got = await availability.forecast({
      carParkId: id,
      category: SpaceCategory.STANDARD,
      times,
    });
    showForecast(chart, got, capacity);
  } catch (e) {
    const error = ConnectError.from(e);
    forecastFailed(chart, error.code === Code.FailedPrecondition, error.rawMessage);
  }
}

// --- the region's car parks (static), then the live stream ---------------------------

let region = "";
let watch: AbortController | null = null;

async function loadRegion(id: string) {
  region = id;
  watch?.abort();
  for (const dotId of [...dots.keys()]) removeDot(dotId);
  const info = config.regions.find((r) => r.id === id);
  if (!info) return;
  map.fitBounds([info.south_west, info.north_east], { padding: [20, 20] });
  say(`Loading ${info.car_parks} car parks of ${id}…`);
  let pageToken = "";
  do {
    const page = await registry.listCarParks({ region: id, pageSize: 1000, pageToken });
    if (region !== id) return;
    for (const cp of page.carParks) addDot(cp);
    pageToken = page.nextPageToken;
  } while (pageToken);
  watch = new AbortController();
  void follow(id, info, watch.signal);
}

/** Follows the region's changes until aborted; reconnects after a failure. */
async function follow(
  id: string,
  info: Config["regions"][number],
  signal: AbortSignal,
) {
  let backoff = 1000;
  // A region too big for one watch (or whose box holds too many car parks of other
  // regions) is followed in the visible part only.
  let whole = info.car_parks <= config.max_watch_car_parks;
  while (!signal.aborted) {
    const box = whole
      ? L.latLngBounds(info.south_west, info.north_east)
      : map.getBounds().pad(0.25);
    // Dots this watch does not cover are no longer live.
    for (const dot of dots.values()) {
      if (!box.contains(dot.marker.getLatLng()) && dot.state !== "loading") {
        dot.availability = undefined;
        dot.state = "loading";
        restyle(dot);
      }
    }
    const seen = new Set<string>();
    let inSnapshot = true;
    const viewChanged = new AbortController();
    const onMove = () => {
      if (!box.contains(map.getBounds())) viewChanged.abort();
    };
    if (!whole) map.on("moveend", onMove);
    const both = AbortSignal.any([signal, viewChanged.signal]);
    try {
      const stream = availability.watchAvailability(
        {
          selector: {
            case: "area",
            value: {
              southWest: { latitude: box.getSouth(), longitude: box.getWest() },
              northEast: { latitude: box.getNorth(), longitude: box.getEast() },
            },
          },
        },
        { signal: both },
      );
      for await (const event of stream) {
        backoff = 1000;
        switch (event.event.case) {
          case "update": {
            const a = event.event.value;
            if (a.region !== id) break;
            if (inSnapshot) seen.add(a.carParkId);
            update(a);
            break;
          }
          case "snapshotComplete":
            inSnapshot = false;
            // What the snapshot no longer holds was removed while we were not looking.
            for (const [dotId, dot] of dots) {
              const at = dot.marker.getLatLng();
              if (!seen.has(dotId) && box.contains(at)) removeDot(dotId);
            }
            say(
              `Live: ${dots.size} car parks in ${id}` +
                (whole ? "" : " (watching the visible area)"),
            );
            document.body.dataset.live = "true";
            break;
          case "resync":
            // Changes were missed; a fresh snapshot follows.
            inSnapshot = true;
            seen.clear();
            say(`Catching up (${event.event.value.missed} changes missed)…`);
            break;
          case "removed":
            removeDot(event.event.value.carParkId);
            break;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (viewChanged.signal.aborted) continue;
      const error = ConnectError.from(e);
      document.body.dataset.live = "false";
      // Too many car parks in the box (or a limit of calls or watches, which the
      // visible area is no worse for): the visible area next.
      if (error.code === Code.ResourceExhausted && whole) {
        whole = false;
        continue;
      }
      // The server's words for an area too big (Engine::in_area), as opposed to a
      // rate or watcher limit, which a retry outlasts.
      if (error.code === Code.ResourceExhausted && error.rawMessage.includes("watch a smaller")) {
        say(`Zoom in to see live numbers: ${error.rawMessage}`, true);
        await new Promise((resolve) => map.once("moveend", resolve));
        continue;
      }
      say(`Live feed lost (${error.rawMessage}); retrying in ${backoff / 1000} s`, true);
    } finally {
      map.off("moveend", onMove);
    }
    if (signal.aborted) return;
    if (!viewChanged.signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 30_000);
    }
  }
}

function update(a: CarParkAvailability) {
  const dot = dots.get(a.carParkId);
  if (!dot) {
    // A car park registered after the page loaded: read its static data once.
    void registry.getCarPark({ id: a.carParkId }).then((got) => {
      if (got.carPark && got.carPark.region === region) {
        addDot(got.carPark);
        update(got.availability ?? a);
      }
    });
    return;
  }
  dot.availability = a;
  dot.state = dotState(a);
  restyle(dot);
  if (selected === a.carParkId) {
    showCarPark(panel, dot.carPark, a, selectedHistory, selectedForecast);
  }
}

// --- nearby search ------------------------------------------------------------------

const pin = L.circleMarker([0, 0], { radius: 8, color: "#0050d0", weight: 3, fill: false });

async function searchFrom(at: L.LatLng) {
  searchInput.value = `${at.lat.toFixed(5)}, ${at.lng.toFixed(5)}`;
  pin.setLatLng(at).addTo(map);
  try {
    const found = await availability.findNearby({
      location: { latitude: at.lat, longitude: at.lng },
      radiusM: 2000,
      limit: 10,
      minAvailable: 1,
    });
    showNearby(panel, at, found.results, (id) => void select(id));
  } catch (e) {
    say(`Search failed: ${ConnectError.from(e).rawMessage}`, true);
  }
}

map.on("click", (e: L.LeafletMouseEvent) => void searchFrom(e.latlng));
searchForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*[, ]\s*(-?\d+(?:\.\d+)?)\s*$/.exec(searchInput.value);
  if (!m) {
    say("Type a point as latitude, longitude (or click the map)", true);
    return;
  }
  const at = L.latLng(Number(m[1]), Number(m[2]));
  if (!map.getBounds().contains(at)) map.panTo(at);
  void searchFrom(at);
});

// --- start --------------------------------------------------------------------------

if (config.regions.length === 0) {
  say("No car parks registered yet.");
  map.setView([0, 0], 2);
} else {
  for (const r of config.regions) {
    const option = document.createElement("option");
    option.value = r.id;
    option.textContent = `${r.id} (${r.car_parks})`;
    regionSelect.append(option);
  }
  const wanted = new URLSearchParams(location.search).get("region");
  const first = config.regions.find((r) => r.id === wanted) ?? config.regions[0];
  regionSelect.value = first.id;
  regionSelect.addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.set("region", regionSelect.value);
    history.replaceState(null, "", url);
    void loadRegion(regionSelect.value);
  });
  void loadRegion(first.id).catch((e) =>
    say(`Could not load ${first.id}: ${ConnectError.from(e).rawMessage}`, true),
  );
}
