//! `dormouse new NAME`: a room crate that builds, tests and deploys as it is.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the SDK is: this build's own source tree when it is there (a
/// checkout of the Dormouse repository), else crates.io.
fn sdk_dependency() -> String {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    match sdk.canonicalize() {
        Ok(path) => format!(
            "dormouse-sdk = {{ path = {:?} }}",
            path.display().to_string()
        ),
        Err(_) => format!("dormouse-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    }
}

/// Make the crate in `./NAME`; its folder.
pub fn new_room(name: &str) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        bail!("room crate names are lowercase letters, digits, - and _, starting with a letter");
    }
    let dir = PathBuf::from(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {name}"))?;
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# A room is a Wasm component: `dormouse build` compiles it for wasm32-wasip2.
[lib]
crate-type = ["cdylib"]

[dependencies]
{sdk}

# Its own workspace, so it builds wherever it is.
[workspace]

[profile.release]
opt-level = "s"
"#,
        sdk = sdk_dependency()
    );
    let lib = r##"//! A Dormouse room: echoes every message to everyone, and counts them in storage.
//!
//! Build: `dormouse build .`   Serve: `dormouse dev .`
//! Deploy: `dormouse deploy . --party main --server http://127.0.0.1:1999`

use dormouse_sdk::{connections, storage, Connection, Message, Request, Response, Room};

#[derive(Default)]
struct MyRoom;

/// What the room answers to a text message; plain logic, tested below.
fn reply(text: &str, count: u64) -> String {
    format!("#{count}: {text}")
}

impl Room for MyRoom {
    fn on_message(&mut self, _conn: &Connection, message: Message) {
        let Message::Text(text) = message else { return };
        // Guest memory does not survive hibernation: the count lives in storage.
        let count: u64 = storage::get_json("count").ok().flatten().unwrap_or(0) + 1;
        storage::put_json("count", &count).ok();
        connections::broadcast(Message::Text(reply(&text, count)), &[]).ok();
    }

    fn on_request(&mut self, _request: Request) -> Response {
        let count: u64 = storage::get_json("count").ok().flatten().unwrap_or(0);
        Response::text(200, count.to_string())
    }
}

dormouse_sdk::export!(MyRoom);

#[cfg(test)]
mod tests {
    #[test]
    fn replies_number_the_messages() {
        assert_eq!(super::reply("hi", 3), "#3: hi");
    }
}
"##;
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(dir.join("src").join("lib.rs"), lib)?;
    std::fs::write(dir.join(".gitignore"), "/target\n/.dormouse\n")?;
    Ok(dir)
}
