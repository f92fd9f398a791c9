//! Building a TypeScript or JavaScript room (a folder with `package.json`):
//! esbuild bundles it with its npm dependencies and the JavaScript SDK, then
//! componentize-js makes the component against the host's own WIT.
//!
//! The tools come from the project's `node_modules` when it pins them (the
//! projects `dormouse new --lang ts` writes do), else from a cache
//! (`~/.cache/dormouse/js-tools/...`) that the build fills with npm once.
//! The SDK and the WIT are the ones built into this `dormouse`, so a room is
//! always built against the contract of the host that builds it.
//!
//! When the project depends on `typescript`, the build type-checks it first
//! (`tsc --noEmit`), with `dormouse` resolved to the types of the SDK it is
//! built with; a type error stops the build, as `tsc` would.
//!
//! The component leaves out `wasi:http` (componentize-js `-d http
//! fetch-event`): the host does not link it, since outgoing HTTP is not part
//! of the room contract; rooms reach other rooms through `rooms.fetch`
//! (`room.context.parties`). `fetch()` to the outside world is not available.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sha2::Digest;

/// The tool versions a room is built with when the project pins none.
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
const ESBUILD: &str = "esbuild@0.25.12";

/// `URLPattern`, which componentize-js's runtime lacks (PartyKit's runtime
/// has it), from a well-kept polyfill (MIT), bundled only into rooms whose
/// code names it.
const URLPATTERN: &str = "urlpattern-polyfill@10.1.0";

/// The JavaScript SDK (`guest-sdk/js`), as built into this binary.
const SDK: [(&str, &str); 5] = [
    ("index.js", include_str!("../../guest-sdk/js/index.js")),
    ("index.d.ts", include_str!("../../guest-sdk/js/index.d.ts")),
    ("yjs.js", include_str!("../../guest-sdk/js/yjs.js")),
    ("yjs.d.ts", include_str!("../../guest-sdk/js/yjs.d.ts")),
    (
        "package.json",
        include_str!("../../guest-sdk/js/package.json"),
    ),
];

/// Where a room's source starts, in this order, unless `package.json` has a
/// `main`.
const ENTRIES: [&str; 8] = [
    "src/server.ts",
    "src/index.ts",
    "src/server.js",
    "src/index.js",
    "server.ts",
    "index.ts",
    "server.js",
    "index.js",
];

/// Build the room in `dir` (it has a `package.json`); its component.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    require_node()?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let package: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("package.json")).context("cannot read package.json")?,
    )
    .context("package.json is not JSON")?;
    let entry = entry(&dir, &package)?;
    let tools = Tools::find(&dir, &package)?;
    // The room's own npm dependencies (yjs, say), installed when missing.
    let wants = package["dependencies"]
        .as_object()
        .is_some_and(|d| !d.is_empty());
    if wants && !dir.join("node_modules").is_dir() {
        npm(&dir, &["install", "--no-audit", "--no-fund"])?;
    }
    let cache = cache_dir()?;
    let sdk = write_files(&cache.join("sdk"), &SDK)?;
    let wit = write_files(&cache.join("wit"), &dormouse_host::wit::SOURCES)?;
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    if depends_on(&package, "typescript") {
        type_check(&dir, &dist, &sdk)?;
    }
    let bundle = dist.join("room.js");
    let wasm = dist.join("room.wasm");

    // The entry is generated, fed on stdin, and resolved from the project.
    let source = format!(
        "import Server from {entry:?};\nimport {{ serve }} from \"dormouse\";\nconst room = serve(Server);\nexport const hooks = room.hooks;\nexport const timerHooks = room.timerHooks;\nexport const lobbyHooks = room.lobbyHooks;\nexport const cronHooks = room.cronHooks;\nexport const answerHooks = room.answerHooks;\n",
        entry = format!("./{entry}")
    );
    let esbuild = |inject: Option<&Path>| {
        let mut esbuild = Command::new(&tools.esbuild);
        esbuild
            .current_dir(&dir)
            .args([
                "--bundle",
                "--format=esm",
                "--platform=browser",
                "--target=es2022",
            ])
            .args(["--sourcefile=dormouse-entry.js", "--log-level=warning"])
            .arg("--external:dormouse:room/*")
            .arg(format!("--alias:dormouse={}", sdk.display()))
            // The SDK's own imports (yjs, for `dormouse/yjs`) resolve from the
            // room's dependencies.
            .env("NODE_PATH", dir.join("node_modules"))
            .arg(format!("--outfile={}", bundle.display()));
        if let Some(inject) = inject {
            esbuild.arg(format!("--inject:{}", inject.display()));
        }
        run_tool(esbuild, source.as_bytes(), "esbuild")
    };
    esbuild(None)?;
    let bundled = std::fs::read_to_string(&bundle)
        .with_context(|| format!("cannot read {}", bundle.display()))?;
    if bundled.contains("URLPattern") {
        esbuild(Some(&url_pattern()?))?;
    }

    let mut componentize = Command::new(&tools.componentize);
    componentize
        .arg(&bundle)
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "room", "-d", "http", "fetch-event"])
        // Some libraries read `location` as they load (lib0, under yjs):
        // give it one at build time, as a page would have.
        .args(["--runtime-args", "--init-location http://localhost/", "-o"])
        .arg(&wasm);
    run_tool(componentize, b"", "componentize-js")?;
    Ok(wasm)
}

