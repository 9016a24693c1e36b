//! The one public error type, and the kinds callers branch on.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::message::MessageType;

/// The broad category of an [`Error`], for branching on meaning rather than on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
	/// The connection is closed: by the remote, locally, or after an earlier error (see
	/// [`std::error::Error::source`]). Every open request handle reports this once the
	/// connection is gone.
	ConnectionClosed,
	/// An I/O error from the operating system.
	Io,
	/// The remote peer broke the protocol; [`Error::protocol_violation`] says how.
	Protocol,
	/// A body is larger than the configured limit (sending or receiving).
	BodyTooLarge,
	/// A message carries more file descriptors than the configured limit.
	TooManyFds,
	/// The limit on open requests in one direction is reached.
	TooManyRequests,
	/// An operation did not finish within its deadline.
	Timeout,
	/// The request is already closed (its response was sent or received).
	RequestClosed,
	/// The transport cannot carry what was asked (for example descriptors over TCP).
	Unsupported,
	/// A typed body could not be encoded.
	Encode,
	/// A typed body could not be decoded; the message says for which service.
	Decode,
	/// The remote answered with an error response (a response with a negative service id); see
	/// [`Error::remote_text`] and [`Error::remote_service_id`]. Made by
	/// [`Message::into_result`](crate::Message::into_result),
	/// [`SentRequestHandle::recv_response_ok`](crate::SentRequestHandle::recv_response_ok) and the
	/// typed layer; a response read with `recv_response` stays an `Ok` message.
	Remote,
	/// The remote asked for a service, or sent a stream or update kind, that is not declared.
	UnknownService,
}

/// How the remote peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
	/// A stream frame length below the 12-byte header.
	#[error("frame length {length} is shorter than the 12-byte header")]
	FrameTooShort {
		/// The length field as received.
		length: u32,
	},
	/// A datagram shorter than the 12-byte header.
	#[error("datagram of {length} bytes is shorter than the 12-byte header")]
	DatagramTooShort {
		/// The datagram's length.
		length: usize,
	},
	/// A message type outside 0..=4.
	#[error("unknown message type {value}")]
	UnknownMessageType {
		/// The type field as received.
		value: u32,
	},
	/// A datagram larger than the receive buffer was cut by the kernel (MSG_TRUNC).
	#[error("datagram truncated: larger than the receive buffer")]
	DatagramTruncated,
	/// Ancillary data (descriptors) did not fit and was cut by the kernel (MSG_CTRUNC).
	#[error("ancillary data truncated: descriptors were lost")]
	ControlTruncated,
	/// A request arrived with an id that is still open.
	#[error("request id {request_id} is already open")]
	DuplicateRequestId {
		/// The id the remote used again.
		request_id: u32,
	},
	/// The stream ended in the middle of a frame.
	#[error("connection ended in the middle of a frame ({buffered} bytes of it received)")]
	TruncatedFrame {
		/// How many bytes of the incomplete frame had arrived.
		buffered: usize,
	},
	/// A message of a type that may not arrive where it did.
	#[error("unexpected {message_type:?} message")]
	Unexpected {
		/// The type of the message.
		message_type: MessageType,
	},
}

/// The error type of every fallible peerwire operation.
///
/// Branch on [`Error::kind`]; the `Display` text is for people. Cloning is cheap (errors are
/// shared between all request handles of a connection that failed).
///
/// ```
/// use peerwire::{Error, ErrorKind};
///
/// fn retry_worthwhile(error: &Error) -> bool {
///     matches!(error.kind(), ErrorKind::ConnectionClosed | ErrorKind::Io | ErrorKind::Timeout)
/// }
/// ```
#[derive(Clone)]
pub struct Error {
	repr: Arc<Repr>,
}

