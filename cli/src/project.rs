//! Room projects: compile a room to a component (`dormouse build`), a Rust
//! crate here, a TypeScript/JavaScript package in [`crate::project_js`] and
//! a Python one in [`crate::project_py`], and watch it for changes
//! (`dormouse dev`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, bail};

/// The target rooms are built for: it emits components directly.
pub const TARGET: &str = "wasm32-wasip2";

/// Add the wasm32-wasip2 target with rustup when it is missing.
pub fn ensure_target() -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        // No rustup: let cargo say what is missing.
        return Ok(());
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("dormouse: adding the {TARGET} target (once)");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("cannot run rustup")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed; run it yourself and retry");
    }
    Ok(())
}

/// Build the room in `dir` (a Rust crate, or a package with `package.json`);
/// the path of its component.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        if dir.join("package.json").is_file() {
            return crate::project_js::build(dir);
        }
        if dir.join("app.py").is_file() || dir.join("pyproject.toml").is_file() {
            return crate::project_py::build(dir);
        }
        bail!(
            "{} has no Cargo.toml, package.json or app.py: is it a room?",
            dir.display()
        );
    }
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", manifest.display()))?;
    let built = cargo_build(&["--manifest-path", path_str(&manifest)?], None)?;
    built
        .into_iter()
        .find(|a| a.manifest == manifest)
        .map(|a| a.wasm)
        .with_context(|| {
            format!(
                "{} built no .wasm: a room crate needs `crate-type = [\"cdylib\"]`",
                dir.display()
            )
        })
}

/// Build several packages of the workspace at `manifest` at once, into
/// `target_dir`; their components by package name.
pub fn build_packages(
    manifest: &Path,
    packages: &[&str],
    target_dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut args = vec!["--manifest-path", path_str(manifest)?];
    for p in packages {
        args.extend(["-p", p]);
    }
    let built = cargo_build(&args, Some(target_dir))?;
    Ok(built.into_iter().map(|a| (a.package, a.wasm)).collect())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

struct Artifact {
    package: String,
    manifest: PathBuf,
    wasm: PathBuf,
}

fn cargo_build(args: &[&str], target_dir: Option<&Path>) -> anyhow::Result<Vec<Artifact>> {
    ensure_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    // When run from a build script or a test, cargo's variables for that
    // build must not leak into this one.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!("cargo build failed (see the errors above)");
    }
    let mut artifacts = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        let wasm = msg["filenames"].as_array().and_then(|f| {
            f.iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
        });
        if let (true, Some(wasm), Some(manifest)) = (is_cdylib, wasm, msg["manifest_path"].as_str())
        {
            artifacts.push(Artifact {
                package: package_name(msg["package_id"].as_str().unwrap_or_default()),
                manifest: PathBuf::from(manifest),
                wasm: PathBuf::from(wasm),
            });
        }
    }
    Ok(artifacts)
}

/// The name in a cargo package id, e.g. `path+file:///x/relay#0.1.0` or
/// `path+file:///x/y#relay@0.1.0`.
fn package_name(id: &str) -> String {
    let tail = id.rsplit('#').next().unwrap_or(id);
    match tail.split_once('@') {
        Some((name, _)) => name.to_owned(),
        None => id
            .split('#')
            .next()
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or(tail)
            .to_owned(),
    }
}

/// The newest modification time of the files that make up a room crate
/// (`Cargo.toml`, `src/`), to rebuild on change.
/// The `"crons"` of a room folder's `partykit.json` (`{"crons": {"name":
/// "*/5 * * * *"}}`), if it has one: PartyKit's way to name them.
pub fn partykit_crons(dir: &Path) -> anyhow::Result<Vec<dormouse_host::config::CronConfig>> {
    let path = dir.join("partykit.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(crons) = json.get("crons") else {
        return Ok(Vec::new());
    };
    let Some(crons) = crons.as_object() else {
        bail!(
            "{}: \"crons\" is an object of name to schedule",
            path.display()
        );
    };
    crons
        .iter()
        .map(|(name, schedule)| match schedule.as_str() {
            Some(s) => Ok(dormouse_host::config::CronConfig {
                name: name.clone(),
                schedule: s.to_owned(),
            }),
            None => bail!(
                "{}: cron {name:?}'s schedule is not a string",
                path.display()
            ),
        })
        .collect()
}

pub fn last_change(dir: &Path) -> Option<SystemTime> {
    fn walk(p: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if let Ok(m) = meta.modified() {
            *newest = (*newest).max(Some(m));
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(p)
        {
            for e in entries.flatten() {
                walk(&e.path(), newest);
            }
        }
    }
    let mut newest = None;
    walk(&dir.join("Cargo.toml"), &mut newest);
    walk(&dir.join("package.json"), &mut newest);
    walk(&dir.join("pyproject.toml"), &mut newest);
    walk(&dir.join("src"), &mut newest);
    // A TypeScript room's sources may sit at the top (server.ts).
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if [".ts", ".js", ".mjs", ".py"]
            .iter()
            .any(|x| name.ends_with(x))
        {
            walk(&e.path(), &mut newest);
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        assert_eq!(package_name("path+file:///x/relay#0.1.0"), "relay");
        assert_eq!(package_name("path+file:///x/y#relay@0.1.0"), "relay");
        assert_eq!(package_name("registry+https://x#serde@1.0.0"), "serde");
    }
}