/// Whether package.json lists `name` among its dependencies.
fn depends_on(package: &serde_json::Value, name: &str) -> bool {
    ["dependencies", "devDependencies"]
        .iter()
        .any(|d| package[d].get(name).is_some())
}

/// `tsc --noEmit` over the project, through a tsconfig made in `dist/`: it
/// extends the project's own (when there is one) and maps `dormouse` to
/// the SDK's types, so a room checks against what it is built with.
fn type_check(dir: &Path, dist: &Path, sdk: &Path) -> anyhow::Result<()> {
    let tsc = dir.join("node_modules").join(".bin").join("tsc");
    if !tsc.is_file() {
        npm(dir, &["install", "--no-audit", "--no-fund"])?;
    }
    let own = dir.join("tsconfig.json");
    let mut config = serde_json::json!({
        "compilerOptions": {
            "noEmit": true,
            "skipLibCheck": true,
            "paths": {
                "dormouse": [sdk.join("index.d.ts")],
                "dormouse/yjs": [sdk.join("yjs.d.ts")],
            },
        },
        "include": [dir.join("src")],
    });
    if own.is_file() {
        config["extends"] = serde_json::json!(own);
    } else {
        // What `dormouse new --lang ts` writes.
        let options = &mut config["compilerOptions"];
        options["target"] = "es2022".into();
        options["module"] = "es2022".into();
        options["moduleResolution"] = "bundler".into();
        options["strict"] = true.into();
    }
    let path = dist.join("tsconfig.dormouse.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut check = Command::new(&tsc);
    check.current_dir(dir).arg("-p").arg(&path);
    run_tool(check, b"", "tsc (the type check)")
}

fn require_node() -> anyhow::Result<()> {
    let found = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !found.is_ok_and(|s| s.success()) {
        bail!(
            "building a TypeScript or JavaScript room needs Node.js and npm: install them (https://nodejs.org, or `apt-get install nodejs npm`)"
        );
    }
    Ok(())
}

/// The room's source file, relative to `dir`.
fn entry(dir: &Path, package: &serde_json::Value) -> anyhow::Result<String> {
    if let Some(main) = package["main"].as_str() {
        if !dir.join(main).is_file() {
            bail!("package.json's main, {main}, does not exist");
        }
        return Ok(main.trim_start_matches("./").to_owned());
    }
    ENTRIES
        .iter()
        .find(|e| dir.join(e).is_file())
        .map(|e| (*e).to_owned())
        .with_context(|| {
            format!(
                "{} has no room source: add src/server.ts (or set \"main\" in package.json)",
                dir.display()
            )
        })
}

/// The two tools' executables.
struct Tools {
    esbuild: PathBuf,
    componentize: PathBuf,
}

impl Tools {
    fn find(dir: &Path, package: &serde_json::Value) -> anyhow::Result<Tools> {
        let pins = |name: &str| depends_on(package, name);
        let local = dir.join("node_modules").join(".bin");
        if pins("esbuild") && pins("@bytecodealliance/componentize-js") {
            if !local.join("componentize-js").is_file() || !local.join("esbuild").is_file() {
                npm(dir, &["install", "--no-audit", "--no-fund"])?;
            }
            return Ok(Tools {
                esbuild: local.join("esbuild"),
                componentize: local.join("componentize-js"),
            });
        }
        let versions = format!("{COMPONENTIZE_JS}+{ESBUILD}").replace(['/', '@'], "_");
        let cache = cache_dir()?.join("js-tools").join(versions);
        let bin = cache.join("node_modules").join(".bin");
        if !bin.join("componentize-js").is_file() || !bin.join("esbuild").is_file() {
            install_once(&cache, &[COMPONENTIZE_JS, ESBUILD])?;
        }
        Ok(Tools {
            esbuild: bin.join("esbuild"),
            componentize: bin.join("componentize-js"),
        })
    }
}

/// The `URLPattern` polyfill, installed once in the cache, as a module that
/// sets the global. componentize-js's SpiderMonkey has no Unicode property
/// escapes (`\p{ID_Start}` is a syntax error there), which the polyfill
/// uses only to tell which characters may name a group (`:name`): they
/// become ASCII letters, digits, `$` and `_` as the standard has them, and
/// any character from U+00AA up (a superset of the non-ASCII ones).
fn url_pattern() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?
        .join("js-polyfills")
        .join(URLPATTERN.replace(['/', '@'], "_"));
    let shim = cache.join("dormouse-urlpattern.js");
    if shim.is_file() {
        return Ok(shim);
    }
    let dist = cache.join("node_modules/urlpattern-polyfill/dist/urlpattern.js");
    if !dist.is_file() {
        install_once(&cache, &[URLPATTERN])?;
    }
    let source = std::fs::read_to_string(&dist)
        .with_context(|| format!("cannot read {}", dist.display()))?;
    let (start, cont) = (r"\p{ID_Start}", r"\p{ID_Continue}");
    if !source.contains(start) || !source.contains(cont) {
        bail!("{URLPATTERN} changed: {} has no {start}", dist.display());
    }
    let patched = source
        .replace(start, r"A-Za-z\u00AA-\u{10FFFF}")
        .replace(cont, r"0-9A-Za-z\u00AA-\u{10FFFF}");
    let module = cache.join("urlpattern.js");
    std::fs::write(&module, patched)
        .with_context(|| format!("cannot write {}", module.display()))?;
    std::fs::write(
        &shim,
        "import { URLPattern } from \"./urlpattern.js\";\nglobalThis.URLPattern ??= URLPattern;\n",
    )
    .with_context(|| format!("cannot write {}", shim.display()))?;
    Ok(shim)
}

