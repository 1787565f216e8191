// Drives the live map in a real Chromium for tests/it/map.rs, one command per line on
// stdin, one answer per line on stdout, so that the Rust test makes the changes (over
// gRPC) and this script only looks:
//
//   ready <count>                    the page is live and shows at least <count> dots
//   expect <id> <state> <ms>         the dot of <id> shows <state> within <ms>
//   click <id>                       click the dot; answers the side panel's heading
//   history                          the panel's history chart once loaded: answers
//                                    `chart <steps> <carried> <dashed> <aria-label>`
//                                    (bands drawn, of them carried forward, dashed
//                                    lines), or `<empty|error> <its text>`
//   break-history                    from now on GetOccupancyHistory answers
//                                    UNAVAILABLE, as with its database down
//   forecast                         the panel's forecast chart once loaded: answers
//                                    `chart <points> <bands> <top> <summary>` (dots on
//                                    the line, interval bands, the scale's top), or
//                                    `<empty|error> <its text>`
//   break-forecast                   from now on Forecast answers UNAVAILABLE
//   hover <id>                       hover over the dot; answers its tooltip's text
//   nearby <lat> <lng>               click the map there; answers the results' ids
//   status <text> <ms>               the status line holds <text> within <ms>; answers it
//   zoom <id> <steps>                zoom in <steps> wheel notches over the dot of <id>
//   screenshot <path>                save a screenshot
//   quit
//
// Answers are `ok …` or `fail …`; page errors and failed requests are `error …` lines.
//
// usage: node map.e2e.mjs <map url> <chromium executable>
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [url, executablePath] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${line}\n`);

const browser = await chromium.launch({ executablePath, headless: true });
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on("pageerror", (e) => say(`error page: ${e.message.replace(/\n/g, " ")}`));
page.on("console", (m) => {
  if (m.type() === "error") say(`error console: ${m.text().replace(/\n/g, " ")}`);
});
page.on("requestfailed", (r) => {
  // A watch ended by the page itself (reload, quit) is not a failure.
  if (!r.failure()?.errorText.includes("ERR_ABORTED")) {
    say(`error request: ${r.url()} ${r.failure()?.errorText}`);
  }
});
await page.goto(url);

const dot = (id) => `path.cp-dot[data-car-park="${id}"]`;

/** From now on Availability's `method` answers UNAVAILABLE with `message`. */
async function breakCall(method, message) {
  // A gRPC-Web answer with its status in the headers (a trailers-only answer),
  // readable across origins as the server's own would be.
  await page.route(`**/citypark.v1.Availability/${method}`, (route) =>
    route.fulfill({
      status: 200,
      headers: {
        "content-type": "application/grpc-web+proto",
        "grpc-status": "14",
        "grpc-message": message,
        "access-control-allow-origin": route.request().headers().origin ?? "*",
        "access-control-expose-headers": "grpc-status, grpc-message",
      },
      body: "",
    }),
  );
}

async function handle(words) {
  switch (words[0]) {
    case "ready": {
      const count = Number(words[1]);
      await page.waitForSelector("body[data-live=true]", { timeout: 60_000 });
      await page.waitForFunction(
        (n) => document.querySelectorAll("path.cp-dot").length >= n,
        count,
        { timeout: 60_000 },
      );
      return `ok ${await page.locator("path.cp-dot").count()}`;
    }
    case "expect": {
      const [, id, state, ms] = words;
      const started = performance.now();
      try {
        await page.waitForSelector(`${dot(id)}[data-state="${state}"]`, {
          timeout: Number(ms),
          state: "attached",
        });
      } catch {
        const now = await page.locator(dot(id)).getAttribute("data-state").catch(() => null);
        return `fail ${id} is ${now} after ${ms} ms`;
      }
      const fill = await page.locator(dot(id)).getAttribute("fill");
      return `ok ${Math.round(performance.now() - started)} ${fill}`;
    }
    case "click": {
      await page.locator(dot(words[1])).click();
      const heading = page.locator("#panel h2");
      await page.waitForFunction(
        () => document.querySelector("#panel table.spaces") !== null,
        undefined,
        { timeout: 5_000 },
      );
      return `ok ${await heading.textContent()}`;
    }
    case "history": {
      const chart = page.locator("#panel .history-chart");
      await page.waitForSelector('#panel .history-chart:not([data-state="loading"])', {
        timeout: 5_000,
      });
      const state = await chart.getAttribute("data-state");
      if (state !== "chart") return `ok ${state} ${await chart.locator("p").textContent()}`;
      const svg = chart.locator('svg[role="img"]');
      const [steps, carried, dashed] = await Promise.all(
        ["rect.band", "rect.band.carried", "polyline.line.carried"].map((s) =>
          svg.locator(s).count(),
        ),
      );
      return `ok chart ${steps} ${carried} ${dashed} ${await svg.getAttribute("aria-label")}`;
    }
    case "forecast": {
      const chart = page.locator("#panel .forecast-chart");
      await page.waitForSelector('#panel .forecast-chart:not([data-state="loading"])', {
        timeout: 5_000,
      });
      const state = await chart.getAttribute("data-state");
      if (state !== "chart") return `ok ${state} ${await chart.locator("p").textContent()}`;
      const svg = chart.locator('svg[role="img"]');
      const [points, bands] = await Promise.all(
        ["circle.point", "polygon.band"].map((s) => svg.locator(s).count()),
      );
      // The scale's top is the upper label of the frame.
      const top = await svg.locator("g.axes text").first().textContent();
      const summary = await chart.locator("p.forecast-summary").textContent();
      return `ok chart ${points} ${bands} ${top} ${summary}`;
    }
    case "break-history":
      await breakCall("GetOccupancyHistory", "history down");
      return "ok";
    case "break-forecast":
      await breakCall("Forecast", "forecasts down");
      return "ok";
    case "hover": {
      await page.locator(dot(words[1])).hover();
      const tip = page.locator(".leaflet-tooltip");
      await tip.waitFor({ timeout: 5_000 });
      return `ok ${await tip.textContent()}`;
    }
    case "nearby": {
      await page.fill("#search-at", `${words[1]}, ${words[2]}`);
      await page.click("#search button[type=submit]");
      await page.waitForSelector("#panel ol.nearby button", { timeout: 5_000 });
      const ids = await page
        .locator("#panel ol.nearby button")
        .evaluateAll((buttons) => buttons.map((b) => b.dataset.carPark));
      return `ok ${ids.join(" ")}`;
    }
    case "status": {
      const [, text, ms] = words;
      try {
        await page.waitForFunction(
          (t) => document.getElementById("status")?.textContent?.includes(t),
          text,
          { timeout: Number(ms) },
        );
      } catch {
        return `fail the status line says ${await page.textContent("#status")}`;
      }
      return `ok ${await page.textContent("#status")}`;
    }
    case "zoom": {
      const box = await page.locator(dot(words[1])).boundingBox();
      if (!box) return `fail ${words[1]} is not on the map`;
      await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
      for (let i = 0; i < Number(words[2]); i++) {
        await page.mouse.wheel(0, -200);
        await page.waitForTimeout(150);
      }
      return "ok";
    }
    case "screenshot":
      await page.screenshot({ path: words[1] });
      return "ok";
    case "quit":
      await browser.close();
      process.exit(0);
    default:
      return `fail unknown command ${words[0]}`;
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  const words = line.trim().split(/\s+/);
  try {
    say(await handle(words));
  } catch (e) {
    say(`fail ${String(e.message ?? e).replace(/\n/g, " ")}`);
  }
}
await browser.close();
