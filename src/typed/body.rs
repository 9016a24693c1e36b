//! The transport bodies a typed interface runs over, and file descriptors inside typed values.
//!
//! A typed value is encoded into the bytes of a body. On a seqpacket connection ([`UnixBody`])
//! the body also carries descriptors: a value that holds an [`Fd`] puts a duplicate of it beside
//! the bytes and writes its position among the message's descriptors in their place; decoding
//! takes the descriptor at that position. The format does not matter (a JSON body reads
//! `{"frame":0}`), and nothing changes on the wire for values without descriptors.
//!
//! [`UnixBody`]: crate::UnixBody

use std::cell::RefCell;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::Bytes;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::BoxError;
use crate::message::Body;

/// A body a typed interface can run over: [`Bytes`] (TCP, Unix stream, in-memory), and
/// [`UnixBody`](crate::UnixBody) (seqpacket), which also carries the [`Fd`]s of typed values.
///
/// Sealed: the typed layer relies on how each body holds descriptors.
pub trait TypedBody: Body + sealed::Sealed {
	/// Whether the body carries descriptors beside its bytes.
	#[doc(hidden)]
	const CARRIES_FDS: bool;

	/// A body of encoded bytes and the descriptors the value held (none unless
	/// [`CARRIES_FDS`](Self::CARRIES_FDS)).
	#[doc(hidden)]
	fn from_encoded(data: Bytes, fds: Vec<OwnedFd>) -> Self;

	/// Take the descriptors out of a received body, for decoding.
	#[doc(hidden)]
	fn take_fds(&mut self) -> Vec<OwnedFd>;
}

mod sealed {
	pub trait Sealed {}
	impl Sealed for bytes::Bytes {}
	#[cfg(feature = "unix-seqpacket")]
	impl Sealed for crate::UnixBody {}
}

impl TypedBody for Bytes {
	const CARRIES_FDS: bool = false;

	fn from_encoded(data: Bytes, _fds: Vec<OwnedFd>) -> Self {
		data
	}

	fn take_fds(&mut self) -> Vec<OwnedFd> {
		Vec::new()
	}
}

#[cfg(feature = "unix-seqpacket")]
impl TypedBody for crate::UnixBody {
	const CARRIES_FDS: bool = true;

	fn from_encoded(data: Bytes, fds: Vec<OwnedFd>) -> Self {
		Self { data, fds }
	}

	fn take_fds(&mut self) -> Vec<OwnedFd> {
		std::mem::take(&mut self.fds)
	}
}

thread_local! {
	/// While a value is encoded for a body that carries descriptors: the descriptors so far.
	static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
	/// While a body is decoded: its descriptors, each taken at most once.
	static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Encode with `encode` into a body of type `B`, collecting the descriptors of the [`Fd`]s the
/// value holds if `B` carries them (an `Fd` fails to encode otherwise).
pub(crate) fn encode_into<B: TypedBody>(encode: impl FnOnce() -> Result<Bytes, BoxError>) -> Result<B, BoxError> {
	if !B::CARRIES_FDS {
		return Ok(B::from_encoded(encode()?, Vec::new()));
	}
	// Encoding runs to its end on this thread (serde does not await), so a thread-local table
	// sees exactly this value's descriptors; an outer table, if any, is put back after.
	let outer = OUTGOING.with(|table| table.replace(Some(Vec::new())));
	let data = encode();
	let fds = OUTGOING.with(|table| table.replace(outer)).unwrap_or_default();
	Ok(B::from_encoded(data?, fds))
}

/// Decode `body` with `decode`, handing the body's descriptors to the [`Fd`]s of the value. The
/// descriptors no `Fd` took are closed.
pub(crate) fn decode_from<B: TypedBody, T, E>(
	body: &mut B,
	decode: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, E> {
	let fds = body.take_fds();
	if fds.is_empty() && !B::CARRIES_FDS {
		return decode(body.as_bytes());
	}
	let outer = INCOMING.with(|table| table.replace(Some(fds.into_iter().map(Some).collect())));
	let value = decode(body.as_bytes());
	// Closes the descriptors the value did not take.
	drop(INCOMING.with(|table| table.replace(outer)));
	value
}

/// A file descriptor inside a typed value, sent beside the body on a seqpacket connection.
///
/// Put it in a request, response or stream message type (`struct Frame { info: FrameInfo, buffer:
/// Fd }`): sending duplicates the descriptor into the message, so the value keeps its own (and
/// closes it when dropped); receiving hands over the descriptor that arrived. On the wire the
/// body holds its position among the message's descriptors. Encoding an `Fd` for a body that
/// cannot carry descriptors (a TCP or Unix stream connection) fails with
/// [`ErrorKind::Encode`](crate::ErrorKind::Encode); a received position with no descriptor
/// there (a hostile or untyped remote) fails to decode.
///
/// Not `Clone` or `PartialEq`, so not usable in update types, which need both.
#[derive(Debug)]
pub struct Fd(pub OwnedFd);

impl Fd {
	/// The descriptor.
	pub fn into_inner(self) -> OwnedFd {
		self.0
	}
}

impl From<OwnedFd> for Fd {
	fn from(fd: OwnedFd) -> Self {
		Self(fd)
	}
}

impl From<std::fs::File> for Fd {
	fn from(file: std::fs::File) -> Self {
		Self(file.into())
	}
}

impl From<Fd> for OwnedFd {
	fn from(fd: Fd) -> Self {
		fd.0
	}
}

impl AsFd for Fd {
	fn as_fd(&self) -> BorrowedFd<'_> {
		self.0.as_fd()
	}
}

impl Serialize for Fd {
	fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
		let position = OUTGOING.with(|table| {
			let mut table = table.borrow_mut();
			let Some(fds) = table.as_mut() else {
				return Err(S::Error::custom("a file descriptor can only be sent over a seqpacket connection"));
			};
			fds.push(self.0.try_clone().map_err(|error| S::Error::custom(format!("cannot duplicate: {error}")))?);
			u32::try_from(fds.len() - 1).map_err(|_| S::Error::custom("too many file descriptors"))
		})?;
		serializer.serialize_u32(position)
	}
}

