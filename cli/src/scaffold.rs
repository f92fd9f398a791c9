//! `dormouse new NAME [--lang rust|ts|js|py]`: a room that builds, tests and
//! deploys as it is: a Rust crate, a TypeScript/JavaScript package, or a
//! Python `app.py`.

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

/// The languages `dormouse new` writes a room in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    TypeScript,
    JavaScript,
    Python,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Lang, String> {
        match s {
            "rust" | "rs" => Ok(Lang::Rust),
            "ts" | "typescript" => Ok(Lang::TypeScript),
            "js" | "javascript" => Ok(Lang::JavaScript),
            "py" | "python" => Ok(Lang::Python),
            other => Err(format!("unknown language {other}: use rust, ts, js or py")),
        }
    }
}

/// Make the room in `./NAME`; its folder.
pub fn new_room(name: &str, lang: Lang) -> anyhow::Result<PathBuf> {
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
    if lang == Lang::Python {
        return new_py_room(&dir);
    }
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {name}"))?;
    if lang != Lang::Rust {
        return new_js_room(name, &dir, lang);
    }
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

/// Where the JavaScript SDK is for an editor's types: this build's source
/// tree when it is there. (The build itself always uses the SDK built into
/// `dormouse`.)
fn js_sdk_dependency() -> Option<String> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/js");
    let path = sdk.canonicalize().ok()?;
    Some(format!(",\n    \"dormouse\": \"file:{}\"", path.display()))
}

fn new_js_room(name: &str, dir: &Path, lang: Lang) -> anyhow::Result<PathBuf> {
    let ts = lang == Lang::TypeScript;
    let typescript = if ts {
        ",\n    \"typescript\": \"5.9.3\""
    } else {
        ""
    };
    // The tools are pinned here; `dormouse build` installs them with npm.
    let package = format!(
        r#"{{
  "name": "{name}",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "dormouse build .",
    "dev": "dormouse dev .",
    "test": "{test_script}"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "0.23.0",
    "esbuild": "0.25.12"{typescript}{sdk}
  }}
}}
"#,
        sdk = js_sdk_dependency().unwrap_or_default(),
        // Node runs JavaScript tests as they are; TypeScript ones go
        // through esbuild (already a dependency) first.
        test_script = if ts {
            "esbuild test/server.test.ts --bundle --platform=node --format=esm --outfile=dist/test.mjs && node --test dist/test.mjs"
        } else {
            "node --test test/"
        },
    );
    let (file, header, types) = if ts {
        (
            "server.ts",
            "import type * as Party from \"dormouse\";\n",
            (
                "implements Party.Server ",
                "readonly room: Party.Room",
                "message: string | ArrayBuffer",
                ": Promise<number>",
            ),
        )
    } else {
        ("server.js", "", ("", "room", "message", ""))
    };
    let (implements, room, message, returns) = types;
    let server = format!(
        r#"// A Dormouse room, written as a PartyKit server: echoes every message to
// everyone, and counts them in storage.
//
// Build: `dormouse build .`   Serve: `dormouse dev .`
// Deploy: `dormouse deploy . --party main --server http://127.0.0.1:1999`
{header}
/** What the room answers to a text message; plain logic, tested in test/. */
export function reply(text, count) {{
  return `#${{count}}: ${{text}}`;
}}

export default class Room {implements}{{
  constructor({room}) {{
    this.room = room;
  }}

  // Guest memory does not survive hibernation: the count lives in storage.
  async count(){returns} {{
    return (await this.room.storage.get("count")) ?? 0;
  }}

  async onMessage({message}) {{
    if (typeof message !== "string") return;
    const count = (await this.count()) + 1;
    await this.room.storage.put("count", count);
    this.room.broadcast(reply(message, count));
  }}

  async onRequest() {{
    return new Response(String(await this.count()));
  }}
}}
"#
    );
    // The JavaScript above, typed: parameters and the storage value typed,
    // and the field declared by the constructor.
    let server = if ts {
        server
            .replace(
                "export function reply(text, count)",
                "export function reply(text: string, count: number)",
            )
            .replace(
                "constructor(readonly room: Party.Room) {\n    this.room = room;\n  }",
                "constructor(readonly room: Party.Room) {}",
            )
            .replace("storage.get(\"count\")", "storage.get<number>(\"count\")")
    } else {
        server
    };
    let test = format!(
        r##"// Plain logic runs in Node: `npm test`.
import {{ test }} from "node:test";
import assert from "node:assert/strict";
import {{ reply }} from "../src/{module}";

test("replies number the messages", () => {{
  assert.equal(reply("hi", 3), "#3: hi");
}});
"##,
        module = if ts { "server.ts" } else { "server.js" }
    );
    std::fs::write(dir.join("package.json"), package)?;
    std::fs::write(dir.join("src").join(file), server)?;
    std::fs::create_dir_all(dir.join("test"))?;
    let test_file = if ts {
        "server.test.ts"
    } else {
        "server.test.js"
    };
    std::fs::write(dir.join("test").join(test_file), test)?;
    if ts {
        std::fs::write(
            dir.join("tsconfig.json"),
            "{\n  \"compilerOptions\": {\n    \"target\": \"es2022\",\n    \"module\": \"es2022\",\n    \"moduleResolution\": \"bundler\",\n    \"strict\": true,\n    \"noEmit\": true,\n    \"allowImportingTsExtensions\": true\n  }\n}\n",
        )?;
    }
    std::fs::write(dir.join(".gitignore"), "/node_modules\n/dist\n/.dormouse\n")?;
    Ok(dir.to_owned())
}

fn new_py_room(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let app = r##""""A Dormouse room: echoes every message to everyone, and counts them in storage.

Build: `dormouse build .`   Serve: `dormouse dev .`   Test: `python3 -m unittest`
Deploy: `dormouse deploy . --party main --server http://127.0.0.1:1999`
"""

import dormouse
from dormouse import Response


def reply(text: str, count: int) -> str:
    """What the room answers to a text message; plain logic, tested in test_app.py."""
    return f"#{count}: {text}"


class Server(dormouse.Server):
    def count(self) -> int:
        # Guest memory does not survive hibernation: the count lives in storage.
        return self.room.storage.get("count") or 0

    def on_message(self, message, sender):
        if not isinstance(message, str):
            return
        count = self.count() + 1
        self.room.storage.put("count", count)
        self.room.broadcast(reply(message, count))

    def on_request(self, request):
        return Response(str(self.count()))
"##;
    // The SDK exists only inside a component; the test stubs it, so the
    // plain logic runs under any Python.
    let test = r##"import sys
import types
import unittest

sys.modules.setdefault("dormouse", types.SimpleNamespace(Server=object, Response=None))

from app import reply  # noqa: E402


class ReplyTest(unittest.TestCase):
    def test_replies_number_the_messages(self):
        self.assertEqual(reply("hi", 3), "#3: hi")


if __name__ == "__main__":
    unittest.main()
"##;
    std::fs::write(dir.join("app.py"), app)?;
    std::fs::write(dir.join("test_app.py"), test)?;
    std::fs::write(dir.join(".gitignore"), "/dist\n/.dormouse\n__pycache__/\n")?;
    Ok(dir.to_owned())
}
