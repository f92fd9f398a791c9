//! `dormouse:room/sql`: the room's SQL database (SQLite), as a Durable
//! Object's `ctx.storage.sql`.
//!
//! A hook's SQL writes commit with its key-value writes when it returns,
//! and its messages leave only after both are durable; a panic takes both
//! back. [`transaction`] takes back part of a hook.
//!
//! ```no_run
//! use dormouse_sdk::sql;
//!
//! sql::exec("CREATE TABLE IF NOT EXISTS todos (id INTEGER PRIMARY KEY, text TEXT, done INTEGER)", &[]).unwrap();
//! sql::exec("INSERT INTO todos (text, done) VALUES (?, ?)", &["milk".into(), 0.into()]).unwrap();
//! for row in sql::exec("SELECT id, text FROM todos WHERE done = ?", &[0.into()]).unwrap().rows() {
//!     let id: i64 = row.get("id").unwrap();
//!     let text: String = row.get("text").unwrap();
//! }
//! ```

use crate::Error;
use crate::bindings::dormouse::room::sql as wit;

/// A SQLite value: what a parameter binds and a column holds.
pub type Value = wit::Value;

/// Run one query (one statement, or several separated by `;`), binding
/// `params` positionally to its `?`s. Returns the rows of the last
/// statement that returned any.
pub fn exec(query: &str, params: &[Value]) -> Result<Cursor, Error> {
    wit::exec(query, params).map(|c| Cursor { inner: c })
}

/// Bytes the room's database takes on disk.
pub fn database_size() -> Result<u64, Error> {
    wit::database_size()
}

/// Run `f` as a part of the hook that commits or fails alone: when it
/// returns `Err`, its SQL writes are taken back and the hook goes on.
/// (Its key-value writes are not: they commit with the hook.)
pub fn transaction<T, E: From<Error>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static DEPTH: AtomicU32 = AtomicU32::new(0);
    let name = format!("tx{}", DEPTH.fetch_add(1, Relaxed));
    let done = |sql: &str| -> Result<(), Error> {
        DEPTH.fetch_sub(1, Relaxed);
        exec(sql, &[]).map(|_| ())
    };
    if let Err(e) = exec(&format!("SAVEPOINT {name}"), &[]) {
        DEPTH.fetch_sub(1, Relaxed);
        return Err(e.into());
    }
    match f() {
        Ok(v) => {
            done(&format!("RELEASE {name}"))?;
            Ok(v)
        }
        Err(e) => {
            done(&format!("ROLLBACK TO {name}; RELEASE {name}"))?;
            Err(e)
        }
    }
}

/// What [`exec`] returned.
#[derive(Debug, Clone)]
pub struct Cursor {
    inner: wit::Cursor,
}

impl Cursor {
    /// The result's column names.
    pub fn column_names(&self) -> &[String] {
        &self.inner.column_names
    }

    /// The rows, each readable by column name.
    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.inner.rows.iter().map(|values| Row {
            names: &self.inner.column_names,
            values,
        })
    }

    /// The rows as arrays, in [`Cursor::column_names`] order.
    pub fn raw(&self) -> &[Vec<Value>] {
        &self.inner.rows
    }

    /// The one row; an error unless there is exactly one.
    pub fn one(&self) -> Result<Row<'_>, Error> {
        match self.inner.rows.len() {
            1 => Ok(self.rows().next().expect("one row")),
            n => Err(Error::Invalid(format!("expected exactly one row, got {n}"))),
        }
    }

    /// Rows SQLite read for the query.
    pub fn rows_read(&self) -> u64 {
        self.inner.rows_read
    }

    /// Rows the query inserted, updated or deleted.
    pub fn rows_written(&self) -> u64 {
        self.inner.rows_written
    }
}

/// One row of a [`Cursor`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    names: &'a [String],
    values: &'a [Value],
}

impl Row<'_> {
    /// The value of the column `name`, converted.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T, Error> {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::Invalid(format!("no column named {name}")))?;
        T::from_value(&self.values[i])
            .ok_or_else(|| Error::Invalid(format!("column {name} holds {:?}", self.values[i])))
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        self.values
    }
}

/// A Rust type a column converts to.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Integer(i.into())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Integer(b.into())
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Real(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Blob(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
