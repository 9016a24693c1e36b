//! What a message is: its type, its header and its body, and the error-response convention.
//!
//! Nothing here does I/O; [`crate::codec`] turns these values into bytes and back.

use bytes::Bytes;

/// The size of a message header on the wire: type, request id and service id, 4 bytes each.
pub const HEADER_LEN: usize = 12;

/// The service id of an error response whose body is a UTF-8 error text.
pub const SERVICE_ID_ERROR: i32 = -1;

/// The kind of a message (the first header field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MessageType {
	/// Opens a request; sent by the requester.
	Request = 0,
	/// Closes a request; sent by the responder. A negative service id means failure.
	Response = 1,
	/// An update sent by the requester while the request is open.
	RequesterUpdate = 2,
	/// An update sent by the responder while the request is open.
	ResponderUpdate = 3,
	/// A one-way message outside any request (called "notify" in older texts).
	Stream = 4,
}

impl MessageType {
	/// The value of this type on the wire.
	pub const fn to_u32(self) -> u32 {
		self as u32
	}

	/// Parse a wire value; `None` for a value the protocol does not define.
	pub const fn from_u32(value: u32) -> Option<Self> {
		match value {
			0 => Some(Self::Request),
			1 => Some(Self::Response),
			2 => Some(Self::RequesterUpdate),
			3 => Some(Self::ResponderUpdate),
			4 => Some(Self::Stream),
			_ => None,
		}
	}
}

/// The fixed 12-byte part in front of every body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageHeader {
	/// What kind of message this is.
	pub message_type: MessageType,
	/// The request this message belongs to (meaningless for stream messages; 0 by default).
	pub request_id: u32,
	/// The service (request, stream), the update kind (updates) or the result (response).
	pub service_id: i32,
}

impl MessageHeader {
	/// A header with the given fields.
	pub const fn new(message_type: MessageType, request_id: u32, service_id: i32) -> Self {
		Self { message_type, request_id, service_id }
	}
}

/// A message body. Implemented by [`Bytes`] for the stream transports; the seqpacket transport
/// uses a body that also carries file descriptors.
pub trait Body: Send + Unpin + 'static {
	/// The body of an error response: the UTF-8 error text.
	fn from_error_text(text: &str) -> Self;

	/// The bytes of the body (descriptors, if any, are not part of them).
	fn as_bytes(&self) -> &[u8];

	/// The number of file descriptors carried with the body (0 for byte-only bodies).
	fn fd_count(&self) -> usize {
		0
	}

	/// The number of bytes in the body.
	fn len(&self) -> usize {
		self.as_bytes().len()
	}

	/// Whether the body has no bytes.
	fn is_empty(&self) -> bool {
		self.len() == 0
	}
}

impl Body for Bytes {
	fn from_error_text(text: &str) -> Self {
		Bytes::copy_from_slice(text.as_bytes())
	}

	fn as_bytes(&self) -> &[u8] {
		self
	}
}

/// What every `send_*` method, and every [`Message`] constructor, takes as a body: the body type
/// itself, or bytes in any usual form.
///
/// Both body types of the crate, [`Bytes`] and the seqpacket transport's `UnixBody`, accept the
/// same inputs: `b"..."` (`&[u8; N]`), `&[u8]` and `&str` (copied), `Vec<u8>`, `String` and
/// [`Bytes`] (neither copied), and the body type itself. A body type of your own gets the byte
/// inputs by implementing `From<Bytes>`.
///
/// ```
/// use peerwire::{Bytes, IntoBody};
///
/// fn body(input: impl IntoBody<Bytes>) -> Bytes {
///     input.into_body()
/// }
///
/// let borrowed: &[u8] = &[1, 2, 3];
/// assert_eq!(body(b"abc"), body("abc"));
/// assert_eq!(body(borrowed), body(vec![1, 2, 3]));
/// assert_eq!(body(String::from("x")), body(Bytes::from_static(b"x")));
/// ```
pub trait IntoBody<B> {
	/// Convert into the body.
	fn into_body(self) -> B;
}

