//! Typed interfaces: services, updates and stream messages declared once with
//! [`interface!`](crate::interface), encoded with a pluggable [`Format`].
//!
//! The wire does not change: a typed service is a service id, its updates are update ids, and
//! its bodies are whatever the format makes of the values. A typed peer talks to any other
//! Fizyr RPC peer that uses the same ids and body encoding.
//!
//! # Why a declarative macro
//!
//! The declaration is plain data (ids, names, types, docs), so a `macro_rules!` macro reads it
//! without a proc-macro crate, compiles fast, and expands to code that is easy to follow with
//! `cargo expand`: one module per service with a marker type and its update enums, a `Client`
//! with one method per service, an `Incoming` enum and a `Server`. Everything generic (the typed
//! handles, encoding and decoding, error responses) lives here as ordinary code, not in the
//! expansion. Type errors in the declaration point at the declaration's own tokens.
//!
//! ```
//! # #[cfg(feature = "json")] mod doc {
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct Add { pub a: i64, pub b: i64 }
//!
//! peerwire::interface! {
//!     /// A calculator.
//!     pub mod calculator (format = peerwire::typed::Json) {
//!         /// Add two numbers.
//!         service 1 add(Add) -> i64;
//!         /// Count down from a number, one update per step.
//!         service 2 countdown(u32) -> String {
//!             responder_updates {
//!                 /// The current count.
//!                 1 tick(u32),
//!             }
//!         }
//!         /// Something to print.
//!         stream 10 log(String);
//!     }
//! }
//!
//! # pub async fn main() -> Result<(), peerwire::Error> {
//! let (client, server) = peerwire::transport::memory::pair(&peerwire::Config::default());
//! let mut server = calculator::Server::new(server.split().0);
//! tokio::spawn(async move {
//!     while let Ok(incoming) = server.recv().await {
//!         match incoming {
//!             calculator::Incoming::Add(request, add) => request.send_response(&(add.a + add.b)).await?,
//!             calculator::Incoming::Countdown(request, from) => {
//!                 for i in (1..=from).rev() {
//!                     request.send_update(&calculator::countdown::ResponderUpdate::Tick(i)).await?;
//!                 }
//!                 request.send_response(&"liftoff".to_string()).await?
//!             },
//!             calculator::Incoming::Log(line) => println!("{line}"),
//!             calculator::Incoming::Rejected(rejected) => eprintln!("{}", rejected.error),
//!         }
//!     }
//!     Ok::<_, peerwire::Error>(())
//! });
//!
//! let client = calculator::Client::new(client.write_handle());
//! assert_eq!(client.add(&Add { a: 2, b: 3 }).await?.recv_response().await?, 5);
//! let mut countdown = client.countdown(&2).await?;
//! while let Some(calculator::countdown::ResponderUpdate::Tick(i)) = countdown.recv_update().await? {
//!     println!("{i}");
//! }
//! assert_eq!(countdown.recv_response().await?, "liftoff");
//! # Ok(())
//! # } }
//! # #[cfg(feature = "json")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { doc::main().await.unwrap() }
//! # #[cfg(not(feature = "json"))]
//! # fn main() {}
//! ```

//!
//! # Descriptors on seqpacket
//!
//! Over a Unix seqpacket connection (bodies of type [`UnixBody`](crate::UnixBody)), a typed
//! value can hold file descriptors: put an [`Fd`] in a request, response or stream message type.
//! The generated `Client` takes a seqpacket [`PeerWriteHandle`](crate::PeerWriteHandle) or a
//! `Reconnecting<UnixBody>`, and `Server::from_read_handle` a seqpacket read handle.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BoxError, Error};
use crate::handle::{ReceivedRequestHandle, SentRequestHandle};
use crate::message::{Message, MessageType, SERVICE_ID_ERROR};

mod body;
mod format;
#[doc(hidden)]
pub mod macros;
mod sender;

