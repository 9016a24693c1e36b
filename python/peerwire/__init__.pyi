"""Type stubs of peerwire, the asyncio binding of the Rust peerwire library."""

from typing import Any, Awaitable, Iterable, Literal, Optional, Protocol, Sequence, Union, final

__all__ = [
	"BodyTooLarge",
	"Config",
	"ConnectionClosed",
	"Fd",
	"Info",
	"IoError",
	"Listener",
	"Message",
	"Peer",
	"PeerwireError",
	"ProtocolError",
	"ReceivedRequest",
	"RemoteError",
	"RequestClosed",
	"SentRequest",
	"Timeout",
	"TooManyFds",
	"TooManyRequests",
	"Unsupported",
	"call",
	"connect",
	"listen",
]

class _HasFileno(Protocol):
	def fileno(self) -> int: ...

_Body = Union[bytes, bytearray, memoryview, str]
"""A body: bytes-like, or a str sent as UTF-8 (None: empty)."""

_Fds = Optional[Iterable[Union[int, _HasFileno]]]
"""Descriptors to send (seqpacket only): ints or objects with fileno(), duplicated on send."""

_MessageKind = Literal["request", "response", "requester_update", "responder_update", "stream"]

class PeerwireError(Exception):
	"""The base class of every peerwire error."""

class ConnectionClosed(PeerwireError):
	"""The connection is closed; every open request of a connection that ends fails with it."""

class IoError(PeerwireError):
	"""An error from the operating system."""

	errno: Optional[int]

class ProtocolError(PeerwireError):
	"""The remote broke the protocol."""

class BodyTooLarge(PeerwireError):
	"""A body is larger than the configured limit."""

class TooManyFds(PeerwireError):
	"""A message carries more descriptors than the configured limit."""

class TooManyRequests(PeerwireError):
	"""The limit on open requests is reached."""

class Timeout(PeerwireError):
	"""An operation did not finish within its deadline."""

class RequestClosed(PeerwireError):
	"""The request is already closed (its response was sent or received)."""

class Unsupported(PeerwireError):
	"""The transport cannot carry what was asked."""

class RemoteError(PeerwireError):
	"""The remote answered with an error response."""

	text: str
	"""The remote's error text."""
	service_id: int
	"""The response's (negative) service id; -1 is the protocol's error response."""

@final
class Fd:
	"""A descriptor received with a message, owned by this object; closed by close(), at the
	end of a `with` block, or when garbage collected, unless detach() handed it over."""

	def fileno(self) -> int:
		"""The descriptor number; ValueError once closed or detached."""
	def close(self) -> None:
		"""Close the descriptor (nothing happens if already closed or detached)."""
	def detach(self) -> int:
		"""Give up ownership: return the descriptor number, which the caller must close."""
	@property
	def closed(self) -> bool:
		"""Whether the descriptor is closed or detached."""
	def __enter__(self) -> "Fd": ...
	def __exit__(self, *args: Any) -> None: ...

@final
class Message:
	"""A message received: an update, a response or a stream message."""

	@property
	def kind(self) -> _MessageKind: ...
	@property
	def request_id(self) -> int:
		"""The request id (meaningless for stream messages)."""
	@property
	def service_id(self) -> int:
		"""The stream's service, the update kind, or the response's result (negative: error)."""
	@property
	def body(self) -> bytes: ...
	@property
	def fds(self) -> list[Fd]:
		"""Descriptors that came with the message (seqpacket only)."""
	@property
	def is_error(self) -> bool:
		"""Whether this is an error response (a response with a negative service id)."""
	@property
	def error_text(self) -> Optional[str]:
		"""The text of an error response, else None."""
	def ok(self) -> "Message":
		"""This message, or RemoteError with the remote's text if it is an error response."""

@final
class Info:
	"""What is known about the remote of a connection."""

	@property
	def address(self) -> Optional[str]:
		"""tcp://HOST:PORT or unix:///PATH where known."""
	@property
	def uid(self) -> Optional[int]: ...
	@property
	def gid(self) -> Optional[int]: ...
	@property
	def pid(self) -> Optional[int]: ...

@final
class Config:
	"""Limits and settings of a connection; None leaves the default of Rust's peerwire::Config.
	Sizes in bytes, times in seconds."""

	def __new__(
		cls,
		*,
		endian: Optional[Literal["little", "big", "native"]] = None,
		max_body_len_read: Optional[int] = None,
		max_body_len_write: Optional[int] = None,
		max_fds_read: Optional[int] = None,
		max_fds_write: Optional[int] = None,
		max_open_requests: Optional[int] = None,
		max_unanswered_incoming: Optional[int] = None,
		close_timeout: Optional[float] = None,
		frame_timeout: Optional[float] = None,
		idle_timeout: Optional[float] = None,
	) -> "Config": ...

