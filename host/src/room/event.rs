//! What a room actor is sent: the events of its sockets, requests, alarms,
//! room-to-room calls and their answers, and the host's own (hibernate, evict, hand off).

use std::sync::Arc;

use tokio::sync::oneshot;

use super::outbound::Outbound;
use super::queue::RoomTx;
use super::state::RoomStatus;
use crate::alarms::Attempt;
use crate::route::RoomKey;
use crate::wit::{self};

/// An event for a room.
pub enum Event {
    /// A client asks to connect; the reply decides the HTTP answer.
    Connect(Box<Connect>),
    Message {
        conn: ConnRef,
        message: wit::Message,
    },
    Closed {
        conn: ConnRef,
        code: u16,
        reason: String,
        was_clean: bool,
    },
    Error {
        conn: ConnRef,
        description: String,
    },
    Request {
        request: Box<wit::Request>,
        /// Rooms waiting on this request (a room-to-room call), outermost first.
        chain: Vec<RoomKey>,
        reply: oneshot::Sender<wit::Response>,
    },
    /// The room's alarm is due.
    Alarm {
        attempt: Attempt,
    },
    /// A call the room started (`rooms.start`) was answered.
    Answer {
        id: u64,
        answer: Result<wit::Response, wit::Error>,
    },
    /// Drop the instance after the current event (a new version was
    /// deployed, or a wake needs its slot).
    Hibernate,
    /// In a cluster: every socket of this quiet room came through one
    /// other node, where the balancer now sends its clients. Give the room
    /// up and close its sockets with 1012: they reconnect there.
    HandOff,
    /// Close every connection with this code and stop; the registry has
    /// already forgotten this actor. 1001 when the party was deleted, 1012
    /// when this node left the cluster.
    Evict {
        code: u16,
        reason: &'static str,
    },
}

/// Which socket an event comes from: the id, and the serial that tells it
/// apart from a later socket that reused the id.
#[derive(Clone)]
pub struct ConnRef {
    pub id: Arc<str>,
    pub serial: u64,
}

pub struct Connect {
    pub conn: ConnRef,
    pub request: wit::Request,
    pub outbound: Outbound,
    /// The socket came through another node of the cluster.
    pub forwarded: bool,
    pub reply: oneshot::Sender<Result<Accepted, wit::Response>>,
}

/// A connection the room accepted: its socket talks to this actor, the one
/// that ran its on-connect and holds the connection, for the rest of its
/// life (never to whichever actor `dispatch` happened to reach).
pub struct Accepted {
    pub room: RoomTx,
    /// The room's published status; the socket answers its auto-response.
    pub status: Arc<RoomStatus>,
}