pub use body::{Fd, TypedBody};
#[cfg(feature = "json")]
pub use format::Json;
#[cfg(feature = "msgpack")]
pub use format::MsgPack;
pub use format::{Format, decode_body, encode_body};
pub use sender::Sender;

/// A service of an interface: its id, its request and response types and its updates.
///
/// Implemented by the marker type `Service` that [`interface!`](crate::interface) generates in
/// each service's module.
pub trait Service: Send + Sync + 'static {
	/// The service id on the wire.
	const ID: i32;
	/// The service's name in the declaration.
	const NAME: &'static str;
	/// How bodies are encoded.
	type Format: Format;
	/// The request body.
	type Request: Serialize + DeserializeOwned + Send + 'static;
	/// The response body.
	type Response: Serialize + DeserializeOwned + Send + 'static;
	/// The updates the requester may send ([`NoUpdates`] if none).
	type RequesterUpdate: UpdateSet;
	/// The updates the responder may send ([`NoUpdates`] if none).
	type ResponderUpdate: UpdateSet;
	/// How error responses are typed: [`Untyped`] (plain text), or [`Typed<E>`] for a service
	/// declared with `error E`.
	type ErrorResponse: ErrorSpec;
}

/// What a call of service `S` fails with: [`Error`] for a service without a declared error
/// type, [`TypedError<E>`] for one declared with `error E`.
pub type CallError<S> = <<S as Service>::ErrorResponse as ErrorSpec>::CallError;

/// How the error responses of a service are typed: [`Untyped`] or [`Typed<E>`].
pub trait ErrorSpec: Send + Sync + 'static {
	/// What the responder passes to [`ReceivedRequest::send_error`]: `str` or `E`.
	type Value: ?Sized;
	/// What the requester's calls fail with: [`Error`] or [`TypedError<E>`].
	type CallError: From<Error> + fmt::Debug + Send + 'static;

	/// The body of an error response carrying `value`.
	fn encode<F: Format>(value: &Self::Value) -> Result<Bytes, BoxError>;

	/// What a call of service `S` fails with when the remote answers with an error response
	/// whose body is `body`.
	fn call_error<S: Service>(body: &[u8]) -> Self::CallError;
}

/// The error responses of a service without a declared error type: UTF-8 text, as every Fizyr
/// RPC peer sends them. A call fails with [`Error`] of kind [`Remote`](crate::ErrorKind::Remote)
/// whose text reads `NAME (ID): TEXT`.
#[derive(Debug, Clone, Copy)]
pub enum Untyped {}

impl ErrorSpec for Untyped {
	type Value = str;
	type CallError = Error;

	fn encode<F: Format>(value: &str) -> Result<Bytes, BoxError> {
		Ok(Bytes::copy_from_slice(value.as_bytes()))
	}

	fn call_error<S: Service>(body: &[u8]) -> Error {
		remote_error::<S>(body)
	}
}

/// The error responses of a service declared with `error E`: the body is an `E` in the
/// interface's format. With JSON that is readable text for any peer (`{"NotCalibrated":null}`);
/// with a binary format an untyped peer sees the encoded bytes.
///
/// A call fails with [`TypedError::Remote`] carrying the decoded `E`. An error response whose
/// body is not an `E` (an untyped peer's text, or one of peerwire's own, such as
/// [`DROPPED_REQUEST_TEXT`](crate::DROPPED_REQUEST_TEXT)) is [`TypedError::Other`] with an
/// [`Error`] of kind [`Remote`](crate::ErrorKind::Remote).
#[derive(Debug)]
pub struct Typed<E>(PhantomData<fn() -> E>);

impl<E> ErrorSpec for Typed<E>
where
	E: Serialize + DeserializeOwned + fmt::Debug + Send + 'static,
{
	type Value = E;
	type CallError = TypedError<E>;

	fn encode<F: Format>(value: &E) -> Result<Bytes, BoxError> {
		encode_body::<F, _>(value)
	}

	fn call_error<S: Service>(body: &[u8]) -> TypedError<E> {
		match decode_body::<S::Format, E>(body) {
			Ok(error) => TypedError::Remote(error),
			Err(_) => TypedError::Other(remote_error::<S>(body)),
		}
	}
}

