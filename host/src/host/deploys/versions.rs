//! Deployed versions on disk (each component, under `DATA/versions/`), and
//! the compile cache: every component's precompiled form for this engine,
//! by content hash, in `compile_cache_dir` (by default the same folder). The
//! metadata (which versions, which is active) lives in storage.
//!
//! A restart loads the precompiled form, so it compiles nothing; when the
//! engine changed (a new Dormouse build or other settings), the form is
//! rebuilt from the component once. Configured parties go through the same
//! cache, and hosts that share a cache folder compile a component once.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::lock::lock;
use crate::metrics::Metrics;
use crate::room::instance::{Party, Runtime};

pub struct Versions {
    dir: PathBuf,
    /// Precompiled forms, `HASH-ENGINE.cwasm`.
    cache: PathBuf,
    /// Compile in a child process: the `dormouse` executable, and the
    /// limits its engine must be made with to match this one.
    compiler: Option<(PathBuf, crate::config::Limits)>,
    /// Hashes an upload (or a cluster's deploy) is saving and recording
    /// now, with how many: a party's delete leaves their files alone, even
    /// when it found them unused before the upload began (parties share a
    /// file when they deploy the same bytes). The lock also orders a delete's
    /// check-and-remove against a new pin.
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// A hash held against deletion until dropped ([`Versions::pin`]).
pub struct VersionPin {
    pins: Arc<Mutex<HashMap<String, usize>>>,
    hash: String,
}

impl Drop for VersionPin {
    fn drop(&mut self) {
        let mut pins = lock(&self.pins);
        if let Some(n) = pins.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.hash);
            }
        }
    }
}

/// The SHA-256 of a component, hex: its name on disk and in listings.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Versions {
    /// `cache`: where precompiled forms go (default: the versions folder);
    /// `compiler`: a `dormouse` executable to compile in (see `Config`).
    pub fn open(
        data_dir: &Path,
        cache: Option<&Path>,
        compiler: Option<(PathBuf, crate::config::Limits)>,
    ) -> anyhow::Result<Versions> {
        let dir = data_dir.join("versions");
        let cache = cache.map_or_else(|| dir.clone(), Path::to_owned);
        for d in [&dir, &cache] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        // Temporary files of writes a crash cut short: never renamed, never
        // read. (Not in a shared cache: another host may be writing there.)
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Versions {
            dir,
            cache,
            compiler,
            pins: Arc::default(),
        })
    }

    /// Hold a hash's files against a party's delete, from before they are
    /// saved until the version is recorded.
    pub fn pin(&self, hash: &str) -> VersionPin {
        *lock(&self.pins).entry(hash.to_owned()).or_default() += 1;
        VersionPin {
            pins: self.pins.clone(),
            hash: hash.to_owned(),
        }
    }

    /// Delete the files of components no party uses any more: of
    /// `hashes`, those neither pinned by an upload in flight nor `in_use`
    /// (asked again here, under the pins' lock: an upload of the same bytes
    /// may have been recorded since the caller looked).
    /// (Their precompiled forms go too when the cache is the versions folder;
    /// a shared cache is left as it is: other hosts may use them.)
    pub fn remove(
        &self,
        hashes: &[String],
        in_use: impl Fn(&str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let pins = lock(&self.pins);
        let mut unused = Vec::new();
        for h in hashes {
            if !pins.contains_key(h) && !in_use(h)? {
                unused.push(h.clone());
            }
        }
        let hashes = unused;
        if hashes.is_empty() {
            return Ok(());
        }
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hash = name.split(['.', '-']).next().unwrap_or_default();
            if hashes.iter().any(|h| h == hash) {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot delete {}", entry.path().display()))?;
            }
        }
        sync_dir(&self.dir)
    }

    fn wasm(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    /// The precompiled form's file: the engine's compatibility hash is in
    /// the name, so an engine never picks up another engine's code.
    fn cwasm(&self, runtime: &Runtime, hash: &str) -> PathBuf {
        let mut h = std::hash::DefaultHasher::new();
        runtime
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut h);
        self.cache.join(format!("{hash}-{:016x}.cwasm", h.finish()))
    }

    /// Whether a component's file is here.
    pub fn has(&self, hash: &str) -> bool {
        self.wasm(hash).is_file()
    }

    /// Keep an uploaded component as a version (compiled by [`Self::compile`]).
    pub fn save(&self, hash: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.wasm(hash), bytes)
    }

    /// Compile a component, or load its precompiled form from the cache (a
    /// hit); a fresh compile is cached for the next time.
    pub fn compile(
        &self,
        runtime: &Runtime,
        metrics: &Metrics,
        name: &str,
        bytes: &[u8],
        vars: BTreeMap<String, String>,
    ) -> anyhow::Result<Party> {
        let hash = hash(bytes);
        let cwasm = self.cwasm(runtime, &hash);
        if cwasm.is_file() {
            match deserialize(runtime, &cwasm) {
                Ok(component) => {
                    metrics.component_cache_hits.fetch_add(1, Relaxed);
                    tracing::info!(
                        party = name,
                        hash,
                        "loaded the precompiled component (cache hit)"
                    );
                    return Party::from_component(runtime, name, component, vars, bytes.len());
                }
                Err(e) => tracing::warn!(
                    party = name,
                    "precompiled form unusable, recompiling: {e:#}"
                ),
            }
        }
        metrics.component_cache_misses.fetch_add(1, Relaxed);
        // Compiled, then served from the file like a cache hit: the code is
        // then file-backed (shared, cheap). In a child process when there is
        // a compiler to run, so that the hundreds of MB Cranelift takes for
        // a large component leave with it; else here, and given back.
        let compiled = match &self.compiler {
            Some((exe, limits)) => {
                Party::check_header(name, bytes)?;
                compile_in_child(exe, limits, &self.cache.join("functions"), bytes)
                    .with_context(|| format!("party {name}: the component does not compile"))
            }
            None => Party::load(runtime, name, bytes, vars.clone()).and_then(|party| {
                party
                    .component
                    .serialize()
                    .map_err(anyhow::Error::from)
                    .context("cannot serialize the compiled component")
            }),
        };
        release_freed_memory();
        write_atomic(&cwasm, &compiled?)?;
        release_freed_memory();
        let component = match deserialize(runtime, &cwasm) {
            Ok(c) => c,
            // The executable on disk is another build than this process
            // (replaced by an upgrade): compile here instead.
            Err(e) if self.compiler.is_some() => {
                tracing::warn!(
                    party = name,
                    "the child's compile is not for this engine ({e:#}); compiling here"
                );
                let party = Party::load(runtime, name, bytes, vars.clone())?;
                write_atomic(
                    &cwasm,
                    &party.component.serialize().map_err(anyhow::Error::from)?,
                )?;
                party.component
            }
            Err(e) => return Err(e),
        };
        tracing::info!(party = name, hash, "compiled the component (cache miss)");
        Party::from_component(runtime, name, component, vars, bytes.len())
    }

    /// Load a stored version (through the compile cache).
    pub fn load(
        &self,
        runtime: &Runtime,
        metrics: &Metrics,
        name: &str,
        hash: &str,
        vars: BTreeMap<String, String>,
    ) -> anyhow::Result<Party> {
        let bytes = std::fs::read(self.wasm(hash)).with_context(|| {
            format!("party {name}: version {hash} is missing from the data dir")
        })?;
        self.compile(runtime, metrics, name, &bytes, vars)
    }
}

