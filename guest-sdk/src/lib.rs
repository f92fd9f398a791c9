//! Write Dormouse rooms in Rust.
//!
//! A room is a plain Rust type implementing [`Room`]; every hook has a
//! default, so implement only the ones you need, then export it once:
//!
//! ```no_run
//! use dormouse_sdk::{Connection, Message, Room};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Room for Echo {
//!     fn on_message(&mut self, conn: &Connection, message: Message) {
//!         let _ = conn.send(message);
//!     }
//! }
//!
//! dormouse_sdk::export!(Echo);
//! ```
//!
//! Build it with `dormouse build` (a `cdylib` crate for `wasm32-wasip2`).
//!
//! # Guest memory does not survive hibernation
//!
//! After an idle timeout (10 s by default) the host drops the room's
//! instance; its connections stay open. The next event makes a fresh
//! instance: `Default::default()`, then [`Room::on_start`], then the event.
//! So the fields of your type are a cache, never the truth. What must last
//! goes to [`storage`] (durable, per room) or to a connection's state
//! ([`Connection::set_state`], kept by the host while the socket is open).
//!
//! # Load only what a hook needs
//!
//! Because a room wakes often, waking must be cheap. Don't load the whole
//! room in `on_start`; read what the event needs when it needs it, and keep
//! one key per item so a write touches one small value:
//!
//! ```no_run
//! use dormouse_sdk::{storage, Connection, Message, Room};
//!
//! #[derive(Default)]
//! struct Todo;
//!
//! impl Room for Todo {
//!     fn on_message(&mut self, conn: &Connection, message: Message) {
//!         let Message::Text(text) = message else { return };
//!         // One key per item: adding one writes one small value.
//!         let next: u64 = storage::get_json("next").ok().flatten().unwrap_or(0);
//!         let _ = storage::put_json(&format!("item:{next:012}"), &text);
//!         let _ = storage::put_json("next", &(next + 1));
//!         let _ = conn.send_text("saved");
//!     }
//! }
//! # dormouse_sdk::export!(Todo);
//! ```
//!
//! All writes of one hook commit together when it returns, and the messages
//! it sent leave only after that commit: no client ever sees a value that a
//! crash could lose. A panic in a hook discards both.

pub mod alarm;
pub mod connections;
pub mod context;
pub mod hooks;
pub mod rooms;
pub mod sql;
pub mod storage;
pub mod timers;
mod types;
#[cfg(feature = "yjs")]
pub mod yjs;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "room",
        pub_export_macro: true,
        export_macro_name: "__export_room",
        default_bindings_module: "dormouse_sdk::bindings",
    });
}

pub use connections::Connection;
pub use hooks::Room;
pub use types::{Error, Level, Message, Request, Response};

/// Export a [`Room`] type as the component's hooks. Use it once per crate.
///
/// ```no_run
/// #[derive(Default)]
/// struct Lobby;
/// impl dormouse_sdk::Room for Lobby {}
/// dormouse_sdk::export!(Lobby);
/// ```
#[macro_export]
macro_rules! export {
    ($room:ty) => {
        #[doc(hidden)]
        pub struct __DormouseHooks;

        impl $crate::bindings::exports::dormouse::room::hooks::Guest for __DormouseHooks {
            fn on_start() {
                $crate::hooks::dispatch::on_start::<$room>()
            }
            fn on_connect(
                conn: $crate::bindings::dormouse::room::types::ConnectionInfo,
                request: $crate::Request,
            ) -> ::core::result::Result<(), $crate::Response> {
                $crate::hooks::dispatch::on_connect::<$room>(conn, request)
            }
            fn on_message(conn: ::std::string::String, message: $crate::Message) {
                $crate::hooks::dispatch::on_message::<$room>(conn, message)
            }
            fn on_close(conn: ::std::string::String, code: u16, reason: ::std::string::String, was_clean: bool) {
                $crate::hooks::dispatch::on_close::<$room>(conn, code, reason, was_clean)
            }
            fn on_error(conn: ::std::string::String, description: ::std::string::String) {
                $crate::hooks::dispatch::on_error::<$room>(conn, description)
            }
            fn on_request(request: $crate::Request) -> $crate::Response {
                $crate::hooks::dispatch::on_request::<$room>(request)
            }
            fn on_alarm(retry_count: u32) {
                $crate::hooks::dispatch::on_alarm::<$room>(retry_count)
            }
        }

        impl $crate::bindings::exports::dormouse::room::timer_hooks::Guest for __DormouseHooks {
            fn on_timer() {
                $crate::hooks::dispatch::on_timer::<$room>()
            }
        }

        impl $crate::bindings::exports::dormouse::room::cron_hooks::Guest for __DormouseHooks {
            fn on_cron(name: ::std::string::String, scheduled_ms: u64) {
                $crate::hooks::dispatch::on_cron::<$room>(name, scheduled_ms)
            }
        }

        impl $crate::bindings::exports::dormouse::room::answer_hooks::Guest for __DormouseHooks {
            fn on_answer(id: u64, answer: ::core::result::Result<$crate::Response, $crate::Error>) {
                $crate::hooks::dispatch::on_answer::<$room>(id, answer)
            }
        }

        // PartyKit's static hooks are TypeScript's; a Rust room decides in
        // on-connect and on-request, so the host skips the lobby.
        impl $crate::bindings::exports::dormouse::room::lobby_hooks::Guest for __DormouseHooks {
            fn on_before_connect(
                _room: ::std::string::String,
                _request: $crate::Request,
            ) -> ::core::option::Option<::core::result::Result<$crate::Request, $crate::Response>> {
                ::core::option::Option::None
            }
            fn on_before_request(
                _room: ::std::string::String,
                _request: $crate::Request,
            ) -> ::core::option::Option<::core::result::Result<$crate::Request, $crate::Response>> {
                ::core::option::Option::None
            }
        }

        $crate::bindings::__export_room!(__DormouseHooks with_types_in $crate::bindings);
    };
}
