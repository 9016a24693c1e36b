//! What clients and the rendezvous server say to each other: service ids, result codes and the
//! request body, a small fixed binary layout.

#![allow(dead_code)]

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// Hand over the payload to a consumer; the response comes when one has taken it.
pub const PUT: i32 = 1;
/// Take a payload from a producer; the response carries it.
pub const GET: i32 = 2;
/// Delete a channel: its waiting requests fail with [`DELETED`]. Response: how many channels
/// were deleted (u32, 0 or 1).
pub const DELETE_CHANNEL: i32 = 3;
/// Delete every channel of a namespace (the name in the body is ignored). Response: how many.
pub const DELETE_NAMESPACE: i32 = 4;
/// How many puts and gets wait on a channel (a get whose connection is closing is not counted). Response: two u32.
pub const STATUS: i32 = 5;

/// Result code: the request waited its whole timeout.
pub const TIMED_OUT: i32 = -2;
/// Result code: the channel was deleted while the request waited.
pub const DELETED: i32 = -3;

/// A channel: a name in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
	pub namespace: String,
	pub name: String,
}

impl Channel {
	pub fn new(namespace: &str, name: &str) -> Self {
		Self { namespace: namespace.into(), name: name.into() }
	}
}

impl std::fmt::Display for Channel {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		write!(f, "{}/{}", self.namespace, self.name)
	}
}

/// A decoded request body.
#[derive(Debug, Clone)]
pub struct Request {
	pub channel: Channel,
	/// How long the request may wait; `None` for as long as it takes.
	pub timeout: Option<Duration>,
	pub payload: Bytes,
}

/// The body of every request, little endian:
///
/// | size | field |
/// |---|---|
/// | 2 | namespace length N |
/// | N | namespace, UTF-8 |
/// | 2 | name length M |
/// | M | name, UTF-8 |
/// | 4 | timeout in milliseconds, 0 for none |
/// | rest | payload (puts only) |
pub fn encode(channel: &Channel, timeout: Option<Duration>, payload: &[u8]) -> Bytes {
	let mut body = BytesMut::with_capacity(8 + channel.namespace.len() + channel.name.len() + payload.len());
	for text in [&channel.namespace, &channel.name] {
		let length = u16::try_from(text.len()).expect("names are shorter than 64 KiB");
		body.put_u16_le(length);
		body.put_slice(text.as_bytes());
	}
	// A timeout of 0 would mean none: round anything shorter than a millisecond up to one.
	let millis = timeout.map_or(0, |timeout| u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1));
	body.put_u32_le(millis);
	body.put_slice(payload);
	body.freeze()
}

pub fn decode(mut body: Bytes) -> Result<Request, String> {
	let mut text = || -> Result<String, String> {
		let length = take(&mut body, 2).map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]))?;
		let bytes = take(&mut body, usize::from(length))?;
		String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
	};
	let channel = Channel { namespace: text()?, name: text()? };
	let millis = take(&mut body, 4).map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))?;
	let timeout = (millis > 0).then(|| Duration::from_millis(u64::from(millis)));
	Ok(Request { channel, timeout, payload: body })
}

fn take(body: &mut Bytes, count: usize) -> Result<Bytes, String> {
	if body.len() < count {
		return Err("request body too short".into());
	}
	Ok(body.split_to(count))
}

/// Two u32 values, little endian.
pub fn encode_pair(a: u32, b: u32) -> Bytes {
	let mut body = BytesMut::with_capacity(8);
	body.put_u32_le(a);
	body.put_u32_le(b);
	body.freeze()
}

pub fn decode_u32(body: &[u8], at: usize) -> Option<u32> {
	Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
}
