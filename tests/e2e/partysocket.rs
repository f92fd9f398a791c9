//! The official `partysocket` npm client: connects, relays, and reconnects
//! after a host restart. The test installs the npm packages it needs.

use std::process::Stdio;

use dormouse_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `npm install` in tests/node once, when partysocket is missing.
pub(crate) async fn install() {
    let dir = repo().join("tests").join("node");
    if dir.join("node_modules").join("partysocket").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .await
        .expect("npm runs (node and npm are required for this test)");
    assert!(status.success(), "npm install failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partysocket_relays_and_reconnects_after_a_restart() {
    install().await;
    let server = Server::start(Options::main("relay")).await;
    let script = repo().join("tests").join("node").join("relay-restart.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .arg(server.addr.to_string())
        .arg("ps-room")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("first relay in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("relayed 1"));
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 2.0)
        .await;

    let options = server.stop().await;
    let server = Server::start(options).await;
    let line = tokio::time::timeout(WAIT * 3, lines.next_line())
        .await
        .expect("second relay in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("relayed 2"));
    let status = tokio::time::timeout(WAIT, node.wait())
        .await
        .expect("node exits")
        .expect("wait");
    assert!(status.success());
    server.stop().await;
}
