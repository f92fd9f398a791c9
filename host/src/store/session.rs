//! SQLite's C API beyond rusqlite, the one unsafe corner of the store: the
//! session extension (a capture of what a room's statements changed, a
//! changeset, and applying one on replay; see `sql/mod.rs`), and a room
//! file's WAL kept between opens.
//!
//! The extension is compiled into the bundled SQLite by LIBSQLITE3_FLAGS
//! (`.cargo/config.toml`) and declared here, rather than through
//! rusqlite's `session` feature, which needs libclang to build.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};

use rusqlite::{Connection, ffi};

use super::StorageError;

unsafe extern "C" {
    fn sqlite3session_create(
        db: *mut ffi::sqlite3,
        name: *const c_char,
        out: *mut *mut c_void,
    ) -> c_int;
    fn sqlite3session_delete(session: *mut c_void);
    fn sqlite3session_object_config(session: *mut c_void, op: c_int, arg: *mut c_void) -> c_int;
    fn sqlite3session_attach(session: *mut c_void, table: *const c_char) -> c_int;
    fn sqlite3session_memory_used(session: *mut c_void) -> i64;
    fn sqlite3session_isempty(session: *mut c_void) -> c_int;
    fn sqlite3session_changeset(
        session: *mut c_void,
        n: *mut c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    fn sqlite3changeset_apply(
        db: *mut ffi::sqlite3,
        n: c_int,
        changeset: *mut c_void,
        filter: Option<unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int>,
        conflict: Option<unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int>,
        context: *mut c_void,
    ) -> c_int;
}

/// `sqlite3session_object_config`: record tables without a PRIMARY KEY by rowid.
const SQLITE_SESSION_OBJCONFIG_ROWID: c_int = 2;
const SQLITE_CHANGESET_DATA: c_int = 1;
const SQLITE_CHANGESET_CONFLICT: c_int = 3;
const SQLITE_CHANGESET_OMIT: c_int = 0;
const SQLITE_CHANGESET_REPLACE: c_int = 1;

/// On replay the file is where the entry began, so nothing should
/// conflict; if a row does, the logged change wins.
unsafe extern "C" fn on_conflict(_: *mut c_void, kind: c_int, _: *mut c_void) -> c_int {
    match kind {
        SQLITE_CHANGESET_DATA | SQLITE_CHANGESET_CONFLICT => SQLITE_CHANGESET_REPLACE,
        _ => SQLITE_CHANGESET_OMIT,
    }
}

/// A SQLite session (the changes since it began), owned here because a
/// room must own it beside its connection.
pub(super) struct Capture(*mut c_void);

// SAFETY: the session is used only with its connection, which is `Send`,
// and only from whichever thread holds the room (never two at once).
unsafe impl Send for Capture {}

impl Capture {
    pub(super) fn start(conn: &Connection) -> Result<Capture, StorageError> {
        let mut s = std::ptr::null_mut();
        // SAFETY: the handle is the live connection's; the session is
        // deleted (Drop) before the connection closes (field order in `Db`).
        unsafe {
            let db = conn.handle();
            check(sqlite3session_create(db, c"main".as_ptr(), &mut s))?;
            let capture = Capture(s);
            // Tables without a PRIMARY KEY are recorded by rowid.
            let mut on: c_int = 1;
            check(sqlite3session_object_config(
                s,
                SQLITE_SESSION_OBJCONFIG_ROWID,
                (&mut on as *mut c_int).cast(),
            ))?;
            check(sqlite3session_attach(s, std::ptr::null()))?;
            Ok(capture)
        }
    }

    /// Heap bytes the capture holds: about what its changeset will take.
    pub(super) fn memory_used(&self) -> u64 {
        // SAFETY: the session is live (deleted only in Drop).
        unsafe { sqlite3session_memory_used(self.0) }.max(0) as u64
    }

    /// The changes since the capture began (empty when none).
    pub(super) fn changeset(&self) -> Result<Vec<u8>, StorageError> {
        // SAFETY: the session is live (deleted only in Drop).
        if unsafe { sqlite3session_isempty(self.0) } != 0 {
            // Most hooks only read: no changeset to build.
            return Ok(Vec::new());
        }
        let mut n = 0;
        let mut p = std::ptr::null_mut();
        // SAFETY: `p` is sqlite3_malloc'd by SQLite, copied, then freed.
        unsafe {
            check(sqlite3session_changeset(self.0, &mut n, &mut p))?;
            if p.is_null() {
                return Ok(Vec::new());
            }
            let out = std::slice::from_raw_parts(p as *const u8, n.max(0) as usize).to_vec();
            ffi::sqlite3_free(p);
            Ok(out)
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: created by sqlite3session_create, deleted once.
        unsafe { sqlite3session_delete(self.0) }
    }
}

fn check(rc: i32) -> Result<(), StorageError> {
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    Err(StorageError::Unavailable(format!(
        "SQLite failed ({})",
        ffi::code_to_str(rc)
    )))
}

/// Keep the room file's WAL file when the connection closes (emptied by
/// the close's checkpoint), rather than delete it: every wake would
/// otherwise create it again, which measured about half of an open's cost.
pub(super) fn persist_wal(conn: &Connection) -> Result<(), StorageError> {
    let mut on: c_int = 1;
    // SAFETY: the connection is open; SQLite reads the int and does not
    // keep the pointer.
    check(unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut c_int).cast(),
        )
    })
}

/// Apply a changeset to the room's file.
pub(super) fn apply(conn: &Connection, changeset: &[u8]) -> Result<(), StorageError> {
    let n = c_int::try_from(changeset.len()).unwrap_or(c_int::MAX);
    // SAFETY: SQLite reads `n` bytes of the changeset and does not keep
    // it, nor write to it; the connection is open.
    check(unsafe {
        sqlite3changeset_apply(
            conn.handle(),
            n,
            changeset.as_ptr() as *mut c_void,
            None,
            Some(on_conflict),
            std::ptr::null_mut(),
        )
    })
}