@final
class SentRequest:
	"""A request this side sent. Dropping it forgets the request (late messages are dropped)."""

	@property
	def request_id(self) -> int: ...
	@property
	def service_id(self) -> int: ...
	def recv_update(self) -> Awaitable[Optional[Message]]:
		"""The next responder update, or None once the response has arrived."""
	def __aiter__(self) -> "SentRequest": ...
	def __anext__(self) -> Awaitable[Message]: ...
	def recv_response(self, timeout: Optional[float] = None) -> Awaitable[Message]:
		"""The response (an error response too: see Message.is_error); Timeout after `timeout` s."""
	def recv_response_ok(self, timeout: Optional[float] = None) -> Awaitable[Message]:
		"""The response; RemoteError (with the remote's text) for an error response."""
	def send_update(self, service_id: int, body: Optional[_Body] = None, *, fds: _Fds = None) -> Awaitable[None]:
		"""Send a requester update; returns once it is queued."""

@final
class ReceivedRequest:
	"""A request from the remote. Dropped unanswered (for example when the task holding it is
	cancelled), it sends the automatic error response."""

	@property
	def kind(self) -> Literal["request"]: ...
	@property
	def request_id(self) -> int: ...
	@property
	def service_id(self) -> int: ...
	@property
	def body(self) -> bytes: ...
	@property
	def fds(self) -> list[Fd]: ...
	def recv_update(self) -> Awaitable[Optional[Message]]:
		"""The next requester update, or None once this side has responded."""
	def __aiter__(self) -> "ReceivedRequest": ...
	def __anext__(self) -> Awaitable[Message]: ...
	def send_update(self, service_id: int, body: Optional[_Body] = None, *, fds: _Fds = None) -> Awaitable[None]:
		"""Send a responder update; returns once it is queued."""
	def send_response(self, service_id: int, body: Optional[_Body] = None, *, fds: _Fds = None) -> Awaitable[None]:
		"""Send the response (service id 0 or positive for success), closing the request."""
	def send_error(self, text: str) -> Awaitable[None]:
		"""Send an error response (service id -1) with `text`, closing the request."""

@final
class Peer:
	"""A connection. It stays up while this object or any request of it lives.

	A tcp:// or unix:// connection runs on the event loop it was made or accepted on: another
	loop that is still open gets RuntimeError; after that loop has closed, the next loop to use
	it takes it over."""

	def send_request(self, service_id: int, body: Optional[_Body] = None, *, fds: _Fds = None) -> Awaitable[SentRequest]:
		"""Send a request; returns its SentRequest once queued."""
	def send_stream(self, service_id: int, body: Optional[_Body] = None, *, fds: _Fds = None) -> Awaitable[None]:
		"""Send a one-way stream message; returns once it is queued."""
	def recv_message(self) -> Awaitable[Union[ReceivedRequest, Message]]:
		"""The next request or stream message from the remote; ConnectionClosed at the end."""
	def __aiter__(self) -> "Peer": ...
	def __anext__(self) -> Awaitable[Union[ReceivedRequest, Message]]: ...
	def flush(self) -> Awaitable[None]:
		"""Wait until everything queued is written to the socket."""
	def close(self) -> None:
		"""Flush what is queued, then close; open requests fail with ConnectionClosed."""
	def wait_closed(self) -> Awaitable[None]:
		"""Wait until the connection has ended."""
	@property
	def is_closed(self) -> bool: ...
	@property
	def info(self) -> Info: ...
	@property
	def carries_fds(self) -> bool:
		"""Whether this is a seqpacket connection, which carries descriptors."""
	def __aenter__(self) -> Awaitable["Peer"]: ...
	def __aexit__(self, *args: Any) -> Awaitable[bool]: ...

@final
class Listener:
	"""Accepts connections: await accept(), or async for peer in listener."""

	@property
	def url(self) -> str:
		"""The address it listens on (with the chosen port for tcp://HOST:0)."""
	def accept(self) -> Awaitable[Peer]:
		"""The next connection; ConnectionClosed once the listener is closed."""
	def __aiter__(self) -> "Listener": ...
	def __anext__(self) -> Awaitable[Peer]: ...
	def close(self) -> None:
		"""Stop listening (a Unix socket file is removed); accepted connections stay up."""
	def __aenter__(self) -> Awaitable["Listener"]: ...
	def __aexit__(self, *args: Any) -> Awaitable[bool]: ...

def connect(url: str, config: Optional[Config] = None) -> Awaitable[Peer]:
	"""Connect to tcp://HOST:PORT, unix:///PATH or seqpacket:///PATH."""

def listen(
	url: str,
	config: Optional[Config] = None,
	*,
	allow_uids: Optional[Sequence[int]] = None,
	allow_gids: Optional[Sequence[int]] = None,
	allow_ips: Optional[Sequence[str]] = None,
) -> Awaitable[Listener]:
	"""Listen on tcp://HOST:PORT (port 0 for any), unix:///PATH or seqpacket:///PATH.

	allow_uids, allow_gids (Unix sockets: the client's user and primary group) and allow_ips
	(TCP): admit only clients matching any list given; others are closed unread.
	"""

def call(
	url: str,
	service_id: int,
	body: Optional[_Body] = None,
	*,
	fds: _Fds = None,
	timeout: Optional[float] = None,
	config: Optional[Config] = None,
) -> Message:
	"""Blocking: connect, send one request, return its response (RemoteError for an error
	response, Timeout after `timeout` seconds for the whole call). Releases the GIL while waiting."""
