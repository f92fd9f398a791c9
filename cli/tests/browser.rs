//! Pages in a real browser: the `dormouse` binary runs `dormouse dev` on an
//! example, as a person would, and Debian's chromium (driven by
//! playwright-core, `tests/node/browser.mjs`) opens its page twice and uses it.
//! Needs node and chromium; `scripts/test.sh` installs what is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// Fail with one line naming what is missing.
fn require(program: &str, what: &str) {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "{program} is missing: {what} (scripts/test.sh installs it)"
    );
}

/// `npm ci` (or `npm run build`) in `dir`, unless `done` exists already.
async fn npm(dir: &Path, args: &[&str], done: &Path) {
    if done.exists() {
        return;
    }
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .status()
        .await
        .expect("npm runs");
    assert!(status.success(), "npm {args:?} in {} failed", dir.display());
}

/// `dormouse dev DIR` on a free port with its own data dir; the child and
/// its address, once it serves.
async fn dev(example: &str) -> (Child, String) {
    let data = repo()
        .join("target")
        .join("test-data")
        .join(format!("browser-{example}-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_dormouse"))
        .args(["dev", &format!("examples/{example}")])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .current_dir(repo())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dormouse dev starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    // The first build of the example may take a while on a fresh machine.
    let addr = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            let line = strip_ansi(&line);
            if line.contains("dormouse listening")
                && let Some(at) = line.split("addr=").nth(1)
            {
                return at.split_whitespace().next().expect("an address").to_owned();
            }
        }
        panic!("dormouse dev exited before it listened");
    })
    .await
    .expect("dormouse dev listens in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// One plain HTTP request to `addr`; the status and the body.
async fn dormouse_http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("dev listens");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.expect("an answer");
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the pages' screenshots go: `KIND.png` after a run that passed (the
/// README's come from here), `KIND-failed-N.png` of every page after one
/// that failed.
fn shots() -> PathBuf {
    let dir = repo().join("target").join("browser-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Open the example's page in chromium and act on it; the lines printed.
async fn browse(example: &str, addr: &str) -> Vec<String> {
    let node_dir = repo().join("tests").join("node");
    npm(
        &node_dir,
        &["ci", "--no-audit", "--no-fund"],
        &node_dir.join("node_modules").join("playwright-core"),
    )
    .await;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(node_dir.join("browser.mjs"))
            .args([example, &format!("http://{addr}")])
            .arg(shots())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends in time")
    .expect("node runs");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        out.status.success(),
        "{example} page failed after {lines:?}"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_in_chromium() {
    require("node", "install Node.js");
    require("chromium", "apt-get install chromium");
    let (_dev, addr) = dev("chat").await;
    // dev is as closed as serve: its admin API wants the token it made.
    let (status, _) = dormouse_http(&addr, "GET", "/_dormouse/parties").await;
    assert_eq!(status, 401, "dev's admin API answered without its token");
    let lines = browse("chat", &addr).await;
    assert_eq!(
        lines,
        [
            "both connected",
            "messages and names seen",
            "history after reload"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yjs_editor_page_in_chromium() {
    require("node", "install Node.js");
    require("chromium", "apt-get install chromium");
    // The page's own documented build: npm packages bundled by esbuild.
    let page = repo().join("examples").join("yjs").join("page");
    npm(
        &page,
        &["ci", "--no-audit", "--no-fund"],
        &page.join("node_modules").join("yjs"),
    )
    .await;
    npm(&page, &["run", "build"], Path::new("/nonexistent")).await;
    let (_dev, addr) = dev("yjs").await;
    let lines = browse("yjs", &addr).await;
    assert_eq!(
        lines,
        [
            "both synced",
            "typing at once converges",
            "presence shows both",
            "offline edits merge",
            "a closed page leaves",
            "text after reload"
        ]
    );
}
