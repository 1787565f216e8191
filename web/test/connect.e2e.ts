// connect-web's Connect client with JSON bodies, in Node, against a running server:
// what a JavaScript integration of a barrier or an app would call. tests/it/connect.rs
// bundles it with esbuild and runs it as
//   node connect.mjs <base URL> <operator API key> <car park id> <observed at, RFC 3339>
// It reports 33 free standard spaces at the car park, searches around it, asks for a
// car park nobody registered and reports without a key, and prints one JSON line.

import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { Availability } from "../src/gen/citypark/v1/availability_pb.js";
import { Ingest, ReportResult } from "../src/gen/citypark/v1/ingest_pb.js";
import { Registry } from "../src/gen/citypark/v1/registry_pb.js";
import { SpaceCategory } from "../src/gen/citypark/v1/types_pb.js";

const [baseUrl, key, id, observedAt] = process.argv.slice(2);
const transport = createConnectTransport({ baseUrl, useBinaryFormat: false });
const auth = { headers: { authorization: `Bearer ${key}` } };

/** The Connect code's name of a failed call (as the protocol spells it). */
async function codeOf(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "ok";
  } catch (e) {
    // Code's enum names are PascalCase ("NotFound"); the protocol's are snake_case.
    return Code[ConnectError.from(e).code].replace(/[A-Z]/g, (c, i) =>
      (i ? "_" : "") + c.toLowerCase(),
    );
  }
}

const report = {
  report: {
    carParkId: id,
    sequence: 1n,
    observedAt: timestampFromDate(new Date(observedAt)),
    body: {
      case: "snapshot" as const,
      value: { free: [{ category: SpaceCategory.STANDARD, count: 33 }] },
    },
  },
};
const ingest = createClient(Ingest, transport);
const ack = await ingest.report(report, auth);
const nearby = await createClient(Availability, transport).findNearby({
  location: { latitude: 36.06, longitude: 120.38 },
  radiusM: 500,
});
const registry = createClient(Registry, transport);
console.log(
  JSON.stringify({
    report: `REPORT_RESULT_${ReportResult[ack.ack?.result ?? ReportResult.UNSPECIFIED]}`,
    nearby: nearby.results.map((r) => ({ id: r.carParkId, available: r.available })),
    missing: await codeOf(registry.getCarPark({ id: "nobody-registered-this" })),
    unauthenticated: await codeOf(
      ingest.report({ ...report, report: { ...report.report, sequence: 2n } }),
    ),
  }),
);
