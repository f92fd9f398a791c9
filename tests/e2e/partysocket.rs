//! The official `partysocket` npm client: connects, relays, and reconnects
//! after a host restart. The test installs the npm packages it needs.

use dormouse_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partysocket_relays_and_reconnects_after_a_restart() {
    let server = Server::start(Options::main("relay")).await;
    let (mut node, mut lines) =
        node("relay-restart.mjs", &[&server.addr.to_string(), "ps-room"]).await;
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
