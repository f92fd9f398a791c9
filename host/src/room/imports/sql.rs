//! `dormouse:room/sql`: the room's SQL database, kept by the store
//! (`store/sql/`); here only the WIT types are translated.

use crate::room::state::RoomState;
use crate::store::{Cursor, SqlValue};
use crate::wit::Error;
use crate::wit::dormouse::room::sql::{self as wit, Host};

fn from_wit(v: wit::Value) -> SqlValue {
    match v {
        wit::Value::Null => SqlValue::Null,
        wit::Value::Integer(i) => SqlValue::Integer(i),
        wit::Value::Real(f) => SqlValue::Real(f),
        wit::Value::Text(s) => SqlValue::Text(s),
        wit::Value::Blob(b) => SqlValue::Blob(b),
    }
}

fn to_wit(v: SqlValue) -> wit::Value {
    match v {
        SqlValue::Null => wit::Value::Null,
        SqlValue::Integer(i) => wit::Value::Integer(i),
        SqlValue::Real(f) => wit::Value::Real(f),
        SqlValue::Text(s) => wit::Value::Text(s),
        SqlValue::Blob(b) => wit::Value::Blob(b),
    }
}

impl Host for RoomState {
    fn exec(
        &mut self,
        query: String,
        params: Vec<wit::Value>,
    ) -> wasmtime::Result<Result<wit::Cursor, Error>> {
        if let Err(e) = self.in_room("sql.exec") {
            return Ok(Err(e));
        }
        let params: Vec<SqlValue> = params.into_iter().map(from_wit).collect();
        Ok(match self.storage.sql_exec(&query, &params) {
            Ok(Cursor {
                column_names,
                rows,
                rows_read,
                rows_written,
            }) => Ok(wit::Cursor {
                column_names,
                rows: rows
                    .into_iter()
                    .map(|r| r.into_iter().map(to_wit).collect())
                    .collect(),
                rows_read,
                rows_written,
            }),
            Err(e) => Err(e.into()),
        })
    }

    fn database_size(&mut self) -> wasmtime::Result<Result<u64, Error>> {
        if let Err(e) = self.in_room("sql.database-size") {
            return Ok(Err(e));
        }
        Ok(self.storage.sql_size().map_err(Error::from))
    }
}
