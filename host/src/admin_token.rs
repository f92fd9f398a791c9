//! The admin token `dormouse serve` makes on its first start, where the
//! CLI on the same machine finds it, and how a secret is compared.
//!
//! Trusting every loopback peer is unsafe behind a reverse proxy on the same
//! machine (every request then comes from loopback), and the admin API
//! uploads code. So `serve` never runs without a token: with none given, it
//! makes a random one in its data dir, readable by its own user only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The token file's name in the data dir.
const FILE: &str = "admin-token";

/// The data dir's token, made now (mode 0600) when there is none yet.
/// Returns the token and the file it lives in.
pub fn ensure(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join(FILE);
    if let Some(token) = read(&path)? {
        return Ok((token, path));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let token = format!("admin:{}", random_secret());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(token.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok((token, path))
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let token = read(&path)?.with_context(|| format!("{} is empty", path.display()))?;
            Ok((token, path))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// The token the CLI sends: `DORMOUSE_TOKEN`, else the one a server made
/// in the data dir of this folder (`./dormouse.toml`'s, or `./.dormouse`).
pub fn find() -> Option<String> {
    if let Ok(token) = std::env::var("DORMOUSE_TOKEN")
        && !token.is_empty()
    {
        return Some(token);
    }
    let data_dir = crate::config::Config::load(Path::new("dormouse.toml"))
        .map(|c| c.data_dir)
        .unwrap_or_else(|_| crate::config::Config::default().data_dir);
    read(&data_dir.join(FILE)).ok().flatten()
}

fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A fresh secret: two v4 UUIDs, 244 random bits from the OS's generator,
/// as 64 hex digits.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Equal bytes, in time that depends only on the lengths: for comparing a
/// secret (a token, a signature) with what a client sent.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_kept() {
        let dir = std::env::temp_dir().join(format!("dormouse-token-{}", uuid::Uuid::new_v4()));
        let (token, path) = ensure(&dir).expect("made");
        assert!(
            token.starts_with("admin:") && token.len() == 6 + 64,
            "{token}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, _) = ensure(&dir).expect("read back");
        assert_eq!(again, token, "a restart keeps the token");
        let _ = std::fs::remove_dir_all(dir);
    }
}
