//! What a room's SQL connection may do: the authorizer that refuses what
//! reaches outside the room and notes schema changes and savepoints, and
//! the deadline the progress handler enforces (see `mod.rs`).

use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};

use crate::lock::lock;

/// Names a room may not use: the host's own table and savepoints.
const RESERVED: &str = "_dormouse";

/// What the authorizer and the progress handler share with the room.
pub(super) struct Guard {
    /// The host's own statements: nothing refused, no deadline.
    pub(super) internal: AtomicBool,
    /// Milliseconds since `epoch` after which a statement is stopped.
    pub(super) deadline_ms: AtomicU64,
    pub(super) epoch: Instant,
    /// Why the authorizer refused the statement being prepared.
    pub(super) refused: Mutex<Option<String>>,
    /// The statement being prepared changes the schema.
    pub(super) schema: AtomicBool,
    /// The statement being prepared is a savepoint operation.
    pub(super) savepoint: Mutex<Option<(TransactionOperation, String)>>,
}

impl Guard {
    /// Run one of the host's own statements: the authorizer lets it be.
    pub(super) fn as_host<R>(&self, f: impl FnOnce() -> R) -> R {
        self.internal.store(true, Relaxed);
        let r = f();
        self.internal.store(false, Relaxed);
        r
    }

    pub(super) fn past_deadline(&self) -> bool {
        !self.internal.load(Relaxed)
            && self.epoch.elapsed().as_millis() as u64 > self.deadline_ms.load(Relaxed)
    }

    pub(super) fn authorize(&self, cx: &AuthContext<'_>) -> Authorization {
        if self.internal.load(Relaxed) {
            return Authorization::Allow;
        }
        match refusal(&cx.action) {
            Some(why) => {
                *lock(&self.refused) = Some(why);
                Authorization::Deny
            }
            None => {
                if changes_schema(&cx.action) {
                    self.schema.store(true, Relaxed);
                }
                if let AuthAction::Savepoint {
                    operation,
                    savepoint_name,
                } = &cx.action
                {
                    *lock(&self.savepoint) = Some((*operation, (*savepoint_name).to_owned()));
                }
                Authorization::Allow
            }
        }
    }
}

/// Pragmas a room may run: they read, or touch only the running
/// transaction. The rest would change the connection the host set up
/// (durability, journal, limits, the files it uses) and are refused.
const PRAGMAS: [&str; 17] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "collation_list",
    "page_count",
    "page_size",
    "freelist_count",
    "data_version",
    "defer_foreign_keys",
    "optimize",
];

/// Why a room may not do this, or `None` when it may. The list is in the
/// README ("SQL storage").
fn refusal(action: &AuthAction<'_>) -> Option<String> {
    let reserved = |name: &str| name.to_ascii_lowercase().starts_with(RESERVED);
    let why = match *action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            "ATTACH and DETACH would reach outside the room".into()
        }
        AuthAction::Transaction { .. } => {
            "BEGIN, COMMIT and ROLLBACK are the host's: a hook is one transaction (the SDKs' transaction() runs part of one)".into()
        }
        AuthAction::Savepoint { savepoint_name, .. } if reserved(savepoint_name) => {
            format!("savepoint names beginning with {RESERVED} are the host's")
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let reads_only = matches!(name.as_str(), "page_size" | "data_version");
            if !PRAGMAS.contains(&name.as_str()) || (reads_only && pragma_value.is_some()) {
                format!("PRAGMA {pragma_name} is not allowed in a room")
            } else {
                return None;
            }
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            "extensions cannot be loaded".into()
        }
        AuthAction::CreateVtable { .. } | AuthAction::DropVtable { .. } => {
            "virtual tables are not available in a room".into()
        }
        AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. } => {
            "TEMP tables would be lost when the room hibernates; use a table".into()
        }
        AuthAction::CreateTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Read { table_name, .. }
        | AuthAction::Update { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
            if reserved(table_name) =>
        {
            format!("tables whose names begin with {RESERVED} are the host's")
        }
        _ => return None,
    };
    Some(why)
}

/// Whether the action changes the schema: such a statement is logged as
/// its text (a changeset holds rows only) and runs again on replay.
fn changes_schema(action: &AuthAction<'_>) -> bool {
    matches!(
        action,
        AuthAction::CreateIndex { .. }
            | AuthAction::CreateTable { .. }
            | AuthAction::CreateTrigger { .. }
            | AuthAction::CreateView { .. }
            | AuthAction::DropIndex { .. }
            | AuthAction::DropTable { .. }
            | AuthAction::DropTrigger { .. }
            | AuthAction::DropView { .. }
            | AuthAction::AlterTable { .. }
            | AuthAction::Reindex { .. }
            | AuthAction::Analyze { .. }
    )
}