/// Every body is a body of its own type.
impl<B: Body> IntoBody<B> for B {
	fn into_body(self) -> B {
		self
	}
}

impl<B: Body + From<Bytes>> IntoBody<B> for Vec<u8> {
	fn into_body(self) -> B {
		B::from(Bytes::from(self))
	}
}

impl<B: Body + From<Bytes>> IntoBody<B> for String {
	fn into_body(self) -> B {
		B::from(Bytes::from(self))
	}
}

/// Copied.
impl<B: Body + From<Bytes>> IntoBody<B> for &str {
	fn into_body(self) -> B {
		B::from(Bytes::copy_from_slice(self.as_bytes()))
	}
}

/// Copied.
impl<B: Body + From<Bytes>> IntoBody<B> for &[u8] {
	fn into_body(self) -> B {
		B::from(Bytes::copy_from_slice(self))
	}
}

/// Copied: a `b"..."` literal.
impl<B: Body + From<Bytes>, const N: usize> IntoBody<B> for &[u8; N] {
	fn into_body(self) -> B {
		B::from(Bytes::copy_from_slice(self))
	}
}

/// A body that can be sent more than once, as [`Reconnecting`](crate::Reconnecting) does when
/// the connection it first tried turns out to be closed.
///
/// Every `Clone` body is one; the seqpacket transport's `UnixBody` is one through `try_clone`,
/// which duplicates its descriptors (and can fail, for want of descriptors).
pub trait CloneBody: Body + Sized {
	/// A copy of the body to send.
	fn clone_body(&self) -> Result<Self, crate::Error>;
}

impl<B: Body + Clone> CloneBody for B {
	fn clone_body(&self) -> Result<Self, crate::Error> {
		Ok(self.clone())
	}
}

/// A header and a body.
///
/// ```
/// use peerwire::{Message, MessageType};
///
/// let request = Message::<bytes::Bytes>::request(21, 0, "Hello World");
/// assert_eq!(request.header.message_type, MessageType::Request);
/// assert_eq!(&request.body[..], b"Hello World");
///
/// let error = Message::<bytes::Bytes>::error_response(21, "failed to process request");
/// assert_eq!(error.error_text().as_deref(), Some("failed to process request"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<B = Bytes> {
	/// The header.
	pub header: MessageHeader,
	/// The body.
	pub body: B,
}

impl<B> Message<B> {
	/// A message from a header and a body.
	pub fn new(header: MessageHeader, body: impl IntoBody<B>) -> Self {
		Self { header, body: body.into_body() }
	}

	/// A request opening request `request_id` for service `service_id`.
	pub fn request(request_id: u32, service_id: i32, body: impl IntoBody<B>) -> Self {
		Self::new(MessageHeader::new(MessageType::Request, request_id, service_id), body)
	}

	/// A response closing request `request_id`; a negative `service_id` means failure.
	pub fn response(request_id: u32, service_id: i32, body: impl IntoBody<B>) -> Self {
		Self::new(MessageHeader::new(MessageType::Response, request_id, service_id), body)
	}

	/// An update from the requester of request `request_id`.
	pub fn requester_update(request_id: u32, service_id: i32, body: impl IntoBody<B>) -> Self {
		Self::new(MessageHeader::new(MessageType::RequesterUpdate, request_id, service_id), body)
	}

	/// An update from the responder of request `request_id`.
	pub fn responder_update(request_id: u32, service_id: i32, body: impl IntoBody<B>) -> Self {
		Self::new(MessageHeader::new(MessageType::ResponderUpdate, request_id, service_id), body)
	}

	/// A one-way stream message. The request id has no meaning to the protocol; 0 is usual.
	pub fn stream(request_id: u32, service_id: i32, body: impl IntoBody<B>) -> Self {
		Self::new(MessageHeader::new(MessageType::Stream, request_id, service_id), body)
	}

