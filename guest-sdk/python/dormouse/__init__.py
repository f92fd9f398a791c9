"""Write Dormouse rooms in Python: the TypeScript SDK's names, Python style.

A room is a module (``app.py``) with a ``Server`` class::

    import dormouse

    class Server(dormouse.Server):
        def on_message(self, message, sender):
            count = (self.room.storage.get("count") or 0) + 1
            self.room.storage.put("count", count)
            self.room.broadcast(str(count))

``dormouse build DIR`` makes the component with componentize-py. Guest
memory does not survive hibernation: keep what lasts in ``room.storage`` or
a connection's state. All writes of a hook commit together when it returns,
and its messages leave only after that (the output gate). An exception in a
hook is a trap: its writes and messages are dropped, the sockets stay.
"""

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Union
from urllib.parse import urlsplit, parse_qs

from componentize_py_types import Err
from wit_world.imports import alarm as _alarm
from wit_world.imports import connections as _connections
from wit_world.imports import context as _context
from wit_world.imports import rooms as _rooms
from wit_world.imports import sql as _sql
from wit_world.imports import storage as _storage
from wit_world.imports import timers as _timers
from wit_world.imports import types as _types

__all__ = ["Server", "Room", "Connection", "Storage", "Sql", "SqlCursor", "Request", "Response", "serve"]

Message = Union[str, bytes]


class RoomError(Exception):
    """An import refused: ``kind`` is unknown-connection, too-large,
    invalid or unavailable."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def _room_error(error) -> RoomError:
    """A WIT ``error`` as a ``RoomError``."""
    kind = type(error).__name__.split("_", 1)[-1]
    kind = "".join("-" + c.lower() if c.isupper() else c for c in kind).lstrip("-")
    return RoomError(kind, str(getattr(error, "value", error)))


def _call(f, *args):
    try:
        return f(*args)
    except Err as e:
        raise _room_error(e.value) from None


def _to_wit(message: Message):
    if isinstance(message, str):
        return _types.Message_Text(message)
    return _types.Message_Binary(bytes(message))


def _from_wit(message) -> Message:
    return message.value


# ------------------------------------------------------------------ requests


class Request:
    """An HTTP request: ``method``, ``url`` (path and query), ``headers``
    (a dict, lower-case names), ``body`` (bytes)."""

    def __init__(self, wit):
        self.method: str = wit.method
        self.url: str = wit.uri
        self.headers: Dict[str, str] = {k.lower(): v for k, v in wit.headers}
        self.body: bytes = bytes(wit.body)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> Dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class Response:
    """An HTTP response; a ``str`` body is sent as UTF-8 text."""

    def __init__(self, body: Union[str, bytes] = b"", status: int = 200,
                 headers: Optional[Dict[str, str]] = None):
        if isinstance(body, str):
            body = body.encode()
            headers = {"content-type": "text/plain; charset=utf-8", **(headers or {})}
        self.body = bytes(body)
        self.status = status
        self.headers = dict(headers or {})

    def _to_wit(self):
        return _types.Response(self.status, list(self.headers.items()), self.body)


# ------------------------------------------------------------- connections


class Connection:
    """A WebSocket connection, held by the host across hibernation."""

    def __init__(self, id: str, uri: Optional[str] = None):
        self.id = id
        self._uri = uri

    @property
    def uri(self) -> Optional[str]:
        """Path and query of the upgrade request; read from the host when
        first asked (most hooks never look at it)."""
        if self._uri is None:
            info = _connections.get(self.id)
            self._uri = info.uri if info else None
        return self._uri

    @property
    def state(self) -> Any:
        """The value set with ``set_state`` (JSON), or None."""
        raw = _call(_connections.get_state, self.id)
        return None if raw is None else json.loads(raw)

    def set_state(self, value: Union[Any, Callable[[Any], Any]]) -> Any:
        """Replace the state (16 KiB of JSON at most), or map the old one."""
        if callable(value):
            value = value(self.state)
        raw = None if value is None else json.dumps(value, separators=(",", ":")).encode()
        _call(_connections.set_state, self.id, raw)
        return value

    @property
    def tags(self) -> List[str]:
        info = _connections.get(self.id)
        return list(info.tags) if info else []

    def send(self, message: Message) -> None:
        _call(_connections.send, self.id, _to_wit(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        _call(_connections.close, self.id, code, reason)


# ------------------------------------------------------------------ storage


def _sql_value(v: Any):
    """A Python value as a SQL parameter."""
    if v is None:
        return _sql.Value_Null()
    if isinstance(v, bool):
        return _sql.Value_Integer(int(v))
    if isinstance(v, int):
        return _sql.Value_Integer(v)
    if isinstance(v, float):
        return _sql.Value_Real(v)
    if isinstance(v, str):
        return _sql.Value_Text(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _sql.Value_Blob(bytes(v))
    raise TypeError(f"cannot bind {type(v).__name__} as a SQL value")


def _py_value(v) -> Any:
    """A column's value as Python: None, int, float, str or bytes."""
    return None if isinstance(v, _sql.Value_Null) else v.value