/// How a call of a service with a declared error type `E` failed.
#[derive(Debug)]
pub enum TypedError<E> {
	/// The remote answered with an error response carrying an `E`.
	Remote(E),
	/// Anything else: the connection ended, a deadline passed, the response did not decode, or
	/// the remote answered with an error response that is not an `E` (kind
	/// [`Remote`](crate::ErrorKind::Remote), with its text).
	Other(Error),
}

impl<E> TypedError<E> {
	/// The remote's typed error, if that is what this is.
	pub fn remote(&self) -> Option<&E> {
		match self {
			Self::Remote(error) => Some(error),
			Self::Other(_) => None,
		}
	}

	/// The untyped error, if that is what this is.
	pub fn other(&self) -> Option<&Error> {
		match self {
			Self::Remote(_) => None,
			Self::Other(error) => Some(error),
		}
	}
}

impl<E> From<Error> for TypedError<E> {
	fn from(error: Error) -> Self {
		Self::Other(error)
	}
}

impl<E: fmt::Debug> fmt::Display for TypedError<E> {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		match self {
			Self::Remote(error) => write!(f, "error response: {error:?}"),
			Self::Other(error) => fmt::Display::fmt(error, f),
		}
	}
}

impl<E: fmt::Debug> std::error::Error for TypedError<E> {
	fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
		match self {
			Self::Remote(_) => None,
			Self::Other(error) => Some(error),
		}
	}
}

/// An error of kind `Remote` for an error response to service `S`: `NAME (ID): TEXT`.
fn remote_error<S: Service>(body: &[u8]) -> Error {
	Error::remote(format!("{} ({})", S::NAME, S::ID), String::from_utf8_lossy(body).into_owned())
}

/// A stream message of an interface.
pub trait StreamMessage: Send + Sync + 'static {
	/// The service id on the wire.
	const ID: i32;
	/// The stream's name in the declaration.
	const NAME: &'static str;
	/// How the body is encoded.
	type Format: Format;
	/// The body.
	type Body: Serialize + DeserializeOwned + Send + 'static;
}

/// The updates one side of a service may send: an enum with one variant per update id.
pub trait UpdateSet: Sized + Send + 'static {
	/// Every update of the set, for introspection.
	const INFO: &'static [UpdateInfo];

	/// The update id and encoded body of this update.
	fn encode<F: Format>(&self) -> Result<(i32, Bytes), BoxError>;

	/// Decode an update with id `id`; fails for an id the set does not declare.
	fn decode<F: Format>(id: i32, body: &[u8]) -> Result<Self, UpdateDecodeError>;
}

/// Why an update could not be decoded.
#[derive(Debug)]
pub enum UpdateDecodeError {
	/// The update id is not declared for this service and direction.
	UnknownId,
	/// The body did not decode as the declared type.
	Body(BoxError),
}

/// The update set of a service side that sends no updates. It has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoUpdates {}

impl UpdateSet for NoUpdates {
	const INFO: &'static [UpdateInfo] = &[];

	fn encode<F: Format>(&self) -> Result<(i32, Bytes), BoxError> {
		match *self {}
	}

	fn decode<F: Format>(_: i32, _: &[u8]) -> Result<Self, UpdateDecodeError> {
		Err(UpdateDecodeError::UnknownId)
	}
}

/// What an interface declares, for tools (such as a command-line client) to list at run time.
#[derive(Debug, Clone, Copy)]
pub struct InterfaceInfo {
	/// The interface's module name.
	pub name: &'static str,
	/// The doc comment of the declaration, one line per doc line.
	pub doc: &'static str,
	/// The body format's name.
	pub format: &'static str,
	/// The services.
	pub services: &'static [ServiceInfo],
	/// The stream messages.
	pub streams: &'static [StreamInfo],
}

