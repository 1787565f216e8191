// How a car park's live state is shown: one of a few states, each with its own look,
// so that "no numbers" (stale, no data) never reads as "no space" (full).

import {
  type CarParkAvailability,
  CarParkStatus,
  SpaceCategory,
} from "./gen/citypark/v1/types_pb.js";

export type DotState =
  | "loading" // static data only; the watch has not said anything yet
  | "free" // open, plenty of space
  | "few" // open, at most FEW_SHARE of the spaces (or FEW_SPACES) available
  | "full" // open, no space available
  | "closed" // outside its opening hours or closed by its operator
  | "stale" // its newest numbers are too old to trust
  | "no-data"; // registered, never reported

export const FEW_SHARE = 0.1;
export const FEW_SPACES = 5;

export interface Look {
  label: string;
  fill: string;
  stroke: string;
  fillOpacity: number;
  dashArray?: string;
}

// Colour-blind-safe hues for the numbers; greys with distinct outlines for the
// states that have none.
export const LOOKS: Record<DotState, Look> = {
  free: { label: "Free", fill: "#1a9850", stroke: "#0b5d2e", fillOpacity: 0.9 },
  few: { label: "Few left", fill: "#f4a300", stroke: "#8a5c00", fillOpacity: 0.9 },
  full: { label: "Full", fill: "#c8102e", stroke: "#6d0818", fillOpacity: 0.9 },
  closed: { label: "Closed", fill: "#3a3a3a", stroke: "#111111", fillOpacity: 0.8 },
  stale: {
    label: "Stale data",
    fill: "#b39ddb",
    stroke: "#5e35b1",
    fillOpacity: 0.5,
    dashArray: "3 2",
  },
  "no-data": { label: "No data", fill: "#ffffff", stroke: "#757575", fillOpacity: 1 },
  loading: { label: "Loading", fill: "#e0e0e0", stroke: "#9e9e9e", fillOpacity: 0.6 },
};

/** The spaces a driver of an ordinary car can have: the standard category's, or all
 * categories' when the car park lists no standard spaces. */
export function headline(a: CarParkAvailability): { available: number; capacity: number } {
  const standard = a.categories.filter((c) => c.category === SpaceCategory.STANDARD);
  const counted = standard.length > 0 ? standard : a.categories;
  return {
    available: counted.reduce((n, c) => n + c.available, 0),
    capacity: counted.reduce((n, c) => n + c.capacity, 0),
  };
}

export function dotState(a: CarParkAvailability): DotState {
  switch (a.status) {
    case CarParkStatus.CLOSED:
      return "closed";
    case CarParkStatus.STALE:
      return "stale";
    case CarParkStatus.NO_DATA:
      return "no-data";
    case CarParkStatus.OPEN: {
      const { available, capacity } = headline(a);
      if (available <= 0) return "full";
      if (available <= FEW_SPACES || available <= capacity * FEW_SHARE) return "few";
      return "free";
    }
    default:
      return "loading";
  }
}
