// Builds the map: protobuf-es code from the protos (buf + protoc-gen-es), then one
// bundle (esbuild) of the page's script and styles, into --out with index.html.
// build.rs runs it in a copy of web/ under OUT_DIR; `npm run build` runs it here.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { delimiter, join, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";

const { values } = parseArgs({
  options: { proto: { type: "string" }, out: { type: "string" } },
});
if (!values.proto || !values.out) {
  console.error("usage: node build.mjs --proto <proto dir> --out <dir>");
  process.exit(2);
}

rmSync("src/gen", { recursive: true, force: true });
const buf = spawnSync(
  join("node_modules", ".bin", "buf"),
  ["generate", values.proto, "--template", "buf.gen.yaml"],
  // buf finds its protoc-gen-es plugin on PATH, as under `npm run`.
  {
    stdio: "inherit",
    env: { ...process.env, PATH: `${resolve("node_modules/.bin")}${delimiter}${process.env.PATH}` },
  },
);
if (buf.status !== 0) {
  console.error(`buf generate failed (${buf.error ?? `exit ${buf.status}`})`);
  process.exit(1);
}

mkdirSync(values.out, { recursive: true });
const result = await esbuild.build({
  entryPoints: { app: "src/main.ts" },
  outdir: values.out,
  bundle: true,
  format: "esm",
  target: ["es2022", "chrome110", "firefox115", "safari16"],
  minify: true,
  legalComments: "none",
  metafile: true,
  loader: { ".png": "dataurl", ".svg": "dataurl" },
  logLevel: "warning",
});
copyFileSync("src/index.html", join(values.out, "index.html"));

// The licences of every package in the bundle, whole, served beside it.
const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = /^node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (m) packages.add(m[1]);
}
let notices = "The map's script bundles these packages, under these licences.\n";
for (const name of [...packages].sort()) {
  const dir = join("node_modules", name);
  const meta = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  // Packages that publish no LICENSE file have theirs in licenses/ (see its README).
  const file = [
    ...["LICENSE", "LICENSE.md", "LICENSE.txt"].map((f) => join(dir, f)),
    join("licenses", `${name.replace("/", "+")}.txt`),
  ].find(existsSync);
  if (!file) {
    console.error(`${name} ships no LICENSE file and licenses/ has none for it`);
    process.exit(1);
  }
  notices += `\n== ${name} ${meta.version} (${meta.license})\n\n${readFileSync(file, "utf8")}`;
}
writeFileSync(join(values.out, "licenses.txt"), notices);

// Served compressed to the browsers that ask (all of them), plain to the rest.
for (const f of ["app.js", "app.css"]) {
  writeFileSync(join(values.out, `${f}.gz`), gzipSync(readFileSync(join(values.out, f)), { level: 9 }));
}