/// A declared service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
	/// The service id.
	pub id: i32,
	/// The name.
	pub name: &'static str,
	/// The doc comment.
	pub doc: &'static str,
	/// The request type, as written.
	pub request: &'static str,
	/// The response type, as written.
	pub response: &'static str,
	/// The updates the requester may send.
	pub requester_updates: &'static [UpdateInfo],
	/// The updates the responder may send.
	pub responder_updates: &'static [UpdateInfo],
}

/// A declared update.
#[derive(Debug, Clone, Copy)]
pub struct UpdateInfo {
	/// The update id (the service id field of the update message).
	pub id: i32,
	/// The name.
	pub name: &'static str,
	/// The doc comment.
	pub doc: &'static str,
	/// The body type, as written.
	pub body: &'static str,
}

/// A declared stream message.
#[derive(Debug, Clone, Copy)]
pub struct StreamInfo {
	/// The service id.
	pub id: i32,
	/// The name.
	pub name: &'static str,
	/// The doc comment.
	pub doc: &'static str,
	/// The body type, as written.
	pub body: &'static str,
}

fn encode<F: Format, T: Serialize + ?Sized, B: TypedBody>(
	value: &T,
	what: impl FnOnce() -> String,
) -> Result<B, Error> {
	body::encode_into(|| encode_body::<F, _>(value)).map_err(|source| Error::encode(what(), source))
}

fn decode<F: Format, T: DeserializeOwned, B: TypedBody>(
	body: &mut B,
	what: impl FnOnce() -> String,
) -> Result<T, Error> {
	body::decode_from(body, decode_body::<F, _>).map_err(|source| Error::decode(what(), source))
}

/// Encode an update: its id and its body.
fn encode_update<F: Format, U: UpdateSet, B: TypedBody>(update: &U) -> Result<(i32, B), BoxError> {
	let mut id = 0;
	let body = body::encode_into(|| {
		let (update_id, bytes) = update.encode::<F>()?;
		id = update_id;
		Ok(bytes)
	})?;
	Ok((id, body))
}

fn decode_update<S: Service, U: UpdateSet, B: TypedBody>(message: &mut Message<B>, side: &str) -> Result<U, Error> {
	let id = message.header.service_id;
	body::decode_from(&mut message.body, |bytes| U::decode::<S::Format>(id, bytes)).map_err(|error| {
		let what = format!("{side} update {id} of service `{}` ({})", S::NAME, S::ID);
		match error {
			UpdateDecodeError::UnknownId => Error::unknown_service(what),
			UpdateDecodeError::Body(source) => Error::decode(what, source),
		}
	})
}

/// Open a request for service `S`; returns once it is queued.
pub async fn call<S: Service, P: Sender>(peer: &P, request: &S::Request) -> Result<SentRequest<S, P::Body>, Error> {
	let body = encode::<S::Format, _, _>(request, || format!("request of service `{}` ({})", S::NAME, S::ID))?;
	let inner = peer.send_request(S::ID, body).await?;
	Ok(SentRequest { inner, _service: PhantomData })
}

/// Send a stream message `T`; returns once it is queued.
pub async fn send_stream<T: StreamMessage>(peer: &impl Sender, body: &T::Body) -> Result<(), Error> {
	let body = encode::<T::Format, _, _>(body, || format!("stream message `{}` ({})", T::NAME, T::ID))?;
	peer.send_stream(T::ID, body).await
}

/// Decode a stream message's body as `T`, taking the descriptors of its [`Fd`]s out of it.
pub fn decode_stream<T: StreamMessage, B: TypedBody>(message: &mut Message<B>) -> Result<T::Body, Error> {
	decode::<T::Format, _, _>(&mut message.body, || format!("stream message `{}` ({})", T::NAME, T::ID))
}

