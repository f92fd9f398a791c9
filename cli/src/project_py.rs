//! Building a Python room (a folder with `app.py`, or a `pyproject.toml`):
//! componentize-py makes the component from the room's `app.py`, the Python
//! SDK and the WIT, both as built into this `dormouse`.
//!
//! componentize-py comes from a virtualenv in the cache
//! (`~/.cache/dormouse/py-tools/...`) that the build makes with pip once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::project_js::{cache_dir, run_tool, write_files};

/// The componentize-py a room is built with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The Python SDK (`guest-sdk/python`), as built into this binary.
const SDK: [(&str, &str); 1] = [(
    "dormouse/__init__.py",
    include_str!("../../guest-sdk/python/dormouse/__init__.py"),
)];

/// The module componentize-py starts from: the room's `Server`, served.
const ENTRY: &str = "import dormouse\nfrom app import Server\n\nHooks, TimerHooks, LobbyHooks, CronHooks, AnswerHooks = dormouse.serve(Server)\n";

/// Build the room in `dir`; its component.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if !dir.join("app.py").is_file() {
        bail!(
            "{} has no app.py: a Python room's Server class lives there",
            dir.display()
        );
    }
    let tool = componentize_py()?;
    let cache = cache_dir()?;
    let sdk = write_files(&cache.join("python-sdk"), &SDK)?;
    let wit = write_files(&cache.join("wit"), &dormouse_host::wit::SOURCES)?;
    let entry = write_files(&cache.join("python-entry"), &[("dormouse_entry.py", ENTRY)])?;
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    let wasm = dist.join("room.wasm");
    let mut componentize = Command::new(&tool);
    componentize
        .arg("-d")
        .arg(&wit)
        .args(["-w", "room", "componentize", "dormouse_entry", "-p"])
        .arg(&entry)
        .arg("-p")
        .arg(&dir)
        .arg("-p")
        .arg(&sdk)
        .arg("-o")
        .arg(&wasm);
    run_tool(componentize, b"", "componentize-py")?;
    Ok(wasm)
}

/// componentize-py from the cache's virtualenv, made once.
fn componentize_py() -> anyhow::Result<PathBuf> {
    let venv = cache_dir()?
        .join("py-tools")
        .join(COMPONENTIZE_PY.replace("==", "-"));
    let tool = venv.join("bin").join("componentize-py");
    if tool.is_file() {
        return Ok(tool);
    }
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !python.is_ok_and(|s| s.success()) {
        bail!(
            "building a Python room needs Python 3 with venv: install it (`apt-get install python3 python3-venv`)"
        );
    }
    eprintln!("dormouse: installing {COMPONENTIZE_PY} (once)");
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .context("cannot run python3 -m venv")?;
    if !made.success() {
        bail!(
            "`python3 -m venv {}` failed (is python3-venv installed?)",
            venv.display()
        );
    }
    let pip = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", COMPONENTIZE_PY])
        .stdout(Stdio::null())
        .status()
        .context("cannot run pip")?;
    if !pip.success() || !tool.is_file() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!("`pip install {COMPONENTIZE_PY}` failed");
    }
    Ok(tool)
}
