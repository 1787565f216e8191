//! Compiles `proto/` with protox (no system protoc) and generates the tonic code, and
//! builds the live city map (`web/`) with npm so the binary can embed it. Without
//! Node.js and npm (or with the npm registry out of reach) the service is built
//! without its map, with a warning, and `/map/` says how to get it.
//!
//! The encoded descriptor set is written to `OUT_DIR/citypark_descriptor.bin` so the
//! server can offer gRPC reflection without a second compile, and the OpenAPI
//! description of the HTTP/JSON API generated from it (`build/openapi.rs`) to
//! `OUT_DIR/openapi.json`. The map is built in a
//! copy of `web/` under `OUT_DIR` (a build script writes nowhere else), and its
//! directory is passed to the crate as `CITYPARK_MAP_DIST`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use prost::Message as _;

#[path = "src/grpc/connect_codes.rs"]
mod connect_codes;
#[path = "build/openapi.rs"]
mod openapi;

const PROTOS: &[&str] = &[
    "proto/citypark/v1/types.proto",
    "proto/citypark/v1/registry.proto",
    "proto/citypark/v1/ingest.proto",
    "proto/citypark/v1/availability.proto",
    "proto/citypark/v1/reservations.proto",
    "proto/citypark/v1/shared.proto",
    "proto/citypark/v1/sessions.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds history's migrations: a new one must rebuild the crate.
    println!("cargo:rerun-if-changed=src/history/migrations");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("citypark_descriptor.bin"), fds.encode_to_vec())?;
    // The HTTP/JSON API's description, from the same descriptors and their comments.
    println!("cargo:rerun-if-changed=build/openapi.rs");
    println!("cargo:rerun-if-changed=src/grpc/connect_codes.rs");
    let description = openapi::generate(&fds, "citypark.v1", &env::var("CARGO_PKG_VERSION")?);
    fs::write(
        out.join("openapi.json"),
        serde_json::to_string_pretty(&description)?,
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    build_map(&out)?;
    Ok(())
}

/// What `web/build.mjs` leaves in its output directory; the server embeds each.
const MAP_FILES: &[&str] = &[
    "index.html",
    "app.js",
    "app.js.gz",
    "app.css",
    "app.css.gz",
    "licenses.txt",
];

/// The sources of the map, relative to `web/`.
const WEB_SOURCES: &[&str] = &[
    "package.json",
    "package-lock.json",
    "build.mjs",
    "buf.gen.yaml",
    "tsconfig.json",
    "src",
    "licenses",
    "test",
];

/// Why the map was not built: Node.js or npm cannot be run or cannot install (the
/// service is then built without it), or the map itself failed (the build fails).
enum MapFailure {
    NoNode(String),
    Failed(Box<dyn std::error::Error>),
}

impl<E: Into<Box<dyn std::error::Error>>> From<E> for MapFailure {
    fn from(error: E) -> Self {
        MapFailure::Failed(error.into())
    }
}

/// Builds the map into `OUT_DIR/web/dist`, or takes a build made elsewhere from
/// `CITYPARK_WEB_DIST` (a container build may make it in a Node.js stage). Without
/// Node.js or npm, a page that says how to get the map stands in for it, unless
/// `CITYPARK_REQUIRE_MAP=1` (CI) makes that an error.
fn build_map(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for name in [
        "CITYPARK_WEB_DIST",
        "CITYPARK_REQUIRE_MAP",
        "CITYPARK_NODE",
        "CITYPARK_NPM",
    ] {
        println!("cargo:rerun-if-env-changed={name}");
    }
    for source in WEB_SOURCES {
        println!("cargo:rerun-if-changed=web/{source}");
    }
    let dist = match env::var_os("CITYPARK_WEB_DIST") {
        Some(dist) => PathBuf::from(dist),
        None => match build_with_node(out) {
            Ok(dist) => dist,
            Err(MapFailure::Failed(error)) => return Err(error),
            Err(MapFailure::NoNode(why))
                if env::var("CITYPARK_REQUIRE_MAP").as_deref() == Ok("1") =>
            {
                return Err(why.into());
            }
            Err(MapFailure::NoNode(why)) => {
                println!(
                    "cargo:warning=citypark is built without its live map: {why}. \
                     /map/ says how to get it; everything else works."
                );
                without_map(out)?
            }
        },
    };
    for file in MAP_FILES {
        if !dist.join(file).is_file() {
            return Err(format!("the map build in {} lacks {file}", dist.display()).into());
        }
    }
    println!("cargo:rustc-env=CITYPARK_MAP_DIST={}", dist.display());
    Ok(())
}