impl<'de> Deserialize<'de> for Fd {
	fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
		let position = u32::deserialize(deserializer)?;
		INCOMING.with(|table| {
			let mut table = table.borrow_mut();
			let slot = table.as_mut().and_then(|fds| fds.get_mut(usize::try_from(position).ok()?));
			match slot.map(Option::take) {
				Some(Some(fd)) => Ok(Fd(fd)),
				Some(None) => Err(D::Error::custom(format!("file descriptor {position} is used twice"))),
				None => Err(D::Error::custom(format!("no file descriptor {position} came with the message"))),
			}
		})
	}
}

impl fmt::Display for Fd {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		use std::os::fd::AsRawFd;
		write!(f, "fd {}", self.0.as_raw_fd())
	}
}

#[cfg(all(test, feature = "json", feature = "unix-seqpacket"))]
mod tests {
	use super::*;
	use crate::UnixBody;
	use crate::typed::{Json, decode_body, encode_body};

	#[derive(Debug, Serialize, Deserialize)]
	struct Two {
		a: Fd,
		b: Fd,
	}

	fn devnull() -> Fd {
		Fd::from(std::fs::File::open("/dev/null").unwrap())
	}

	fn encode<B: TypedBody>(value: &Two) -> Result<B, BoxError> {
		encode_into(|| encode_body::<Json, _>(value))
	}

	fn decode(body: &mut UnixBody) -> Result<Two, BoxError> {
		decode_from(body, decode_body::<Json, Two>)
	}

	#[test]
	fn descriptors_go_beside_the_bytes_by_position() {
		let mut body: UnixBody = encode(&Two { a: devnull(), b: devnull() }).unwrap();
		assert_eq!(body.as_bytes(), br#"{"a":0,"b":1}"#);
		assert_eq!(body.fds.len(), 2);
		let two = decode(&mut body).unwrap();
		assert!(body.fds.is_empty());
		drop(two);
	}

	#[test]
	fn a_byte_body_refuses_descriptors() {
		let error = encode::<Bytes>(&Two { a: devnull(), b: devnull() }).unwrap_err();
		assert!(error.to_string().contains("seqpacket"), "{error}");
		// And a byte body never yields one.
		let mut bytes = Bytes::from_static(br#"{"a":0,"b":1}"#);
		assert!(decode_from(&mut bytes, decode_body::<Json, Two>).is_err());
	}

	#[test]
	fn a_descriptor_is_taken_once_and_only_if_it_came() {
		let mut twice = UnixBody::new(br#"{"a":0,"b":0}"#, [devnull().into_inner()]);
		let error = decode(&mut twice).unwrap_err();
		assert!(error.to_string().contains("used twice"), "{error}");
		let mut missing = UnixBody::new(br#"{"a":0,"b":1}"#, [devnull().into_inner()]);
		let error = decode(&mut missing).unwrap_err();
		assert!(error.to_string().contains("no file descriptor 1"), "{error}");
		// Nothing is left over for the next decode on this thread.
		let mut none = UnixBody::from(&br#"{"a":0,"b":1}"#[..]);
		assert!(decode(&mut none).is_err());
	}
}