/// A typed [`SentRequestHandle`]: send `S::RequesterUpdate`s, receive `S::ResponderUpdate`s and
/// the `S::Response`, over a connection with bodies of type `B`.
#[derive(Debug)]
pub struct SentRequest<S: Service, B: TypedBody = Bytes> {
	inner: SentRequestHandle<B>,
	_service: PhantomData<fn() -> S>,
}

impl<S: Service, B: TypedBody> SentRequest<S, B> {
	/// The request id.
	pub fn request_id(&self) -> u32 {
		self.inner.request_id()
	}

	/// Send a requester update.
	pub async fn send_update(&self, update: &S::RequesterUpdate) -> Result<(), Error> {
		let (id, body) = encode_update::<S::Format, _, B>(update)
			.map_err(|source| Error::encode(format!("requester update of service `{}`", S::NAME), source))?;
		self.inner.send_update(id, body).await
	}

	/// Receive the next responder update; `Ok(None)` once the response has arrived.
	///
	/// An update that does not decode is an error of kind
	/// [`Decode`](crate::ErrorKind::Decode) (or [`UnknownService`](crate::ErrorKind::UnknownService)
	/// for an undeclared update id) for this update only; the request stays open.
	pub async fn recv_update(&mut self) -> Result<Option<S::ResponderUpdate>, Error> {
		match self.inner.recv_update().await? {
			Some(mut message) => decode_update::<S, _, _>(&mut message, "responder").map(Some),
			None => Ok(None),
		}
	}

	/// Receive the response.
	///
	/// An error response from the remote fails the call: for a service without a declared
	/// error type with an [`Error`] of kind [`Remote`](crate::ErrorKind::Remote) whose text
	/// names the service (`move_to (1): calibration sensor not found`), for one declared with
	/// `error E` with [`TypedError::Remote`] carrying the `E`.
	pub async fn recv_response(&mut self) -> Result<S::Response, CallError<S>> {
		let response = self.inner.recv_response().await?;
		Self::decode_response(response)
	}

	/// [`recv_response`](Self::recv_response) with a deadline.
	pub async fn recv_response_timeout(&mut self, timeout: Duration) -> Result<S::Response, CallError<S>> {
		let response = self.inner.recv_response_timeout(timeout).await?;
		Self::decode_response(response)
	}

	fn decode_response(mut response: Message<B>) -> Result<S::Response, CallError<S>> {
		if response.is_error_response() {
			return Err(<S::ErrorResponse as ErrorSpec>::call_error::<S>(response.body.as_bytes()));
		}
		let what = || format!("response of service `{}` ({})", S::NAME, S::ID);
		Ok(decode::<S::Format, _, _>(&mut response.body, what)?)
	}

	/// The untyped handle.
	pub fn into_inner(self) -> SentRequestHandle<B> {
		self.inner
	}
}

/// A typed [`ReceivedRequestHandle`]: receive `S::RequesterUpdate`s, send `S::ResponderUpdate`s
/// and the `S::Response`. Dropped unanswered, it answers with an error response like the handle
/// it wraps.
#[derive(Debug)]
pub struct ReceivedRequest<S: Service, B: TypedBody = Bytes> {
	inner: ReceivedRequestHandle<B>,
	_service: PhantomData<fn() -> S>,
}

impl<S: Service, B: TypedBody> ReceivedRequest<S, B> {
	/// Wrap a received request of service `S` and decode its body (taking the descriptors of its
	/// [`Fd`]s out of it). A body that does not decode is answered with an error response naming
	/// the service, and returned as the error.
	pub async fn accept(request: ReceivedRequestHandle<B>, body: &mut B) -> Result<(Self, S::Request), Error> {
		match decode::<S::Format, _, _>(body, || format!("request of service `{}` ({})", S::NAME, S::ID)) {
			Ok(value) => Ok((Self { inner: request, _service: PhantomData }, value)),
			Err(error) => {
				let _ = request.send_error_response(&error.to_string()).await;
				Err(error)
			},
		}
	}