/// The page `/map/` serves in a binary built without Node.js, and empty assets.
fn without_map(out: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    /// An empty gzip member: header, an empty final deflate block, CRC and size 0.
    const EMPTY_GZIP: [u8; 20] = [
        0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let dist = out.join("web-without-map");
    fs::create_dir_all(&dist)?;
    fs::write(
        dist.join("index.html"),
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>citypark: no live map in this build</title></head><body>\
         <h1>This citypark was built without its live map</h1>\
         <p>Node.js (20 or newer) and npm were not available when it was built, so the \
         map could not be. Everything else (gRPC, gRPC-Web, open data, metrics) works.</p>\
         <p>To get the map, install Node.js and npm and run <code>cargo build</code> \
         again, or build the map elsewhere with <code>npm ci &amp;&amp; npm run build</code> \
         in <code>web/</code> and set <code>CITYPARK_WEB_DIST</code> to its \
         <code>dist</code> directory when you build.</p></body></html>\n",
    )?;
    for (file, bytes) in [
        ("app.js", &b""[..]),
        ("app.css", b""),
        ("app.js.gz", &EMPTY_GZIP),
        ("app.css.gz", &EMPTY_GZIP),
        (
            "licenses.txt",
            b"This build of citypark has no live map, and so none of its libraries.\n",
        ),
    ] {
        fs::write(dist.join(file), bytes)?;
    }
    // The browser test's playwright-core is not there either; the variable must be.
    println!(
        "cargo:rustc-env=CITYPARK_WEB_WORK={}",
        out.join("web").display()
    );
    Ok(dist)
}

/// Builds the map with Node.js and npm in a copy of `web/` under `out`: its `dist`.
/// Node.js or npm that cannot be run, or an `npm ci` that fails (no registry), is
/// `NoNode`; the map's own build failing is `Failed`.
fn build_with_node(out: &Path) -> Result<PathBuf, MapFailure> {
    let node = env::var("CITYPARK_NODE").unwrap_or_else(|_| "node".into());
    let npm = env::var("CITYPARK_NPM").unwrap_or_else(|_| "npm".into());
    let work = out.join("web");
    fs::create_dir_all(&work)?;
    // Sources are copied afresh so that a file deleted from web/ is gone here.
    for source in WEB_SOURCES {
        let to = work.join(source);
        if to.is_dir() {
            fs::remove_dir_all(&to)?;
        }
        let from = Path::new("web").join(source);
        copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    // `npm ci` again only when the lock file changed since the last install.
    let lock = fs::read(work.join("package-lock.json"))?;
    let installed = work.join("node_modules/.citypark-lock");
    if fs::read(&installed).ok().as_deref() != Some(&lock[..]) {
        run(Command::new(&npm)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&work))
        .map_err(|why| MapFailure::NoNode(why.to_string()))?;
        fs::write(&installed, &lock)?;
    }
    let proto = fs::canonicalize("proto")?;
    let mut build = Command::new(&node);
    build
        .arg("build.mjs")
        .arg("--proto")
        .arg(&proto)
        .args(["--out", "dist"])
        .current_dir(&work);
    // Node.js missing is NoNode; Node.js failing on the map is the map's error.
    if let Err(e) = Command::new(&node).arg("--version").output() {
        return Err(MapFailure::NoNode(format!("running `{node}` failed ({e})")));
    }
    run(&mut build)?;
    // The browser test (tests/it/map.rs) drives Chromium with the playwright-core
    // this install holds.
    println!("cargo:rustc-env=CITYPARK_WEB_WORK={}", work.display());
    Ok(work.join("dist"))
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            // Generated code is regenerated from proto/ by build.mjs.
            if entry.file_name() == "gen" {
                continue;
            }
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

/// Runs a step of the map's build; its output is shown only when it fails, since a
/// build script's stdout is read by cargo.
fn run(command: &mut Command) -> Result<(), Box<dyn std::error::Error>> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|e| {
        format!(
            "citypark embeds its live map, built with Node.js (20 or newer) and npm: \
             running `{program}` failed ({e}). Install them (nodejs.org, or your \
             distribution's packages if they are recent enough), or set CITYPARK_WEB_DIST to a directory holding a map built \
             by `npm run build` in web/"
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "`{program}` failed ({}) building the map:\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}
