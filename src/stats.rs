//! Counters of a connection and of a listener, read as snapshots.
//!
//! The counters of a connection live in its state (the one that the peer task and the handles
//! already share under one lock), so counting costs a few additions per message and no lock or
//! atomic operation of its own. [`PeerHandle::stats`](crate::PeerHandle::stats) copies them out.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), peerwire::Error> {
//! use peerwire::{Bytes, Config, MemoryTransport, Peer, ReceivedMessage};
//!
//! let (a, b) = MemoryTransport::<Bytes>::pair(&Config::default());
//! let client = Peer::spawn(a, &Config::default());
//! let mut server = Peer::spawn(b, &Config::default());
//! tokio::spawn(async move {
//!     while let Ok(ReceivedMessage::Request(request, body)) = server.recv_message().await {
//!         request.send_response(0, body).await?;
//!     }
//!     Ok::<_, peerwire::Error>(())
//! });
//!
//! let mut request = client.send_request(1, "ping").await?;
//! request.recv_response().await?;
//! let stats = client.stats();
//! assert_eq!(stats.sent.messages.request, 1);
//! assert_eq!(stats.received.messages.response, 1);
//! assert_eq!(stats.received.body_bytes.response, 4);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::message::MessageType;

/// A count for each message type (the protocol has these five, so the struct can be built and
/// compared whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByType {
	/// Requests.
	pub request: u64,
	/// Responses, error responses included.
	pub response: u64,
	/// Updates sent by the requester.
	pub requester_update: u64,
	/// Updates sent by the responder.
	pub responder_update: u64,
	/// One-way stream messages.
	pub stream: u64,
}

impl ByType {
	/// The count for `message_type`.
	pub fn get(&self, message_type: MessageType) -> u64 {
		match message_type {
			MessageType::Request => self.request,
			MessageType::Response => self.response,
			MessageType::RequesterUpdate => self.requester_update,
			MessageType::ResponderUpdate => self.responder_update,
			MessageType::Stream => self.stream,
		}
	}

	/// The sum over all types.
	pub fn total(&self) -> u64 {
		self.request + self.response + self.requester_update + self.responder_update + self.stream
	}
}

/// Messages and body bytes of one direction of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
	/// Messages, by type.
	pub messages: ByType,
	/// Bytes of bodies, by message type (headers and framing not counted).
	pub body_bytes: ByType,
	/// Of the responses, those that are error responses (a negative service id).
	pub error_responses: u64,
}

/// What the connection state counts for one direction: arrays indexed by the wire value of the
/// message type, so that counting a message is three additions and no branch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrafficCounts {
	messages: [u64; 5],
	body_bytes: [u64; 5],
	error_responses: u64,
}

impl TrafficCounts {
	#[inline]
	pub(crate) fn count(&mut self, message_type: MessageType, service_id: i32, body_len: usize) {
		let index = message_type as usize;
		self.messages[index] += 1;
		self.body_bytes[index] += body_len as u64;
		self.error_responses += u64::from(message_type == MessageType::Response && service_id < 0);
	}

	pub(crate) fn traffic(&self) -> Traffic {
		let by_type = |counts: &[u64; 5]| ByType {
			request: counts[MessageType::Request as usize],
			response: counts[MessageType::Response as usize],
			requester_update: counts[MessageType::RequesterUpdate as usize],
			responder_update: counts[MessageType::ResponderUpdate as usize],
			stream: counts[MessageType::Stream as usize],
		};
		Traffic {
			messages: by_type(&self.messages),
			body_bytes: by_type(&self.body_bytes),
			error_responses: self.error_responses,
		}
	}
}

