//! The `interface!` macro and its helpers.
//!
//! `interface!` parses the declaration one item at a time (a "muncher": services and streams may
//! come in any order, each with its doc comment; `__interface_service!` reads one service in
//! stages), then hands the collected lists to `__interface_emit!`, which writes the module. Each
//! rule's input is plain data in brackets, so every step can be read on its own.
//!
//! Mistakes a person makes often (a missing `;`, a parameter list instead of one type, an update
//! block with a typo) have rules of their own that end in `compile_error!` with a message in the
//! declaration's terms, instead of the "no rules expected" of a muncher. Duplicate ids are
//! checked by `__interface_unique!`, one `const` assertion per pair, which fails the build with a
//! message naming both declarations.

#[doc(hidden)]
pub use pastey::paste;

/// Declare a typed interface: its services (with their updates and error type) and stream
/// messages, with the ids used on the wire and the body format.
///
/// ```text
/// interface! {
///     /// Docs of the interface.
///     pub mod NAME (format = FORMAT) {
///         /// Docs of a service.
///         service ID NAME(REQUEST) -> RESPONSE;
///         /// A service whose request has no body: the client method takes no argument.
///         service ID NAME -> RESPONSE;
///         /// A service with a typed error response.
///         service ID NAME(REQUEST) -> RESPONSE, error ERROR;
///         /// A service with updates; the two blocks may come in either order, and either may
///         /// be left out.
///         service ID NAME(REQUEST) -> RESPONSE {
///             requester_updates { /// docs
///                                 ID NAME(BODY), ... }
///             responder_updates { ID NAME(BODY), ... }
///         }
///         /// Docs of a stream message.
///         stream ID NAME(BODY);
///         /// A stream message without a body (a command).
///         stream ID NAME;
///     }
/// }
/// ```
///
/// Names are `snake_case`; the generated enum variants are their `CamelCase` forms. Each
/// request, response, update and stream message has **one** body type: for several values,
/// declare a struct (or use a tuple). Body types are resolved from inside the generated module,
/// which imports everything of the module the macro is called in (`use super::*`): use plain
/// names from there or `crate::` paths.
///
/// Ids must be unique among the services, among the stream messages, and among each side's
/// updates of a service; a duplicate is a compile error naming both declarations (a service
/// and a stream message may share an id: they are different kinds of message on the wire).
///
/// # Bodies
///
/// A message without a body (`stream 10 stop;`, `service 2 home -> ();`) has type `()` and an
/// empty body on the wire. In general a zero-sized value the format encodes like `()` (`()`,
/// unit structs) is sent as an empty body, and an empty body from any peer reads as the
/// format's `()` (JSON `null`, so also as `None`; see
/// [`encode_body`](crate::typed::encode_body)). `None` itself is sent as `null`.
///
/// # Errors
///
/// A service without `error` answers failures with an error response whose body is text; the
/// client sees an [`Error`](crate::Error) of kind [`Remote`](crate::ErrorKind::Remote) reading
/// `NAME (ID): TEXT`. A service with `, error E` sends an `E` encoded in the interface's format
/// (JSON is readable text for any peer), and its client method fails with a
/// [`TypedError<E>`](crate::typed::TypedError); see [`Typed`](crate::typed::Typed).
///
/// # What is generated
///
/// The module `NAME` contains:
/// - `INTERFACE`: an [`InterfaceInfo`](crate::typed::InterfaceInfo) listing everything declared,
///   with ids and docs;
/// - a module per service, with the marker type `Service` (implementing
///   [`Service`](crate::typed::Service)) and the enums `RequesterUpdate` and `ResponderUpdate`
///   (or [`NoUpdates`](crate::typed::NoUpdates)). The update enums derive `Debug`, `Clone` and
///   `PartialEq`, so every update body type must implement `Clone` and `PartialEq` too;
/// - a module per stream message, with the marker type `Stream`;
/// - `Client`: one async method per service returning a typed
///   [`SentRequest`](crate::typed::SentRequest), `send_NAME` per stream message, and `flush`,
///   `close` and `closed`. It sends through any [`Sender`](crate::typed::Sender): a
///   [`PeerWriteHandle`](crate::PeerWriteHandle) or a [`Reconnecting`](crate::Reconnecting)
///   client. **The `send_*` methods and calls return once the message is queued**: await
///   `flush` before the process exits. (So `new`, `peer`, `flush`, `close` and `closed` cannot
///   be service names.)
/// - `Incoming`: an enum of everything the remote may send, one variant per service (with a
///   typed [`ReceivedRequest`](crate::typed::ReceivedRequest) and the decoded request) and per
///   stream message, plus `Rejected` for what is not declared or does not decode (requests among
///   those are answered with an error response automatically);
/// - `Server`: wraps a [`PeerReadHandle`](crate::PeerReadHandle) and yields `Incoming`s.
///
/// See [the module docs](crate::typed) for an example.
#[macro_export]
macro_rules! interface {
	(
		$(#[doc = $doc:literal])*
		$vis:vis mod $name:ident (format = $format:ty) {
			$($items:tt)*
		}
	) => {
		$crate::__interface_parse! {
			[[$($doc)*] [$vis] [$name] [$format]]
			services []
			streams []
			items [$($items)*]
		}
	};
	($($other:tt)*) => {
		::core::compile_error!(
			"expected `/// docs` then `pub mod NAME (format = FORMAT) { service ...; stream ...; }`"
		);
	};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __interface_parse {
	// A service: read in stages by `__interface_service!`.
	(
		$head:tt services $services:tt streams $streams:tt
		items [$(#[doc = $doc:literal])* service $id:literal $service:ident $($rest:tt)*]
	) => {
		$crate::__interface_service! {
			@request [$head services $services streams $streams] [[$($doc)*] $id $service] [$($rest)*]
		}
	};
	// A stream message.
	(
		$head:tt services $services:tt streams [$($streams:tt)*]
		items [$(#[doc = $doc:literal])* stream $id:literal $stream:ident ( $body:ty ) ; $($rest:tt)*]
	) => {
		$crate::__interface_parse! {
			$head
			services $services
			streams [$($streams)* { [$($doc)*] $id $stream [$body] body }]
			items [$($rest)*]
		}
	};
	// A stream message without a body.
	(
		$head:tt services $services:tt streams [$($streams:tt)*]
		items [$(#[doc = $doc:literal])* stream $id:literal $stream:ident $(())? ; $($rest:tt)*]
	) => {
		$crate::__interface_parse! {
			$head
			services $services
			streams [$($streams)* { [$($doc)*] $id $stream [()] none }]
			items [$($rest)*]
		}
	};
	// Everything parsed.
	($head:tt services $services:tt streams $streams:tt items []) => {
		$crate::__interface_emit! { $head $services $streams }
	};

	// Mistakes.
	(
		$head:tt services $services:tt streams $streams:tt
		items [$(#[doc = $doc:literal])* stream $id:literal $stream:ident ( $($param:ident : $type:ty),+ $(,)? ) $($rest:tt)*]
	) => {
		::core::compile_error!(::core::concat!(
			"stream message `", ::core::stringify!($stream), "` has one body type, not a parameter list: ",
			"declare a struct with these fields, or use a tuple: `", ::core::stringify!($stream),
			"((", ::core::stringify!($($type),+), "))`"
		));
	};
	(
		$head:tt services $services:tt streams $streams:tt
		items [$(#[doc = $doc:literal])* stream $id:literal $stream:ident $($rest:tt)*]
	) => {
		::core::compile_error!(::core::concat!(
			"expected `stream ", ::core::stringify!($id), " ", ::core::stringify!($stream), "(BODY);` or `stream ",
			::core::stringify!($id), " ", ::core::stringify!($stream), ";`: is the `;` at its end missing?"
		));
	};
	($head:tt services $services:tt streams $streams:tt items [$(#[doc = $doc:literal])* service $($rest:tt)*]) => {
		::core::compile_error!(
			"expected `service ID NAME(REQUEST) -> RESPONSE;`, the id a number: `service 1 move_to(Target) -> Done;`"
		);
	};
	($head:tt services $services:tt streams $streams:tt items [$(#[doc = $doc:literal])* stream $($rest:tt)*]) => {
		::core::compile_error!("expected `stream ID NAME(BODY);`, the id a number: `stream 10 stop;`");
	};
	// A doc comment before something else: read past it, so that the mistake after it is named.
	($head:tt services $services:tt streams $streams:tt items [#[doc = $doc:literal] $($rest:tt)*]) => {
		$crate::__interface_parse! { $head services $services streams $streams items [$($rest)*] }
	};
	($head:tt services $services:tt streams $streams:tt items [# $attribute:tt $($rest:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"only doc comments may come before a declaration in `interface!`, not `#",
			::core::stringify!($attribute), "`"
		));
	};
	($head:tt services $services:tt streams $streams:tt items [$other:tt $($rest:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"expected `service ID NAME(REQUEST) -> RESPONSE;` or `stream ID NAME(BODY);`, found `",
			::core::stringify!($other), "`"
		));
	};
}

/// Reads one service, in stages: `@request`, `@response`, `@updates`, then back to
/// `__interface_parse!` with the service appended. `$state` is the parser's state, `$entry` the
/// service's docs, id and name.
#[doc(hidden)]
#[macro_export]
macro_rules! __interface_service {
	// The request: `(TYPE)`, or nothing for a request without a body.
	(@request $state:tt $entry:tt [( $request:ty ) $($rest:tt)*]) => {
		$crate::__interface_service! { @response $state $entry [[$request] body] [$($rest)*] }
	};
	(@request $state:tt $entry:tt [$(())? -> $($rest:tt)*]) => {
		$crate::__interface_service! { @response $state $entry [[()] none] [-> $($rest)*] }
	};
	(@request $state:tt [$doc:tt $id:tt $service:ident] [( $($param:ident : $type:ty),+ $(,)? ) $($rest:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"service `", ::core::stringify!($service), "` has one request type, not a parameter list: ",
			"declare a struct with these fields, or use a tuple: `", ::core::stringify!($service),
			"((", ::core::stringify!($($type),+), ")) -> ...`"
		));
	};
	(@request $state:tt [$doc:tt $id:tt $service:ident] [$($rest:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"expected `(REQUEST) -> RESPONSE` after `service ", ::core::stringify!($id), " ",
			::core::stringify!($service), "` (or `-> RESPONSE` for a request without a body)"
		));
	};

	// The response, the error type, and the end of the declaration or its updates.
	(@response $state:tt $entry:tt $request:tt [-> $response:ty, error $error:ty ; $($rest:tt)*]) => {
		$crate::__interface_service! {
			@finish $state $entry $request [$response] [$crate::typed::Typed<$error>] [] [] [$($rest)*]
		}
	};
	(@response $state:tt $entry:tt $request:tt [-> $response:ty, error $error:ty { $($updates:tt)* } $($rest:tt)*]) => {
		$crate::__interface_service! {
			@updates $state $entry $request [$response] [$crate::typed::Typed<$error>] [$($updates)*] [$($rest)*]
		}
	};
	(@response $state:tt $entry:tt $request:tt [-> $response:ty ; $($rest:tt)*]) => {
		$crate::__interface_service! {
			@finish $state $entry $request [$response] [$crate::typed::Untyped] [] [] [$($rest)*]
		}
	};
	(@response $state:tt $entry:tt $request:tt [-> $response:ty { $($updates:tt)* } $($rest:tt)*]) => {
		$crate::__interface_service! {
			@updates $state $entry $request [$response] [$crate::typed::Untyped] [$($updates)*] [$($rest)*]
		}
	};
	(@response $state:tt [$doc:tt $id:tt $service:ident] $request:tt [-> $($rest:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"expected `;` at the end of the declaration of service `", ::core::stringify!($service),
			"` (or `{ requester_updates { ... } responder_updates { ... } }`, or `, error TYPE` after the response type)"
		));
	};
	(@response $state:tt [$doc:tt $id:tt $service:ident] $request:tt [$($rest:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"service `", ::core::stringify!($service), "` needs a response type: `-> RESPONSE` (`-> ()` for none)"
		));
	};

	// The update blocks, in either order.
	(
		@updates $state:tt $entry:tt $request:tt $response:tt $errors:tt
		[requester_updates { $($requester:tt)* } $(responder_updates { $($responder:tt)* })?] $rest:tt
	) => {
		$crate::__interface_service! {
			@finish $state $entry $request $response $errors [$($requester)*] [$($($responder)*)?] $rest
		}
	};
	(
		@updates $state:tt $entry:tt $request:tt $response:tt $errors:tt
		[responder_updates { $($responder:tt)* } $(requester_updates { $($requester:tt)* })?] $rest:tt
	) => {
		$crate::__interface_service! {
			@finish $state $entry $request $response $errors [$($($requester)*)?] [$($responder)*] $rest
		}
	};
	(@updates $state:tt $entry:tt $request:tt $response:tt $errors:tt [] $rest:tt) => {
		$crate::__interface_service! { @finish $state $entry $request $response $errors [] [] $rest }
	};
	(@updates $state:tt [$doc:tt $id:tt $service:ident] $request:tt $response:tt $errors:tt [$($other:tt)*] $rest:tt) => {
		::core::compile_error!(::core::concat!(
			"in the braces of service `", ::core::stringify!($service),
			"`, expected `requester_updates { ... }` and/or `responder_updates { ... }` (in either order, each at most once)"
		));
	};

	// Done: append the service and read on.
	(
		@finish [$head:tt services [$($services:tt)*] streams $streams:tt] [$doc:tt $id:tt $service:ident]
		[$request:tt $kind:ident] $response:tt $errors:tt $requester:tt $responder:tt [$($rest:tt)*]
	) => {
		$crate::__interface_parse! {
			$head
			services [$($services)* { $doc $id $service $request $response $errors $requester $responder $kind }]
			streams $streams
			items [$($rest)*]
		}
	};
}

/// A compile error for every pair of equal ids: `$what` names the kind of declaration, `$owner`
/// (if any) the service it belongs to.
#[doc(hidden)]
#[macro_export]
macro_rules! __interface_unique {
	($what:literal $owner:tt []) => {};
	($what:literal $owner:tt [($id:literal $name:ident) $(($other_id:literal $other:ident))*]) => {
		$($crate::__interface_unique! { @pair $what $owner $id $name $other_id $other })*
		$crate::__interface_unique! { $what $owner [$(($other_id $other))*] }
	};
	(@pair $what:literal [] $id:literal $name:ident $other_id:literal $other:ident) => {
		const _: () = ::core::assert!(
			$id != $other_id,
			::core::concat!(
				$what, " `", ::core::stringify!($name), "` and ", $what, " `", ::core::stringify!($other),
				"` both have id ", ::core::stringify!($id)
			)
		);
	};
	(@pair $what:literal [$owner:ident] $id:literal $name:ident $other_id:literal $other:ident) => {
		const _: () = ::core::assert!(
			$id != $other_id,
			::core::concat!(
				$what, " `", ::core::stringify!($name), "` and ", $what, " `", ::core::stringify!($other),
				"` of service `", ::core::stringify!($owner), "` both have id ", ::core::stringify!($id)
			)
		);
	};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __interface_emit {
	(
		[[$($doc:literal)*] [$vis:vis] [$name:ident] [$format:ty]]
		[$({
			[$($service_doc:literal)*] $service_id:literal $service:ident [$request:ty] [$response:ty] [$errors:ty]
			[$($requester:tt)*] [$($responder:tt)*] $request_kind:ident
		})*]
		[$({ [$($stream_doc:literal)*] $stream_id:literal $stream:ident [$body:ty] $body_kind:ident })*]
	) => { $crate::typed::macros::paste! {
		$(#[doc = $doc])*
		$vis mod $name {
			#![allow(unused_imports)]
			use super::*;

			$crate::__interface_unique! { "service" [] [$(($service_id $service))*] }
			$crate::__interface_unique! { "stream message" [] [$(($stream_id $stream))*] }

			/// The body format of this interface.
			pub type Format = $format;

			/// Everything this interface declares.
			pub const INTERFACE: $crate::typed::InterfaceInfo = $crate::typed::InterfaceInfo {
				name: stringify!($name),
				doc: concat!($($doc, "\n",)*),
				format: <$format as $crate::typed::Format>::NAME,
				services: &[$(
					$crate::typed::ServiceInfo {
						id: $service_id,
						name: stringify!($service),
						doc: concat!($($service_doc, "\n",)*),
						request: stringify!($request),
						response: stringify!($response),
						requester_updates: <$service::RequesterUpdate as $crate::typed::UpdateSet>::INFO,
						responder_updates: <$service::ResponderUpdate as $crate::typed::UpdateSet>::INFO,
					},
				)*],
				streams: &[$(
					$crate::typed::StreamInfo {
						id: $stream_id,
						name: stringify!($stream),
						doc: concat!($($stream_doc, "\n",)*),
						body: stringify!($body),
					},
				)*],
			};

			$(
				$(#[doc = $service_doc])*
				#[doc = ""]
				#[doc = concat!("Service id ", stringify!($service_id), ".")]
				pub mod $service {
					use super::*;

					/// The marker type of this service.
					#[derive(Debug)]
					pub struct Service;

					impl $crate::typed::Service for Service {
						const ID: i32 = $service_id;
						const NAME: &'static str = stringify!($service);
						type Format = super::Format;
						type Request = $request;
						type Response = $response;
						type RequesterUpdate = RequesterUpdate;
						type ResponderUpdate = ResponderUpdate;
						type ErrorResponse = $errors;
					}

					$crate::__interface_updates! { RequesterUpdate "requester" "requester update" $service [$($requester)*] }
					$crate::__interface_updates! { ResponderUpdate "responder" "responder update" $service [$($responder)*] }
				}
			)*

			$(
				$(#[doc = $stream_doc])*
				#[doc = ""]
				#[doc = concat!("Stream message id ", stringify!($stream_id), ".")]
				pub mod $stream {
					use super::*;

					/// The marker type of this stream message.
					#[derive(Debug)]
					pub struct Stream;

					impl $crate::typed::StreamMessage for Stream {
						const ID: i32 = $stream_id;
						const NAME: &'static str = stringify!($stream);
						type Format = super::Format;
						type Body = $body;
					}
				}
			)*

			/// Sends this interface's requests and stream messages through `S`: a
			/// `peerwire::PeerWriteHandle` (one connection) or a
			/// `peerwire::Reconnecting` client.
			///
			/// Calls and `send_*` return once the message is queued, not once it is written:
			/// await [`flush`](Self::flush) before the process exits.
			#[derive(Debug, Clone)]
			pub struct Client<S = $crate::PeerWriteHandle> {
				peer: S,
			}

			impl<S: $crate::typed::Sender> Client<S> {
				/// A client sending through `peer`.
				pub fn new(peer: S) -> Self {
					Self { peer }
				}

				/// The untyped sender.
				pub fn peer(&self) -> &S {
					&self.peer
				}

				/// Wait until every request and message queued before this call has been written to
				/// the transport. `send_*` and calls return once queued: flush before exit, so that
				/// a last command is not lost.
				pub async fn flush(&self) -> ::core::result::Result<(), $crate::Error> {
					$crate::typed::Sender::flush(&self.peer).await
				}

				/// Flush what is queued, then close the connection (a
				/// `Reconnecting` client connects again when next used).
				pub fn close(&self) {
					$crate::typed::Sender::close(&self.peer)
				}

				/// Wait until the connection has ended; after [`close`](Self::close), until what was
				/// queued is written and the connection is shut down.
				pub async fn closed(&self) {
					$crate::typed::Sender::closed(&self.peer).await
				}

				$(
					$crate::__interface_call! {
						$request_kind [$($service_doc)*] $service_id $service [$request]
					}
				)*

				$(
					$crate::__interface_send! {
						$body_kind [$($stream_doc)*] $stream_id [<send_ $stream>] $stream [$body]
					}
				)*
			}

			/// A message from the remote, decoded, over a connection with bodies of type `B`.
			#[derive(Debug)]
			pub enum Incoming<B: $crate::typed::TypedBody = $crate::Bytes> {
				$(
					$(#[doc = $service_doc])*
					#[doc = ""]
					#[doc = concat!("Service id ", stringify!($service_id), ".")]
					[<$service:camel>]($crate::typed::ReceivedRequest<$service::Service, B>, $request),
				)*
				$(
					$(#[doc = $stream_doc])*
					#[doc = ""]
					#[doc = concat!("Stream message id ", stringify!($stream_id), ".")]
					[<$stream:camel>]($body),
				)*
				/// Not declared by this interface, or its body did not decode. A request is
				/// already answered with an error response.
				Rejected($crate::typed::Rejected<B>),
			}

			impl<B: $crate::typed::TypedBody> Incoming<B> {
				/// Decode an untyped message. A request that is not declared or does not decode is
				/// answered with an error response here.
				pub async fn from_message(message: $crate::ReceivedMessage<B>) -> Self {
					match message {
						#[allow(unused_mut)]
						$crate::ReceivedMessage::Request(request, mut body) => match request.service_id() {
							$(
								$service_id => match $crate::typed::ReceivedRequest::<$service::Service, B>::accept(request, &mut body).await {
									Ok((request, value)) => Self::[<$service:camel>](request, value),
									Err(error) => Self::Rejected($crate::typed::Rejected::undecodable_request($service_id, body, error)),
								},
							)*
							_ => Self::Rejected($crate::typed::Rejected::unknown_request(request, body, stringify!($name)).await),
						},
						#[allow(unused_mut)]
						$crate::ReceivedMessage::Stream(mut message) => match message.header.service_id {
							$(
								$stream_id => match $crate::typed::decode_stream::<$stream::Stream, B>(&mut message) {
									Ok(value) => Self::[<$stream:camel>](value),
									Err(error) => Self::Rejected($crate::typed::Rejected::stream(message, stringify!($name), Some(error))),
								},
							)*
							_ => Self::Rejected($crate::typed::Rejected::stream(message, stringify!($name), None)),
						},
					}
				}
			}

			/// Receives this interface's requests and stream messages from a peer, over a
			/// connection with bodies of type `B`.
			#[derive(Debug)]
			pub struct Server<B: $crate::typed::TypedBody = $crate::Bytes> {
				peer: $crate::PeerReadHandle<B>,
			}

			impl Server {
				/// A server receiving from `peer`, a connection with [`Bytes`]($crate::Bytes)
				/// bodies (TCP, Unix stream, in-memory); [`from_read_handle`](Self::from_read_handle)
				/// takes any body type (seqpacket: `UnixBody`).
				pub fn new(peer: $crate::PeerReadHandle) -> Self {
					Self { peer }
				}
			}

			impl<B: $crate::typed::TypedBody> Server<B> {
				/// A server receiving from `peer`, over any transport (on seqpacket, typed values
				/// carry descriptors: see `peerwire::typed::Fd`).
				pub fn from_read_handle(peer: $crate::PeerReadHandle<B>) -> Self {
					Self { peer }
				}

				/// Receive and decode the next message. Fails only when the connection has ended.
				pub async fn recv(&mut self) -> ::core::result::Result<Incoming<B>, $crate::Error> {
					let message = self.peer.recv_message().await?;
					Ok(Incoming::from_message(message).await)
				}
			}
		}
	}};
}

/// A `Client` method calling a service: with the request as argument, or none for a request
/// without a body.
#[doc(hidden)]
#[macro_export]
macro_rules! __interface_call {
	(body [$($doc:literal)*] $id:literal $service:ident [$request:ty]) => {
		$(#[doc = $doc])*
		#[doc = ""]
		#[doc = concat!("Service id ", stringify!($id), ". Returns once the request is queued.")]
		pub async fn $service(
			&self,
			request: &$request,
		) -> ::core::result::Result<$crate::typed::SentRequest<$service::Service, S::Body>, $crate::Error> {
			$crate::typed::call::<$service::Service, S>(&self.peer, request).await
		}
	};
	(none [$($doc:literal)*] $id:literal $service:ident [$request:ty]) => {
		$(#[doc = $doc])*
		#[doc = ""]
		#[doc = concat!("Service id ", stringify!($id), ", no request body. Returns once the request is queued.")]
		pub async fn $service(
			&self,
		) -> ::core::result::Result<$crate::typed::SentRequest<$service::Service, S::Body>, $crate::Error> {
			$crate::typed::call::<$service::Service, S>(&self.peer, &()).await
		}
	};
}

/// A `Client` method sending a stream message: with the body as argument, or none for a
/// message without a body.
#[doc(hidden)]
#[macro_export]
macro_rules! __interface_send {
	(body [$($doc:literal)*] $id:literal $method:ident $stream:ident [$body:ty]) => {
		$(#[doc = $doc])*
		#[doc = ""]
		#[doc = concat!("Stream message id ", stringify!($id), ". Returns once the message is queued: [`flush`](Self::flush) before exit.")]
		pub async fn $method(&self, body: &$body) -> ::core::result::Result<(), $crate::Error> {
			$crate::typed::send_stream::<$stream::Stream>(&self.peer, body).await
		}
	};
	(none [$($doc:literal)*] $id:literal $method:ident $stream:ident [$body:ty]) => {
		$(#[doc = $doc])*
		#[doc = ""]
		#[doc = concat!("Stream message id ", stringify!($id), ", no body. Returns once the message is queued: [`flush`](Self::flush) before exit.")]
		pub async fn $method(&self) -> ::core::result::Result<(), $crate::Error> {
			$crate::typed::send_stream::<$stream::Stream>(&self.peer, &()).await
		}
	};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __interface_updates {
	($enum:ident $side:literal $what:literal $service:ident []) => {
		#[doc = concat!("This service declares no ", $side, " updates.")]
		pub type $enum = $crate::typed::NoUpdates;
	};
	($enum:ident $side:literal $what:literal $service:ident [$($(#[doc = $doc:literal])* $id:literal $update:ident ( $body:ty )),+ $(,)?]) => {
		$crate::__interface_unique! { $what [$service] [$(($id $update))+] }

		$crate::typed::macros::paste! {
			#[doc = concat!("The ", $side, " updates of this service.")]
			#[derive(Debug, Clone, PartialEq)]
			pub enum $enum {
				$(
					$(#[doc = $doc])*
					#[doc = ""]
					#[doc = concat!("Update id ", stringify!($id), ".")]
					[<$update:camel>]($body),
				)+
			}

			impl $crate::typed::UpdateSet for $enum {
				const INFO: &'static [$crate::typed::UpdateInfo] = &[$(
					$crate::typed::UpdateInfo {
						id: $id,
						name: stringify!($update),
						doc: concat!($($doc, "\n",)*),
						body: stringify!($body),
					},
				)+];

				fn encode<F: $crate::typed::Format>(
					&self,
				) -> ::core::result::Result<(i32, $crate::__private::Bytes), $crate::__private::BoxError> {
					match self {
						$(Self::[<$update:camel>](body) => Ok(($id, $crate::typed::encode_body::<F, _>(body)?)),)+
					}
				}

				fn decode<F: $crate::typed::Format>(
					id: i32,
					body: &[u8],
				) -> ::core::result::Result<Self, $crate::typed::UpdateDecodeError> {
					match id {
						$($id => $crate::typed::decode_body::<F, _>(body).map(Self::[<$update:camel>]).map_err($crate::typed::UpdateDecodeError::Body),)+
						_ => Err($crate::typed::UpdateDecodeError::UnknownId),
					}
				}
			}
		}
	};
	($enum:ident $side:literal $what:literal $service:ident [$($other:tt)*]) => {
		::core::compile_error!(::core::concat!(
			"expected the ", $side, " updates of service `", ::core::stringify!($service),
			"` as `ID NAME(TYPE), ...`, one type per update (a struct or tuple for several values)"
		));
	};
}
