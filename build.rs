//! Compiles `proto/` with protox (no system protoc) and generates the tonic code, and
//! builds the live city map (`web/`) with npm so the binary can embed it.
//!
//! The encoded descriptor set is written to `OUT_DIR/citypark_descriptor.bin` so the
//! server can offer gRPC reflection without a second compile. The map is built in a
//! copy of `web/` under `OUT_DIR` (a build script writes nowhere else), and its
//! directory is passed to the crate as `CITYPARK_MAP_DIST`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use prost::Message as _;

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

/// Builds the map into `OUT_DIR/web/dist`, or takes a build made elsewhere from
/// `CITYPARK_WEB_DIST` (a container build may make it in a Node.js stage).
fn build_map(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=CITYPARK_WEB_DIST");
    for source in WEB_SOURCES {
        println!("cargo:rerun-if-changed=web/{source}");
    }
    let dist = match env::var_os("CITYPARK_WEB_DIST") {
        Some(dist) => PathBuf::from(dist),
        None => {
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
                run(Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&work))?;
                fs::write(&installed, &lock)?;
            }
            let proto = fs::canonicalize("proto")?;
            run(Command::new("node")
                .arg("build.mjs")
                .arg("--proto")
                .arg(&proto)
                .args(["--out", "dist"])
                .current_dir(&work))?;
            // The browser test (tests/it/map.rs) drives Chromium with the
            // playwright-core this install holds.
            println!("cargo:rustc-env=CITYPARK_WEB_WORK={}", work.display());
            work.join("dist")
        }
    };
    for file in MAP_FILES {
        if !dist.join(file).is_file() {
            return Err(format!("the map build in {} lacks {file}", dist.display()).into());
        }
    }
    println!("cargo:rustc-env=CITYPARK_MAP_DIST={}", dist.display());
    Ok(())
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