/// Run `dormouse compile-component`: the component on stdin, its
/// precompiled form on stdout, one line of error on stderr.
fn compile_in_child(
    exe: &Path,
    limits: &crate::config::Limits,
    functions: &Path,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(exe)
        .arg("compile-component")
        .arg("--memory-bytes")
        .arg(limits.instance_memory_bytes.to_string())
        .arg("--awake-rooms")
        .arg(limits.awake_rooms.to_string())
        .arg("--functions")
        .arg(functions)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    let input = bytes.to_vec();
    // Written from a thread: the child may fill stdout before reading all.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("it exited");
        anyhow::bail!("{}", line.trim_start_matches("dormouse: "));
    }
    Ok(out.stdout)
}

/// `dormouse compile-component`'s work: compile `bytes` with an engine made
/// from the same limits as the host's; the precompiled form.
pub fn compile_component(
    limits: &crate::config::Limits,
    functions: PathBuf,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let runtime = Runtime::new(limits, Some(functions))?;
    let component = Component::new(runtime.engine(), bytes).map_err(anyhow::Error::from)?;
    component.serialize().map_err(anyhow::Error::from)
}

/// Give freed memory back to the kernel. Cranelift allocates hundreds of MB
/// for a large component (a JavaScript room: ~450 MB) and frees it, and a
/// burst of wakes frees what their stores held, but glibc keeps freed pages
/// in its arenas, so without this the host stays that much larger after a
/// first deploy, or after many rooms woke and hibernated (`Host::start`
/// runs it then, in the background).
#[allow(unsafe_code)]
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free
    // lists and returns whole free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Load a precompiled component written by [`Versions::save`].
#[allow(unsafe_code)]
fn deserialize(runtime: &Runtime, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: wasmtime runs precompiled code as it is, so it must come from
    // a trusted compiler. This file was written by a Dormouse engine (this
    // host's, or its `dormouse compile-component` child) into the data dir
    // or the compile cache folder the operator configured; uploads never
    // write there. Its name carries the engine's compatibility hash, and
    // wasmtime checks compatibility again.
    unsafe { Component::deserialize_file(runtime.engine(), path) }.map_err(anyhow::Error::from)
}

/// Write a file as SQLite would, so a crash leaves the old file or the new
/// one, never half of it: a temporary name of its own (two uploads of the
/// same component never share one), fsync, rename, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a version file has a directory")?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_dir(dir)
}

/// Make a directory's entries (a rename, a delete) durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Party A's delete found a file unused; party B uploads the same bytes
    /// before A removes it. B's file stays, whichever comes first.
    #[test]
    fn a_delete_leaves_the_file_of_an_upload_in_flight_or_recorded() {
        let dir = std::env::temp_dir().join(format!("dormouse-versions-{}", uuid::Uuid::new_v4()));
        let versions = Versions::open(&dir, None, None).expect("open");
        let h = hash(b"component");
        let orphans = vec![h.clone()];
        // B's upload is in flight: pinned, then saved.
        let pin = versions.pin(&h);
        versions.save(&h, b"component").expect("save");
        versions.remove(&orphans, |_| Ok(false)).expect("remove");
        assert!(versions.has(&h), "an upload in flight keeps its file");
        // B recorded its version and let go: in use, so kept.
        drop(pin);
        versions.remove(&orphans, |_| Ok(true)).expect("remove");
        assert!(versions.has(&h), "a recorded version keeps its file");
        // Nobody uses it: gone.
        versions.remove(&orphans, |_| Ok(false)).expect("remove");
        assert!(!versions.has(&h));
        let _ = std::fs::remove_dir_all(dir);
    }
}