#[derive(Debug, thiserror::Error)]
enum Repr {
	#[error("connection closed by the remote peer")]
	ClosedByRemote,
	#[error("connection closed locally")]
	ClosedLocally,
	#[error("connection closed: {0}")]
	ClosedByError(Error),
	#[error("I/O error: {0}")]
	Io(#[source] io::Error),
	#[error("protocol violation: {0}")]
	Protocol(#[source] ProtocolViolation),
	#[error("body of {length} bytes exceeds the limit of {limit} bytes")]
	BodyTooLarge { length: usize, limit: usize },
	#[error("{count} file descriptors exceed the limit of {limit} per message")]
	TooManyFds { count: usize, limit: usize },
	#[error("too many open requests (limit {limit})")]
	TooManyRequests { limit: usize },
	#[error("timed out after {0:?}")]
	Timeout(Duration),
	#[error("request {request_id} is already closed")]
	RequestClosed { request_id: u32 },
	#[error("not supported: {0}")]
	Unsupported(&'static str),
	#[error("failed to encode {what}: {source}")]
	Encode { what: String, source: BoxError },
	#[error("failed to decode {what}: {source}")]
	Decode { what: String, source: BoxError },
	/// `what` names the call the remote refused: `move_to (1)`.
	#[error("{what}: {text}")]
	Remote { what: String, text: String },
	/// A response with a negative service id, as [`Message::into_result`] reports it.
	///
	/// [`Message::into_result`]: crate::Message::into_result
	#[error("error response (service id {service_id}): {text}")]
	ErrorResponse { service_id: i32, text: String },
	#[error("{what} is not declared")]
	UnknownService { what: String },
}

/// A boxed error from a body format.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Error {
	fn new(repr: Repr) -> Self {
		Self { repr: Arc::new(repr) }
	}

	/// The category of this error.
	pub fn kind(&self) -> ErrorKind {
		match &*self.repr {
			Repr::ClosedByRemote | Repr::ClosedLocally | Repr::ClosedByError(_) => ErrorKind::ConnectionClosed,
			Repr::Io(_) => ErrorKind::Io,
			Repr::Protocol(_) => ErrorKind::Protocol,
			Repr::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
			Repr::TooManyFds { .. } => ErrorKind::TooManyFds,
			Repr::TooManyRequests { .. } => ErrorKind::TooManyRequests,
			Repr::Timeout(_) => ErrorKind::Timeout,
			Repr::RequestClosed { .. } => ErrorKind::RequestClosed,
			Repr::Unsupported(_) => ErrorKind::Unsupported,
			Repr::Encode { .. } => ErrorKind::Encode,
			Repr::Decode { .. } => ErrorKind::Decode,
			Repr::Remote { .. } | Repr::ErrorResponse { .. } => ErrorKind::Remote,
			Repr::UnknownService { .. } => ErrorKind::UnknownService,
		}
	}

	/// How the remote broke the protocol, if that is what this error (or the error that closed
	/// the connection) is about.
	pub fn protocol_violation(&self) -> Option<&ProtocolViolation> {
		match &*self.repr {
			Repr::Protocol(violation) => Some(violation),
			Repr::ClosedByError(cause) => cause.protocol_violation(),
			_ => None,
		}
	}

	/// The operating-system error, if this error (or the error that closed the connection) is one.
	pub fn io_error(&self) -> Option<&io::Error> {
		match &*self.repr {
			Repr::Io(error) => Some(error),
			Repr::ClosedByError(cause) => cause.io_error(),
			_ => None,
		}
	}

	/// The text of the remote's error response, for errors of kind [`ErrorKind::Remote`].
	pub fn remote_text(&self) -> Option<&str> {
		match &*self.repr {
			Repr::Remote { text, .. } | Repr::ErrorResponse { text, .. } => Some(text),
			_ => None,
		}
	}

	/// The service id of the remote's error response (negative: -1 for the protocol's error
	/// response, other values by the application's convention), for errors made from a response
	/// by [`Message::into_result`](crate::Message::into_result) and
	/// [`recv_response_ok`](crate::SentRequestHandle::recv_response_ok).
	pub fn remote_service_id(&self) -> Option<i32> {
		match &*self.repr {
			Repr::ErrorResponse { service_id, .. } => Some(*service_id),
			_ => None,
		}
	}

	/// Whether the connection is closed (shorthand for `kind() == ConnectionClosed`).
	pub fn is_connection_closed(&self) -> bool {
		self.kind() == ErrorKind::ConnectionClosed
	}

	/// Whether the remote closed the connection in an orderly way (end of stream).
	pub fn is_closed_by_remote(&self) -> bool {
		matches!(&*self.repr, Repr::ClosedByRemote)
	}

	/// Whether the connection was closed on this side (explicit close or all handles dropped).
	pub fn is_closed_locally(&self) -> bool {
		matches!(&*self.repr, Repr::ClosedLocally)
	}

	/// Whether an operation timed out.
	pub fn is_timeout(&self) -> bool {
		self.kind() == ErrorKind::Timeout
	}

	pub(crate) fn closed_by_remote() -> Self {
		Self::new(Repr::ClosedByRemote)
	}

	pub(crate) fn closed_locally() -> Self {
		Self::new(Repr::ClosedLocally)
	}

	/// The error every handle sees once `cause` has ended the connection.
	pub(crate) fn closed_by(cause: Error) -> Self {
		if cause.kind() == ErrorKind::ConnectionClosed { cause } else { Self::new(Repr::ClosedByError(cause)) }
	}

	pub(crate) fn protocol(violation: ProtocolViolation) -> Self {
		Self::new(Repr::Protocol(violation))
	}

	pub(crate) fn body_too_large(length: usize, limit: usize) -> Self {
		Self::new(Repr::BodyTooLarge { length, limit })
	}

	pub(crate) fn too_many_fds(count: usize, limit: usize) -> Self {
		Self::new(Repr::TooManyFds { count, limit })
	}

	pub(crate) fn too_many_requests(limit: usize) -> Self {
		Self::new(Repr::TooManyRequests { limit })
	}

	/// An error of kind [`ErrorKind::Timeout`], for code that puts its own deadline around
	/// peerwire calls.
	pub fn timeout(after: Duration) -> Self {
		Self::new(Repr::Timeout(after))
	}

	pub(crate) fn request_closed(request_id: u32) -> Self {
		Self::new(Repr::RequestClosed { request_id })
	}

	#[allow(dead_code)]
	pub(crate) fn encode(what: String, source: BoxError) -> Self {
		Self::new(Repr::Encode { what, source })
	}

	#[allow(dead_code)]
	pub(crate) fn decode(what: String, source: BoxError) -> Self {
		Self::new(Repr::Decode { what, source })
	}

	/// An error response to a call of `what` (the typed layer's `NAME (ID)`).
	#[allow(dead_code)]
	pub(crate) fn remote(what: String, text: String) -> Self {
		Self::new(Repr::Remote { what, text })
	}

	/// An error response with service id `service_id` and body `text`.
	pub(crate) fn error_response(service_id: i32, text: String) -> Self {
		Self::new(Repr::ErrorResponse { service_id, text })
	}

	#[allow(dead_code)]
	pub(crate) fn unknown_service(what: String) -> Self {
		Self::new(Repr::UnknownService { what })
	}

	#[allow(dead_code)]
	pub(crate) fn unsupported(what: &'static str) -> Self {
		Self::new(Repr::Unsupported(what))
	}
}

impl From<io::Error> for Error {
	fn from(error: io::Error) -> Self {
		Self::new(Repr::Io(error))
	}
}

impl From<ProtocolViolation> for Error {
	fn from(violation: ProtocolViolation) -> Self {
		Self::protocol(violation)
	}
}

impl fmt::Display for Error {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		fmt::Display::fmt(&self.repr, f)
	}
}

impl fmt::Debug for Error {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("Error").field("kind", &self.kind()).field("message", &self.to_string()).finish()
	}
}

impl std::error::Error for Error {
	fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
		match &*self.repr {
			Repr::ClosedByError(cause) => Some(cause),
			Repr::Io(error) => Some(error),
			Repr::Protocol(violation) => Some(violation),
			Repr::Encode { source, .. } | Repr::Decode { source, .. } => Some(&**source),
			_ => None,
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn closed_by_keeps_the_cause_reachable() {
		let cause = Error::protocol(ProtocolViolation::UnknownMessageType { value: 9 });
		let closed = Error::closed_by(cause);
		assert_eq!(closed.kind(), ErrorKind::ConnectionClosed);
		assert_eq!(closed.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value: 9 }));
		assert_eq!(closed.to_string(), "connection closed: protocol violation: unknown message type 9");
		// Closing twice does not nest.
		assert!(Error::closed_by(Error::closed_by_remote()).is_closed_by_remote());
	}
}
