//! The `interface!` macro and its helpers.
//!
//! `interface!` parses the declaration one item at a time (a "muncher": services and streams may
//! come in any order, each with its doc comment), then hands the collected lists to
//! `__interface_emit!`, which writes the module. Each rule's input is plain data in brackets, so
//! every step can be read on its own.

#[doc(hidden)]
pub use pastey::paste;

/// Declare a typed interface: its services (with their updates) and stream messages, with the
/// ids used on the wire and the body format.
///
/// ```text
/// interface! {
///     /// Docs of the interface.
///     pub mod NAME (format = FORMAT) {
///         /// Docs of a service.
///         service ID NAME(REQUEST) -> RESPONSE;
///         service ID NAME(REQUEST) -> RESPONSE {
///             requester_updates { /// docs
///                                 ID NAME(BODY), ... }
///             responder_updates { ID NAME(BODY), ... }
///         }
///         /// Docs of a stream message.
///         stream ID NAME(BODY);
///     }
/// }
/// ```
///
/// Names are `snake_case`; the generated enum variants are their `CamelCase` forms. Body types
/// are resolved from inside the generated module, which imports everything of the module the
/// macro is called in (`use super::*`): use plain names from there or `crate::` paths.
///
/// The module `NAME` contains:
/// - `INTERFACE`: an [`InterfaceInfo`](crate::typed::InterfaceInfo) listing everything declared,
///   with ids and docs;
/// - a module per service, with the marker type `Service` (implementing
///   [`Service`](crate::typed::Service)) and the enums `RequesterUpdate` and `ResponderUpdate`
///   (or [`NoUpdates`](crate::typed::NoUpdates));
/// - a module per stream message, with the marker type `Stream`;
/// - `Client`: one async method per service returning a typed
///   [`SentRequest`](crate::typed::SentRequest), and `send_NAME` per stream message;
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
			[$($doc)*] [$vis] [$name] [$format]
			services []
			streams []
			items [$($items)*]
		}
	};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __interface_parse {
	// A service with updates.
	(
		$head:tt $vis:tt $name:tt $format:tt services [$($services:tt)*] streams $streams:tt
		items [
			$(#[doc = $doc:literal])*
			service $id:literal $service:ident ( $request:ty ) -> $response:ty {
				$(requester_updates { $($requester:tt)* })?
				$(responder_updates { $($responder:tt)* })?
			}
			$($rest:tt)*
		]
	) => {
		$crate::__interface_parse! {
			$head $vis $name $format
			services [$($services)* {
				[$($doc)*] $id $service [$request] [$response] [$($($requester)*)?] [$($($responder)*)?]
			}]
			streams $streams
			items [$($rest)*]
		}
	};
	// A service without updates.
	(
		$head:tt $vis:tt $name:tt $format:tt services [$($services:tt)*] streams $streams:tt
		items [
			$(#[doc = $doc:literal])*
			service $id:literal $service:ident ( $request:ty ) -> $response:ty ;
			$($rest:tt)*
		]
	) => {
		$crate::__interface_parse! {
			$head $vis $name $format
			services [$($services)* { [$($doc)*] $id $service [$request] [$response] [] [] }]
			streams $streams
			items [$($rest)*]
		}
	};
	// A stream message.
	(
		$head:tt $vis:tt $name:tt $format:tt services $services:tt streams [$($streams:tt)*]
		items [
			$(#[doc = $doc:literal])*
			stream $id:literal $stream:ident ( $body:ty ) ;
			$($rest:tt)*
		]
	) => {
		$crate::__interface_parse! {
			$head $vis $name $format
			services $services
			streams [$($streams)* { [$($doc)*] $id $stream [$body] }]
			items [$($rest)*]
		}
	};
	// Everything parsed.
	($head:tt $vis:tt $name:tt $format:tt services $services:tt streams $streams:tt items []) => {
		$crate::__interface_emit! { $head $vis $name $format $services $streams }
	};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __interface_emit {
	(
		[$($doc:literal)*] [$vis:vis] [$name:ident] [$format:ty]
		[$({
			[$($service_doc:literal)*] $service_id:literal $service:ident [$request:ty] [$response:ty]
			[$($requester:tt)*] [$($responder:tt)*]
		})*]
		[$({ [$($stream_doc:literal)*] $stream_id:literal $stream:ident [$body:ty] })*]
	) => { $crate::typed::macros::paste! {
		$(#[doc = $doc])*
		$vis mod $name {
			#![allow(unused_imports)]
			use super::*;

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
					}

					$crate::__interface_updates! { RequesterUpdate "requester" [$($requester)*] }
					$crate::__interface_updates! { ResponderUpdate "responder" [$($responder)*] }
				}
			)*

			$(
				$(#[doc = $stream_doc])*
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

			/// Sends this interface's requests and stream messages over a peer.
			#[derive(Debug, Clone)]
			pub struct Client {
				peer: $crate::PeerWriteHandle,
			}

			impl Client {
				/// A client sending through `peer`.
				pub fn new(peer: $crate::PeerWriteHandle) -> Self {
					Self { peer }
				}

				/// The untyped handle.
				pub fn peer(&self) -> &$crate::PeerWriteHandle {
					&self.peer
				}

				$(
					$(#[doc = $service_doc])*
					pub async fn $service(
						&self,
						request: &$request,
					) -> ::core::result::Result<$crate::typed::SentRequest<$service::Service>, $crate::Error> {
						$crate::typed::call::<$service::Service>(&self.peer, request).await
					}
				)*

				$(
					$(#[doc = $stream_doc])*
					pub async fn [<send_ $stream>](&self, body: &$body) -> ::core::result::Result<(), $crate::Error> {
						$crate::typed::send_stream::<$stream::Stream>(&self.peer, body).await
					}
				)*
			}

			/// A message from the remote, decoded.
			#[derive(Debug)]
			pub enum Incoming {
				$(
					$(#[doc = $service_doc])*
					[<$service:camel>]($crate::typed::ReceivedRequest<$service::Service>, $request),
				)*
				$(
					$(#[doc = $stream_doc])*
					[<$stream:camel>]($body),
				)*
				/// Not declared by this interface, or its body did not decode. A request is
				/// already answered with an error response.
				Rejected($crate::typed::Rejected),
			}

			impl Incoming {
				/// Decode an untyped message. A request that is not declared or does not decode is
				/// answered with an error response here.
				pub async fn from_message(message: $crate::ReceivedMessage) -> Self {
					match message {
						$crate::ReceivedMessage::Request(request, body) => match request.service_id() {
							$(
								$service_id => match $crate::typed::ReceivedRequest::<$service::Service>::accept(request, &body).await {
									Ok((request, value)) => Self::[<$service:camel>](request, value),
									Err(error) => Self::Rejected($crate::typed::Rejected::undecodable_request($service_id, body, error)),
								},
							)*
							_ => Self::Rejected($crate::typed::Rejected::unknown_request(request, body, stringify!($name)).await),
						},
						$crate::ReceivedMessage::Stream(message) => match message.header.service_id {
							$(
								$stream_id => match $crate::typed::decode_stream::<$stream::Stream>(&message) {
									Ok(value) => Self::[<$stream:camel>](value),
									Err(error) => Self::Rejected($crate::typed::Rejected::stream(message, stringify!($name), Some(error))),
								},
							)*
							_ => Self::Rejected($crate::typed::Rejected::stream(message, stringify!($name), None)),
						},
					}
				}
			}

			/// Receives this interface's requests and stream messages from a peer.
			#[derive(Debug)]
			pub struct Server {
				peer: $crate::PeerReadHandle,
			}

			impl Server {
				/// A server receiving from `peer`.
				pub fn new(peer: $crate::PeerReadHandle) -> Self {
					Self { peer }
				}

				/// Receive and decode the next message. Fails only when the connection has ended.
				pub async fn recv(&mut self) -> ::core::result::Result<Incoming, $crate::Error> {
					let message = self.peer.recv_message().await?;
					Ok(Incoming::from_message(message).await)
				}
			}
		}
	}};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __interface_updates {
	($enum:ident $side:literal []) => {
		#[doc = concat!("This service declares no ", $side, " updates.")]
		pub type $enum = $crate::typed::NoUpdates;
	};
	($enum:ident $side:literal [$($(#[doc = $doc:literal])* $id:literal $update:ident ( $body:ty )),+ $(,)?]) => {
		$crate::typed::macros::paste! {
			#[doc = concat!("The ", $side, " updates of this service.")]
			#[derive(Debug)]
			pub enum $enum {
				$(
					$(#[doc = $doc])*
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
						$(Self::[<$update:camel>](body) => Ok(($id, F::encode(body)?)),)+
					}
				}

				fn decode<F: $crate::typed::Format>(
					id: i32,
					body: &[u8],
				) -> ::core::result::Result<Self, $crate::typed::UpdateDecodeError> {
					match id {
						$($id => F::decode(body).map(Self::[<$update:camel>]).map_err($crate::typed::UpdateDecodeError::Body),)+
						_ => Err($crate::typed::UpdateDecodeError::UnknownId),
					}
				}
			}
		}
	};
}