class SqlCursor:
    """What ``Sql.exec`` returns: the query has run; iterate its rows as
    dicts, or take them with ``to_list``, ``one`` or ``raw``."""

    def __init__(self, result):
        self.column_names: List[str] = list(result.column_names)
        self.rows_read: int = result.rows_read
        self.rows_written: int = result.rows_written
        self._rows = result.rows
        self._at = 0

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._at >= len(self._rows):
            raise StopIteration
        row = self._rows[self._at]
        self._at += 1
        return {name: _py_value(v) for name, v in zip(self.column_names, row)}

    def to_list(self) -> List[Dict[str, Any]]:
        return list(self)

    def one(self) -> Dict[str, Any]:
        """The one row left; ``RoomError`` unless there is exactly one."""
        left = len(self._rows) - self._at
        if left != 1:
            raise RoomError("invalid", f"expected exactly one row, got {left}")
        return next(self)

    def raw(self) -> List[tuple]:
        """The rows left, as tuples in ``column_names`` order."""
        rows = [tuple(_py_value(v) for v in row) for row in self._rows[self._at:]]
        self._at = len(self._rows)
        return rows


class _Savepoint:
    """``with sql.transaction():`` a part of the hook that fails alone."""

    depth = 0

    def __init__(self, sql: "Sql"):
        self.sql = sql

    def __enter__(self):
        self.name = f"tx{_Savepoint.depth}"
        self.sql.exec(f"SAVEPOINT {self.name}")
        _Savepoint.depth += 1
        return self.sql

    def __exit__(self, kind, error, trace):
        _Savepoint.depth -= 1
        if kind is None:
            self.sql.exec(f"RELEASE {self.name}")
        else:
            self.sql.exec(f"ROLLBACK TO {self.name}; RELEASE {self.name}")
        return False


class Sql:
    """The room's SQL database (SQLite), Durable Objects' ``ctx.storage.sql``
    in Python style. Its writes commit with the hook's key-value writes."""

    def exec(self, query: str, *params: Any) -> SqlCursor:
        return SqlCursor(_call(_sql.exec, query, [_sql_value(p) for p in params]))

    @property
    def database_size(self) -> int:
        """Bytes the database takes on disk."""
        return _call(_sql.database_size)

    def transaction(self) -> _Savepoint:
        """``with room.storage.sql.transaction(): ...``: when the block
        raises, its SQL writes are taken back and the exception goes on."""
        return _Savepoint(self)


class Storage:
    """The room's durable storage. Values are JSON (what ``json.dumps``
    takes), stored as plain JSON, so rooms in other languages read them.
    ``sql`` is the room's SQL database."""

    sql = Sql()

    def get(self, key: str) -> Any:
        raw = _call(_storage.get, key)
        return None if raw is None else _decode(raw)

    def get_many(self, keys: Iterable[str]) -> Dict[str, Any]:
        return {k: _decode(v) for k, v in _call(_storage.get_many, list(keys))}

    def put(self, key: str, value: Any) -> None:
        _call(_storage.put, key, _encode(value))

    def put_many(self, entries: Dict[str, Any]) -> None:
        _call(_storage.put_many, [(k, _encode(v)) for k, v in entries.items()])

    def delete(self, key: str) -> bool:
        return _call(_storage.delete, key)

    def delete_many(self, keys: Iterable[str]) -> int:
        return _call(_storage.delete_many, list(keys))

    def list(self, prefix: Optional[str] = None, start: Optional[str] = None,
             end: Optional[str] = None, limit: Optional[int] = None,
             reverse: bool = False) -> Dict[str, Any]:
        """Entries in key order (a dict keeps it)."""
        options = _storage.ListOptions(prefix, start, end, limit, reverse)
        return {k: _decode(v) for k, v in _call(_storage.list, options)}

    def delete_all(self) -> None:
        _call(_storage.delete_all)

    def get_alarm(self) -> Optional[int]:
        return _call(_alarm.get)

    def set_alarm(self, at_ms: int) -> None:
        _call(_alarm.set, int(at_ms))

    def delete_alarm(self) -> None:
        _call(_alarm.delete)


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        # Written by a room in another language, not as JSON: the text.
        return bytes(raw).decode(errors="replace")