	/// Whether this is a response with a negative service id (a failure).
	pub fn is_error_response(&self) -> bool {
		self.header.message_type == MessageType::Response && self.header.service_id < 0
	}
}

impl<B: Body> Message<B> {
	/// An error response (service id -1) closing request `request_id`, with `text` as body.
	pub fn error_response(request_id: u32, text: &str) -> Self {
		Self {
			header: MessageHeader::new(MessageType::Response, request_id, SERVICE_ID_ERROR),
			body: B::from_error_text(text),
		}
	}

	/// The error text of an error response (service id -1), decoded lossily as UTF-8.
	///
	/// `None` for any other message, including responses with other negative service ids,
	/// whose bodies are application-defined.
	pub fn error_text(&self) -> Option<std::borrow::Cow<'_, str>> {
		let is_error = self.header.message_type == MessageType::Response && self.header.service_id == SERVICE_ID_ERROR;
		is_error.then(|| String::from_utf8_lossy(self.body.as_bytes()))
	}

	/// The message as a `Result`: an error response (any negative service id) becomes an
	/// [`Error`](crate::Error) of kind [`Remote`](crate::ErrorKind::Remote) that holds the service
	/// id ([`Error::remote_service_id`](crate::Error::remote_service_id)) and the body, decoded
	/// lossily as UTF-8 ([`Error::remote_text`](crate::Error::remote_text)); any other message is
	/// `Ok` as it is. Nothing on the wire changes: this is how the receiving side reads it.
	///
	/// ```
	/// use peerwire::{Bytes, ErrorKind, Message};
	///
	/// let ok = Message::<Bytes>::response(3, 0, "done").into_result().unwrap();
	/// assert_eq!(&ok.body[..], b"done");
	///
	/// let error = Message::<Bytes>::error_response(3, "no such file").into_result().unwrap_err();
	/// assert_eq!(error.kind(), ErrorKind::Remote);
	/// assert_eq!(error.remote_text(), Some("no such file"));
	/// assert_eq!(error.remote_service_id(), Some(-1));
	/// ```
	pub fn into_result(self) -> Result<Self, crate::Error> {
		if self.is_error_response() {
			let text = String::from_utf8_lossy(self.body.as_bytes()).into_owned();
			return Err(crate::Error::error_response(self.header.service_id, text));
		}
		Ok(self)
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn message_type_round_trips_and_rejects_unknown_values() {
		for value in 0..5 {
			assert_eq!(MessageType::from_u32(value).map(MessageType::to_u32), Some(value));
		}
		assert_eq!(MessageType::from_u32(5), None);
		assert_eq!(MessageType::from_u32(u32::MAX), None);
	}

	#[test]
	fn error_convention() {
		let message = Message::<Bytes>::error_response(7, "nope");
		assert_eq!(message.header.service_id, -1);
		assert!(message.is_error_response());
		assert_eq!(message.error_text().as_deref(), Some("nope"));

		let other_failure = Message::<Bytes>::response(7, -3, "x");
		assert!(other_failure.is_error_response());
		assert_eq!(other_failure.error_text(), None);
		assert_eq!(Message::<Bytes>::response(7, 0, "x").error_text(), None);
	}

	#[test]
	fn into_result_turns_negative_service_ids_into_errors() {
		let error = Message::<Bytes>::response(7, -7, &b"custom"[..]).into_result().unwrap_err();
		assert_eq!(error.kind(), crate::ErrorKind::Remote);
		assert_eq!(error.remote_service_id(), Some(-7));
		assert_eq!(error.remote_text(), Some("custom"));
		assert_eq!(error.to_string(), "error response (service id -7): custom");
		let lossy = Message::<Bytes>::response(7, -1, vec![0xff, b'a']).into_result().unwrap_err();
		assert_eq!(lossy.remote_text(), Some("\u{fffd}a"));
		for message in
			[Message::<Bytes>::response(7, 0, "x"), Message::request(7, -1, "x"), Message::stream(0, -1, "x")]
		{
			assert_eq!(message.clone().into_result().unwrap(), message);
		}
	}
}
