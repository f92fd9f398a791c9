//! The commands that talk to a running server through its admin API:
//! `deploy`, `versions`, `rollback`, `rooms` and `tail`.

use std::path::PathBuf;

use anyhow::Context;

use crate::client::Admin;
use crate::project;
use hyper::Method;

pub(crate) async fn rooms(server: &str) -> anyhow::Result<()> {
    let body = Admin::new(server)?
        .call(Method::GET, "/_dormouse/rooms", Vec::new())
        .await?;
    let rooms: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    // A cluster's node names each room's holder.
    let clustered = rooms.iter().any(|r| r.get("node").is_some());
    let node_header = if clustered {
        format!("{:<10} ", "NODE")
    } else {
        String::new()
    };
    println!(
        "{:<12} {:<24} {node_header}{:<11} {:>6} {:>10} LAST EVENT",
        "PARTY", "ROOM", "STATE", "CONNS", "STORAGE"
    );
    for r in rooms {
        let last = r["last_event_ms"].as_u64().unwrap_or(0);
        let ago = if last == 0 {
            "-".to_owned()
        } else {
            let ms = dormouse_host::clock::now_ms().saturating_sub(last);
            format!("{:.1}s ago", ms as f64 / 1000.0)
        };
        let node = if clustered {
            format!("{:<10} ", r["node"].as_str().unwrap_or(""))
        } else {
            String::new()
        };
        println!(
            "{:<12} {:<24} {node}{:<11} {:>6} {:>10} {ago}",
            r["party"].as_str().unwrap_or(""),
            r["room"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["connections"].as_u64().unwrap_or(0),
            r["storage_bytes"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

pub(crate) async fn crons(server: &str) -> anyhow::Result<()> {
    let body = Admin::new(server)?
        .call(Method::GET, "/_dormouse/crons", Vec::new())
        .await?;
    let crons: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    println!(
        "{:<12} {:<16} {:<16} {:<14} {:<14} RESULT",
        "PARTY", "CRON", "SCHEDULE", "NEXT", "LAST RUN"
    );
    // Times as distances from now, as `dormouse rooms` shows them.
    let now = dormouse_host::clock::now_ms() as i64;
    let when = |v: &serde_json::Value| match v.as_u64() {
        None => "-".to_owned(),
        Some(t) if t as i64 >= now => format!("in {:.0}s", (t as i64 - now) as f64 / 1000.0),
        Some(t) => format!("{:.0}s ago", (now - t as i64) as f64 / 1000.0),
    };
    for c in crons {
        println!(
            "{:<12} {:<16} {:<16} {:<14} {:<14} {}",
            c["party"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
            c["schedule"].as_str().unwrap_or(""),
            when(&c["next_ms"]),
            when(&c["last_run_ms"]),
            c["last_result"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

pub(crate) async fn tail(
    server: &str,
    party: Option<String>,
    room: Option<String>,
) -> anyhow::Result<()> {
    let encode = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut path = "/_dormouse/logs?".to_owned();
    if let Some(p) = party {
        path += &format!("party={}&", encode(&p));
    }
    if let Some(r) = room {
        path += &format!("room={}&", encode(&r));
    }
    eprintln!("dormouse: tailing {server} (Ctrl-C to stop)");
    Admin::new(server)?
        .stream(&path, |line| {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(l) if l.get("message").is_some() => println!(
                    "{:<5} {}{}/{} {}",
                    l["level"].as_str().unwrap_or(""),
                    // A cluster's lines name their node.
                    l["node"]
                        .as_str()
                        .map_or(String::new(), |n| format!("[{n}] ")),
                    l["party"].as_str().unwrap_or(""),
                    l["room"].as_str().unwrap_or(""),
                    l["message"].as_str().unwrap_or("")
                ),
                _ => println!("{line}"),
            }
        })
        .await
}

/// The first 12 hex digits of a version's hash.
pub(crate) fn short(hash: &serde_json::Value) -> &str {
    let h = hash.as_str().unwrap_or("");
    &h[..h.len().min(12)]
}

pub(crate) async fn versions(server: &str) -> anyhow::Result<()> {
    let body = Admin::new(server)?
        .call(Method::GET, "/_dormouse/parties", Vec::new())
        .await?;
    let parties: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    for p in parties {
        let name = p["party"].as_str().unwrap_or("");
        println!("party {name} ({})", p["source"].as_str().unwrap_or(""));
        for v in p["versions"].as_array().into_iter().flatten() {
            let active = if v["version"] == p["active"] {
                "*"
            } else {
                " "
            };
            println!(
                "  {active} v{:<4} {} {:>9} bytes  by {}",
                v["version"].as_u64().unwrap_or(0),
                short(&v["hash"]),
                v["size"].as_u64().unwrap_or(0),
                v["token"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

pub(crate) async fn rollback(
    server: &str,
    party: &str,
    version: Option<u32>,
) -> anyhow::Result<()> {
    let path = match version {
        Some(v) => format!("/_dormouse/parties/{party}/rollback?version={v}"),
        None => format!("/_dormouse/parties/{party}/rollback"),
    };
    let body = Admin::new(server)?
        .call(Method::POST, &path, Vec::new())
        .await?;
    let d: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "party {party} is back on version {}; {} live rooms pick it up at their next wake",
        d["version"], d["rooms"]
    );
    Ok(())
}

/// `dormouse deploy`: build when given a crate, upload, report.
pub(crate) async fn deploy(path: PathBuf, party: &str, server: &str) -> anyhow::Result<()> {
    let admin = Admin::new(server)?;
    let wasm = if path.extension().is_some_and(|e| e == "wasm") {
        path
    } else {
        eprintln!("dormouse: building {}", path.display());
        let p = path.clone();
        tokio::task::spawn_blocking(move || project::build(&p)).await??
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    eprintln!(
        "dormouse: uploading {} ({} KiB) to {server}; it compiles there",
        wasm.display(),
        bytes.len() / 1024
    );
    let body = admin
        .call(Method::PUT, &format!("/_dormouse/parties/{party}"), bytes)
        .await?;
    let d: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "party {party} version {} ({}) is live; {} live rooms pick it up at their next wake, no connection dropped",
        d["version"],
        short(&d["hash"]),
        d["rooms"]
    );
    Ok(())
}