# --------------------------------------------------------------------- room


class Room:
    """Who the room is, its storage and its connections."""

    def __init__(self):
        self.storage = Storage()

    @property
    def id(self) -> str:
        return _context.id()

    @property
    def name(self) -> str:
        """The party (deployed component) the room belongs to."""
        return _context.party()

    @property
    def env(self) -> Dict[str, str]:
        return dict(_context.vars())

    def broadcast(self, message: Message, without: Iterable[str] = ()) -> None:
        _call(_connections.broadcast, _to_wit(message), list(without))

    def get_connection(self, id: str) -> Optional[Connection]:
        info = _connections.get(id)
        return Connection(info.id, info.uri) if info else None

    def get_connections(self, tag: Optional[str] = None) -> List[Connection]:
        return [Connection(i.id, i.uri) for i in _connections.list(tag)]

    def fetch(self, party: str, room: str, path: str = "", method: str = "GET",
              body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> Response:
        """Another room's ``on_request`` (TypeScript's
        ``room.context.parties[party].get(room).fetch``)."""
        request = _types.Request(method, f"/parties/{party}/{room}{path}",
                                 list((headers or {}).items()), bytes(body))
        r = _call(_rooms.fetch, party, room, request)
        return Response(bytes(r.body), r.status, dict(r.headers))

    def start(self, party: str, room: str, path: str = "", method: str = "GET",
              body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> int:
        """``fetch`` without waiting: the room takes its other events (calls
        back into it included) and the answer comes to ``on_answer`` with
        the id returned here (``docs/calls.md``)."""
        request = _types.Request(method, f"/parties/{party}/{room}{path}",
                                 list((headers or {}).items()), bytes(body))
        return _call(_rooms.start, party, room, request)

    def defer(self) -> int:
        """In ``on_request``: answer later, with ``respond`` (what
        ``on_request`` returns is then ignored)."""
        return _call(_rooms.defer)

    def respond(self, id: int, response: "Response") -> None:
        """Answer the request deferred as ``id``."""
        _rooms.respond(id, response._to_wit())

    def set_timer(self, after_ms: int) -> None:
        """Run ``on_timer`` once, ``after_ms`` from now, replacing the time
        set before. Unlike the alarm it is kept in memory: the room stays
        awake until it fires (up to the host's ``timers_awake_ms`` past its
        last event that was not a timer), so the Server's fields are still
        there; it goes when the room hibernates."""
        _timers.set(max(0, min(int(after_ms), 2**32 - 1)))

    def cancel_timer(self) -> None:
        _timers.set(None)


def log(message: str, level: str = "info") -> None:
    """A line in the room's log (``dormouse tail``)."""
    _context.log(getattr(_types.Level, level.upper()), message)


# -------------------------------------------------------------------- hooks


class Server:
    """A room's logic: override the hooks you need. ``self.room`` is the
    room; a new ``Server`` is made after every wake."""

    def __init__(self, room: Room):
        self.room = room

    def on_start(self) -> None: ...

    def on_connect(self, conn: Connection, request: Request) -> Optional[Response]:
        """Return a Response to refuse the connection with it."""
        return None

    def get_connection_tags(self, conn: Connection, request: Request) -> List[str]:
        return []

    def on_message(self, message: Message, sender: Connection) -> None: ...

    def on_close(self, conn: Connection, code: int, reason: str, was_clean: bool) -> None: ...

    def on_error(self, conn: Connection, error: str) -> None: ...

    def on_request(self, request: Request) -> Response:
        return Response("not found", 404)

    def on_alarm(self) -> None: ...

    def on_timer(self) -> None:
        """The time set with ``room.set_timer`` came."""

    def on_answer(self, id: int, answer: Union["Response", RoomError]) -> None:
        """The call started as ``id`` (``room.start``) was answered, or
        failed."""

    @staticmethod
    def on_cron(name: str, scheduled_ms: int) -> None:
        """One of the party's crons is due (``[[parties.NAME.crons]]``):
        PartyKit's ``static onCron``. It runs outside any room (no ``self``,
        no storage, no connections), with the party's vars; it reaches rooms
        with ``rooms.fetch``. A tick runs at most once."""


def _reported(hook: str):
    """A hook whose exception is logged with its traceback before it traps
    (the host alone would only know that the instance failed). A refusal
    (``Err``) is an answer, not a failure."""

    def wrap(f):
        def run(*args):
            try:
                return f(*args)
            except Err:
                raise
            except BaseException as e:
                # The traceback when the runtime can make one; the type and
                # message always (`traceback` needs modules a component's
                # Python may lack, and a second raise here would hide this one).
                try:
                    import traceback

                    detail = traceback.format_exc()
                except BaseException:
                    detail = f"{type(e).__name__}: {e}"
                log(f"{hook} raised {detail}", "error")
                raise

        return run

    return wrap


def serve(server_class):
    """The ``Hooks``, ``TimerHooks``, ``LobbyHooks``, ``CronHooks`` and ``AnswerHooks``
    exports componentize-py wants, for a Server class (the build writes
    ``Hooks, TimerHooks, LobbyHooks, CronHooks, AnswerHooks =
    dormouse.serve(Server)``)."""
    from wit_world import exports

    state = {"server": None}

    def room():
        if state["server"] is None:
            state["server"] = server_class(Room())
        return state["server"]

    class Hooks(exports.Hooks):
        @_reported("on-start")
        def on_start(self) -> None:
            state["server"] = None
            room().on_start()

        @_reported("on-connect")
        def on_connect(self, conn, request) -> None:
            c, r = Connection(conn.id, conn.uri), Request(request)
            s = room()
            tags = s.get_connection_tags(c, r)
            if tags:
                _call(_connections.set_tags, c.id, list(tags))
            refusal = s.on_connect(c, r)
            if refusal is not None:
                raise Err(refusal._to_wit())

        @_reported("on-message")
        def on_message(self, conn, message) -> None:
            room().on_message(_from_wit(message), Connection(conn))

        @_reported("on-close")
        def on_close(self, conn, code, reason, was_clean) -> None:
            room().on_close(Connection(conn), code, reason, was_clean)

        @_reported("on-error")
        def on_error(self, conn, description) -> None:
            room().on_error(Connection(conn), description)

        @_reported("on-request")
        def on_request(self, request):
            return room().on_request(Request(request))._to_wit()

        @_reported("on-alarm")
        def on_alarm(self, retry_count) -> None:
            room().on_alarm()

    class TimerHooks(exports.TimerHooks):
        @_reported("on-timer")
        def on_timer(self) -> None:
            room().on_timer()

    # PartyKit's static hooks are TypeScript's; a Python room decides in
    # on_connect and on_request, so the host skips the lobby.
    class LobbyHooks(exports.LobbyHooks):
        def on_before_connect(self, room_id, request):
            return None

        def on_before_request(self, room_id, request):
            return None

    class CronHooks(exports.CronHooks):
        @_reported("on-cron")
        def on_cron(self, name, scheduled_ms) -> None:
            server_class.on_cron(name, scheduled_ms)

    class AnswerHooks(exports.AnswerHooks):
        @_reported("on-answer")
        def on_answer(self, id, answer) -> None:
            if isinstance(answer, Err):
                got = _room_error(answer.value)
            else:
                r = answer.value
                got = Response(bytes(r.body), r.status, dict(r.headers))
            room().on_answer(id, got)

    return Hooks, TimerHooks, LobbyHooks, CronHooks, AnswerHooks
