//! Room-to-room calls that re-enter (`rooms.start`, `defer`, `respond`, as
//! the JavaScript SDK's `fetch` uses them): a room that awaits another
//! room's answer takes its other events meanwhile, calls back into it
//! included, as a Durable Object does. The cycle is PartyKit's
//! link-counter's: page -> counter -> the same page -> counter -> page.

use dormouse_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_of_rooms_completes_while_each_awaits_the_other() {
    let server = Server::start(Options::main("surface-ts").idle(50)).await;
    let mut logs = server.host.logs().subscribe();
    let mut a = server.ws("/parties/main/page-a").await;
    let mut b = server.ws("/parties/main/page-b").await;
    // Two pages at once, each waiting on the counter, which waits on each.
    send_text(&mut a, "visit").await;
    send_text(&mut b, "visit").await;
    let (count_a, visited_a) = (recv_text(&mut a).await, recv_text(&mut a).await);
    let (count_b, visited_b) = (recv_text(&mut b).await, recv_text(&mut b).await);
    let mut counts = [count_a.clone(), count_b.clone()];
    counts.sort();
    assert_eq!(counts, ["count 1", "count 2"]);
    // Each page heard its own count before its own call's answer.
    assert_eq!(visited_a, format!("visited {} told", &count_a[6..]));
    assert_eq!(visited_b, format!("visited {} told", &count_b[6..]));
    // The writes on both sides of each await were committed.
    assert_eq!(ask(&mut a, "get:count").await, count_a[6..]);
    let mut counter = server.ws("/parties/main/all-pages").await;
    assert_eq!(ask(&mut counter, "get:visits").await, "2");

    // Over plain HTTP: the counter's on-request defers its answer while it
    // tells a page that was hibernated.
    server.wait_metric(NONE_AWAKE, 0.0).await;
    let mut c = server.ws("/parties/main/page-c").await;
    let answer = server
        .http("POST", "/parties/main/all-pages/visit?from=page-c", "")
        .await;
    assert_eq!(answer, (200, "3 told".into()));
    assert_eq!(recv_text(&mut c).await, "count 3");
    // Nothing was refused as a deadlock, nothing trapped.
    let traps = "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}";
    assert_eq!(server.metric(traps).await, 0.0);
    while let Ok(line) = logs.try_recv() {
        assert!(!line.message.contains("deadlock"), "{}", line.message);
        assert_ne!(line.level, "error", "{}", line.message);
    }
    server.stop().await;
}

/// Two tabs opened at once on two pages, each page's onConnect waiting on
/// the counter, which calls each page back; then a restart, and the same
/// again: nothing of the calls outlives the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_visit_from_on_connect_open_at_once_and_after_a_restart() {
    let mut options = Options::main("surface-ts");
    for round in 0..2 {
        let server = Server::start(options).await;
        let (mut a, mut b) = tokio::join!(
            server.ws("/parties/main/tab-a?visit=1"),
            server.ws("/parties/main/tab-b?visit=1")
        );
        let mut counts = Vec::new();
        for tab in [&mut a, &mut b] {
            let count = recv_text(tab).await;
            let n = count
                .strip_prefix("count ")
                .expect("the count first")
                .to_owned();
            assert_eq!(recv_text(tab).await, format!("visited {n} told"));
            counts.push(n);
        }
        counts.sort();
        let first = round * 2 + 1;
        assert_eq!(counts, [first.to_string(), (first + 1).to_string()]);
        options = server.stop().await;
    }
}

/// What a hook wrote before its await committed with it; what it wrote
/// after the await belongs to the hook that brought the answer, and a throw
/// there takes back only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throw_after_an_await_fails_only_what_came_after() {
    let server = Server::start(Options::main("surface-ts")).await;
    let mut logs = server.host.logs().subscribe();
    let mut a = server.ws("/parties/main/page-f").await;
    send_text(&mut a, "visit-fail").await;
    // The counter's call back into this page ran while it awaited.
    assert_eq!(recv_text(&mut a).await, "count 1");
    logged(&mut logs, "onMessage threw Error: failed after the answer").await;
    let traps = "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}";
    server.wait_metric(traps, 1.0).await;
    assert_eq!(ask(&mut a, "get:before").await, "true");
    assert_eq!(ask(&mut a, "get:after").await, "null");
    assert_eq!(ask(&mut a, "get:count").await, "1");
    server.stop().await;
}

/// How many rooms of the test's party are awake.
const NONE_AWAKE: &str = "dormouse_rooms{party=\"main\",state=\"awake\"}";

/// The same in Rust (`rooms::start`, `defer`, `respond`, `on_answer`): a ->
/// b -> a, which `rooms::fetch` refuses as a deadlock, completes when a
/// starts its call instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_room_that_starts_its_call_is_called_back() {
    let server = Server::start(Options {
        parties: vec![("main", "probe"), ("other", "probe")],
        ..Options::main("probe")
    })
    .await;
    let cycle = "party=other&room=b&next=main%2Fa";
    let (status, body) = server
        .http("GET", &format!("/parties/main/a?op=call&{cycle}"), "")
        .await;
    assert_eq!(status, 508, "{body}");
    assert_eq!(
        server
            .http("GET", &format!("/parties/main/a?op=start&{cycle}"), "")
            .await,
        (200, "probe main/a".into())
    );
    server.stop().await;
}

/// In Python (`room.start`, `on_answer`): a room calls its own on-request,
/// which `fetch` would refuse, and hears the answer in a later hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_room_calls_itself_without_waiting() {
    let server = Server::start(Options::main("ticker-py")).await;
    let mut client = server.ws("/parties/main/p").await;
    assert_eq!(ask(&mut client, "call-self").await, "started");
    assert_eq!(recv_text(&mut client).await, "answer 200 hello from p");
    server.stop().await;
}