	/// The request id.
	pub fn request_id(&self) -> u32 {
		self.inner.request_id()
	}

	/// Receive the next requester update; `Ok(None)` once the response is sent.
	pub async fn recv_update(&mut self) -> Result<Option<S::RequesterUpdate>, Error> {
		match self.inner.recv_update().await? {
			Some(mut message) => decode_update::<S, _, _>(&mut message, "requester").map(Some),
			None => Ok(None),
		}
	}

	/// Send a responder update.
	pub async fn send_update(&self, update: &S::ResponderUpdate) -> Result<(), Error> {
		let (id, body) = encode_update::<S::Format, _, B>(update)
			.map_err(|source| Error::encode(format!("responder update of service `{}`", S::NAME), source))?;
		self.inner.send_update(id, body).await
	}

	/// Send the response, closing the request.
	pub async fn send_response(&self, response: &S::Response) -> Result<(), Error> {
		let body = encode::<S::Format, _, B>(response, || format!("response of service `{}` ({})", S::NAME, S::ID))?;
		self.inner.send_response(0, body).await
	}

	/// Send an error response, closing the request: the text for a service without a declared
	/// error type, a value of the declared type for a service declared with `error E` (encoded
	/// in the interface's format).
	pub async fn send_error(&self, error: &<S::ErrorResponse as ErrorSpec>::Value) -> Result<(), Error> {
		let body = body::encode_into::<B>(|| <S::ErrorResponse as ErrorSpec>::encode::<S::Format>(error))
			.map_err(|source| Error::encode(format!("error response of service `{}` ({})", S::NAME, S::ID), source))?;
		self.inner.send_response(SERVICE_ID_ERROR, body).await
	}

	/// Send an error response with `text` as its body, whatever the service's error type: what
	/// an untyped peer sends. The requester of a service declared with `error E` sees it as
	/// [`TypedError::Other`].
	pub async fn send_error_text(&self, text: &str) -> Result<(), Error> {
		self.inner.send_error_response(text).await
	}

	/// The untyped handle.
	pub fn into_inner(self) -> ReceivedRequestHandle<B> {
		self.inner
	}
}

/// A message the typed server did not hand to the application as a typed value: a request or
/// stream for an undeclared service, or one whose body did not decode. Requests among them have
/// already been answered with an error response.
#[derive(Debug)]
pub struct Rejected<B: TypedBody = Bytes> {
	/// Request or stream.
	pub message_type: MessageType,
	/// The service id the remote used.
	pub service_id: i32,
	/// The body as received (less any descriptors a failed decode took out of it).
	pub body: B,
	/// Why it was rejected (kind [`UnknownService`](crate::ErrorKind::UnknownService) or
	/// [`Decode`](crate::ErrorKind::Decode)).
	pub error: Error,
}

impl<B: TypedBody> Rejected<B> {
	/// Answer a request for an undeclared service with an error response, and describe it.
	pub async fn unknown_request(request: ReceivedRequestHandle<B>, body: B, interface: &str) -> Self {
		let service_id = request.service_id();
		let error = Error::unknown_service(format!("service {service_id} of interface `{interface}`"));
		let _ = request.send_error_response(&error.to_string()).await;
		Self { message_type: MessageType::Request, service_id, body, error }
	}

	/// A request whose body failed to decode (already answered by [`ReceivedRequest::accept`]).
	pub fn undecodable_request(service_id: i32, body: B, error: Error) -> Self {
		Self { message_type: MessageType::Request, service_id, body, error }
	}

	/// A stream message that is not declared or did not decode.
	pub fn stream(message: Message<B>, interface: &str, error: Option<Error>) -> Self {
		let service_id = message.header.service_id;
		let error =
			error.unwrap_or_else(|| Error::unknown_service(format!("stream {service_id} of interface `{interface}`")));
		Self { message_type: MessageType::Stream, service_id, body: message.body, error }
	}
}