/// A snapshot of the counters of one connection, from
/// [`PeerHandle::stats`](crate::PeerHandle::stats) and the other handles of the connection.
///
/// Counts start at zero when the connection starts and keep their last values after it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
	/// What the remote sent: every message decoded from the connection, whatever became of it.
	pub received: Traffic,
	/// What this side sent: messages the transport has taken to write, automatic replies
	/// included. A message still queued when the connection broke is not counted.
	pub sent: Traffic,
	/// Requests this side sent that wait for their response now.
	pub open_sent_requests: usize,
	/// Requests the remote sent that this side has not answered yet.
	pub open_received_requests: usize,
	/// The most requests this side had waiting for a response at once.
	pub peak_sent_requests: usize,
	/// The most requests of the remote that were unanswered at once.
	pub peak_received_requests: usize,
	/// Error responses the connection sent on its own: for a request handle dropped without a
	/// response, a duplicate request id, a request past a limit, a request nobody reads.
	pub auto_replies: u64,
	/// Messages from the remote dropped because nothing could take them: an update or response
	/// for a request that is not open (or whose handle is gone), a stream message with no read
	/// handle, a message arriving while the connection closes.
	pub stray_messages: u64,
	/// Protocol violations by the remote: a duplicate request id (answered, the connection goes
	/// on), or a malformed frame (which ends the connection).
	pub protocol_errors: u64,
	/// Time spent by local sends waiting for room in the write queue because the remote (or the
	/// transport) did not take the bytes fast enough; summed over the tasks that waited.
	pub send_blocked: Duration,
	/// Time reading from the remote was paused because the application had not taken what was
	/// already received (the incoming budgets were full), or automatic replies waited to be
	/// written.
	pub read_paused: Duration,
}

/// A snapshot of the counters of a [`Listener`](crate::Listener), from
/// [`Listener::stats`](crate::Listener::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
	/// Connections accepted and started (a peer task spawned or a transport handed over).
	pub accepted: u64,
	/// Connections closed at once because the [admission check](crate::Listener::set_admission)
	/// refused them.
	pub refused_by_admission: u64,
	/// Connections closed at once because the [connection
	/// limit](crate::Listener::set_max_connections) was reached.
	pub refused_by_limit: u64,
	/// Connections spawned by [`accept`](crate::Listener::accept) still running.
	pub open: usize,
}

/// The counters a [`Listener`](crate::Listener) updates as it accepts and refuses connections,
/// shared with its [`ListenerStatsHandle`]s. Accepting is not a hot path: one atomic addition
/// per connection.
#[derive(Debug, Default)]
pub(crate) struct ListenerCounters {
	pub(crate) accepted: AtomicU64,
	pub(crate) refused_by_admission: AtomicU64,
	pub(crate) refused_by_limit: AtomicU64,
}

impl ListenerCounters {
	pub(crate) fn add(counter: &AtomicU64) {
		counter.fetch_add(1, Ordering::Relaxed);
	}
}

/// A read-only view of the counters of a [`Listener`](crate::Listener), from
/// [`Listener::stats_handle`](crate::Listener::stats_handle), for reading them while the
/// listener itself is out of reach: moved into [`server::serve_with`](crate::server::serve_with)
/// or an accept task of its own.
///
/// Cheap to clone; it keeps no connection and no socket open, and keeps working (with the last
/// values) after the listener is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), peerwire::Error> {
/// use peerwire::{Config, TcpListener, TcpPeer};
///
/// let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await?;
/// let address = listener.local_addr()?;
/// let stats = listener.stats_handle();
/// let server = tokio::spawn(async move {
///     // The listener moves into the accept task; `stats` still reads its counters.
///     let (peer, _) = listener.accept().await?;
///     Ok::<_, peerwire::Error>(peer)
/// });
/// let (_client, _) = TcpPeer::connect(address, &Config::default()).await?;
/// let _peer = server.await.unwrap()?;
/// let now = stats.get();
/// assert_eq!((now.accepted, now.open), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ListenerStatsHandle {
	counters: Arc<ListenerCounters>,
	open: Arc<AtomicUsize>,
}

impl ListenerStatsHandle {
	pub(crate) fn new(counters: Arc<ListenerCounters>, open: Arc<AtomicUsize>) -> Self {
		Self { counters, open }
	}

	/// A snapshot of the listener's counters now, as [`Listener::stats`](crate::Listener::stats)
	/// returns it.
	pub fn get(&self) -> ListenerStats {
		ListenerStats {
			accepted: self.counters.accepted.load(Ordering::Relaxed),
			refused_by_admission: self.counters.refused_by_admission.load(Ordering::Relaxed),
			refused_by_limit: self.counters.refused_by_limit.load(Ordering::Relaxed),
			open: self.open.load(Ordering::Acquire),
		}
	}
}
