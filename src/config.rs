//! Settings shared by every transport and the peer task, with defaults that suit most users.

use crate::codec::Endian;

/// Limits and queue sizes for one connection.
///
/// One `Config` serves every transport; settings a transport has no use for are ignored
/// (descriptor limits on TCP, for example).
///
/// Build one from the default with the `with_*` setters; the fields stay public for reading.
/// The type is `#[non_exhaustive]`, so that a new setting is not a breaking change: a struct
/// literal does not compile outside the crate.
///
/// ```
/// use std::time::Duration;
///
/// let config = peerwire::Config::default()
///     .with_max_body_len_read(64 << 20)
///     .with_max_body_len_write(64 << 20)
///     .with_idle_timeout(Some(Duration::from_secs(60)));
/// assert_eq!(config.max_body_len_read, 64 << 20);
/// ```
///
/// Every constructor, connect and bind function takes it by reference, `&Config`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
	/// The byte order of headers and frame lengths; both sides must agree.
	///
	/// Default: little endian, the protocol's order.
	pub endian: Endian,

	/// The largest body accepted from the remote. A frame announcing more is refused before
	/// anything is reserved for it, and the connection is closed with
	/// [`ErrorKind::BodyTooLarge`](crate::ErrorKind::BodyTooLarge).
	///
	/// Memory for a large body is reserved as its bytes arrive, not when its length is read,
	/// so a hostile length costs nothing until the bytes are actually sent.
	///
	/// Default: 16 MiB.
	pub max_body_len_read: usize,

	/// The largest body this side sends. Sending a larger one fails for that message only.
	///
	/// Default: 16 MiB.
	pub max_body_len_write: usize,

	/// The most descriptors accepted in one received message (seqpacket transport only).
	///
	/// Default: 16.
	pub max_fds_read: usize,

	/// The most descriptors this side sends in one message (seqpacket transport only).
	///
	/// Default: 16.
	pub max_fds_write: usize,

	/// How many messages the handles may queue for the peer task to write before a send waits.
	///
	/// Default: 128.
	pub write_queue: usize,

	/// How many incoming requests and stream messages wait for the [`PeerReadHandle`] before
	/// the peer stops reading from the socket (backpressure on the remote).
	///
	/// [`PeerReadHandle`]: crate::PeerReadHandle
	///
	/// Default: 128.
	pub incoming_queue: usize,

	/// How many updates (and the response) wait for one request handle before the peer stops
	/// reading from the socket. Read your updates, or they stall the connection.
	///
	/// Default: 32.
	pub request_queue: usize,

	/// The most bytes of received messages waiting in the handles' queues, all queues of the
	/// connection together (the incoming queue and every request's). When it is spent, the peer
	/// stops reading from the socket until a handle takes something, which pushes back on the
	/// remote. A single message larger than this is let through alone. The read handle takes
	/// the stream messages queued behind the one it returns under the same lock, up to 64 KiB of
	/// bodies and 64 messages; those count as taken.
	///
	/// As with any flow control over one connection, a handle that waits for a message queued
	/// behind messages nobody takes waits until they are taken: receive on every open request
	/// (a task each, typically), not one request at a time.
	///
	/// Default: 64 MiB.
	pub max_buffered_incoming: usize,

	/// The most bytes of requests received from the remote and not yet answered, counted from
	/// when a request is read until its response is queued (or its handle dropped): work handed
	/// to the application counts against the connection's memory, so a server that spawns a
	/// task per request is bounded too. A request past it is answered at once with an error
	/// response ([`BUSY_TEXT`](crate::BUSY_TEXT)) and the connection stays up, as past
	/// [`max_open_requests`](Self::max_open_requests). Reading goes on: a request held until
	/// an update or a response arrives never keeps those from being read. A single request
	/// larger than this is let through when no other is unanswered.
	///
	/// Default: 64 MiB.
	pub max_unanswered_incoming: usize,

	/// The most requests open at once in each direction.
	///
	/// Sending one more fails with [`ErrorKind::TooManyRequests`](crate::ErrorKind::TooManyRequests);
	/// a remote request past the limit gets an error response and the connection stays up.
	///
	/// Default: 65,536.
	pub max_open_requests: usize,

	/// How long a closing connection (after [`close`](crate::PeerHandle::close), or once every
	/// handle is gone) may take to write what was queued. A remote that stops reading cannot keep
	/// the connection, its task and its buffers alive past this; what is left unwritten is lost.
	///
	/// Also the bound after the remote's end of stream: the connection stays up until every
	/// request the remote sent is answered and written, for at most this long.
	///
	/// Default: 10 s.
	pub close_timeout: std::time::Duration,

	/// The most bytes of messages this side has queued for writing and the transport has not
	/// yet written to the socket, all handles together, beside the [`write_queue`](Self::write_queue)
	/// count. A send that would pass it waits until the socket takes enough, so a remote that
	/// never reads holds at most this much of this side's memory however large the messages.
	/// A single message larger than this is let through alone.
	///
	/// Default: 64 MiB.
	pub max_buffered_outgoing: usize,

	/// How long a frame may take to arrive once its first byte has (stream transports). A remote
	/// that starts a frame and never finishes it is disconnected with
	/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) after this, instead of holding the
	/// connection and its buffer forever. `None`: no limit.
	///
	/// Default: `None`.
	pub frame_timeout: Option<std::time::Duration>,

	/// How long a connection may stay idle (no request open in either direction, nothing read
	/// and nothing written) before this side closes it. `None`: no limit.
	///
	/// Default: `None`.
	pub idle_timeout: Option<std::time::Duration>,
}