/// Install pinned npm `packages` into a folder of the cache (a build
/// that finds them there installs nothing).
fn install_once(cache: &Path, packages: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    eprintln!("dormouse: installing {} (once)", packages.join(" and "));
    let mut args = vec!["install", "--no-audit", "--no-fund", "--prefix", "."];
    args.extend_from_slice(packages);
    npm(cache, &args)
}

fn npm(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .context("cannot run npm (it comes with Node.js)")?;
    if !status.success() {
        bail!("`npm {}` in {} failed", args.join(" "), dir.display());
    }
    Ok(())
}

/// `~/.cache/dormouse` (or `$XDG_CACHE_HOME/dormouse`).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set: no cache dir for the JavaScript tools")?;
    Ok(base.join("dormouse"))
}

/// Write `files` into a folder named by their content (so builds by two
/// `dormouse` versions never mix); the folder.
pub(crate) fn write_files(base: &Path, files: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let mut all = Vec::new();
    for (name, text) in files {
        all.extend_from_slice(name.as_bytes());
        all.extend_from_slice(text.as_bytes());
    }
    let digest = hex::encode(&sha2::Sha256::digest(&all)[..8]);
    let dir = base.join(digest);
    if !dir.is_dir() {
        let tmp = base.join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        for (name, text) in files {
            let path = tmp.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
        }
        // Another build may have won the race; its copy is the same.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(dir)
}

/// Run a tool, its output shown on stderr (stdout is the built path's);
/// fail naming it.
pub(crate) fn run_tool(mut cmd: Command, input: &[u8], name: &str) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {name}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    std::io::stderr().write_all(&out.stdout)?;
    if !out.status.success() {
        bail!("{name} failed (see its errors above)");
    }
    Ok(())
}