impl Default for Config {
	fn default() -> Self {
		Self {
			endian: Endian::Little,
			max_body_len_read: 16 << 20,
			max_body_len_write: 16 << 20,
			max_fds_read: 16,
			max_fds_write: 16,
			write_queue: 128,
			incoming_queue: 128,
			request_queue: 32,
			max_buffered_incoming: 64 << 20,
			max_unanswered_incoming: 64 << 20,
			max_open_requests: 1 << 16,
			close_timeout: std::time::Duration::from_secs(10),
			max_buffered_outgoing: 64 << 20,
			frame_timeout: None,
			idle_timeout: None,
		}
	}
}

/// Setters, one per field, for building a `Config` from the default.
impl Config {
	/// Set [`endian`](Self::endian).
	pub fn with_endian(mut self, endian: Endian) -> Self {
		self.endian = endian;
		self
	}

	/// Set [`max_body_len_read`](Self::max_body_len_read).
	pub fn with_max_body_len_read(mut self, max_body_len_read: usize) -> Self {
		self.max_body_len_read = max_body_len_read;
		self
	}

	/// Set [`max_body_len_write`](Self::max_body_len_write).
	pub fn with_max_body_len_write(mut self, max_body_len_write: usize) -> Self {
		self.max_body_len_write = max_body_len_write;
		self
	}

	/// Set [`max_fds_read`](Self::max_fds_read).
	pub fn with_max_fds_read(mut self, max_fds_read: usize) -> Self {
		self.max_fds_read = max_fds_read;
		self
	}

	/// Set [`max_fds_write`](Self::max_fds_write).
	pub fn with_max_fds_write(mut self, max_fds_write: usize) -> Self {
		self.max_fds_write = max_fds_write;
		self
	}

	/// Set [`write_queue`](Self::write_queue).
	pub fn with_write_queue(mut self, write_queue: usize) -> Self {
		self.write_queue = write_queue;
		self
	}

	/// Set [`incoming_queue`](Self::incoming_queue).
	pub fn with_incoming_queue(mut self, incoming_queue: usize) -> Self {
		self.incoming_queue = incoming_queue;
		self
	}

	/// Set [`request_queue`](Self::request_queue).
	pub fn with_request_queue(mut self, request_queue: usize) -> Self {
		self.request_queue = request_queue;
		self
	}

	/// Set [`max_buffered_incoming`](Self::max_buffered_incoming).
	pub fn with_max_buffered_incoming(mut self, max_buffered_incoming: usize) -> Self {
		self.max_buffered_incoming = max_buffered_incoming;
		self
	}

	/// Set [`max_unanswered_incoming`](Self::max_unanswered_incoming).
	pub fn with_max_unanswered_incoming(mut self, max_unanswered_incoming: usize) -> Self {
		self.max_unanswered_incoming = max_unanswered_incoming;
		self
	}

	/// Set [`max_open_requests`](Self::max_open_requests).
	pub fn with_max_open_requests(mut self, max_open_requests: usize) -> Self {
		self.max_open_requests = max_open_requests;
		self
	}

	/// Set [`close_timeout`](Self::close_timeout).
	pub fn with_close_timeout(mut self, close_timeout: std::time::Duration) -> Self {
		self.close_timeout = close_timeout;
		self
	}

	/// Set [`max_buffered_outgoing`](Self::max_buffered_outgoing).
	pub fn with_max_buffered_outgoing(mut self, max_buffered_outgoing: usize) -> Self {
		self.max_buffered_outgoing = max_buffered_outgoing;
		self
	}

	/// Set [`frame_timeout`](Self::frame_timeout).
	pub fn with_frame_timeout(mut self, frame_timeout: Option<std::time::Duration>) -> Self {
		self.frame_timeout = frame_timeout;
		self
	}

	/// Set [`idle_timeout`](Self::idle_timeout).
	pub fn with_idle_timeout(mut self, idle_timeout: Option<std::time::Duration>) -> Self {
		self.idle_timeout = idle_timeout;
		self
	}
}
