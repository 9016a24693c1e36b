//! The pure frame codec: bytes to messages and back, with no socket and no runtime.
//!
//! On byte streams (TCP, Unix stream) every message is preceded by a `u32` frame length that
//! counts the 12-byte header and the body. [`StreamCodec::decode`] is a tokio-util style
//! decoder: it takes complete frames off the front of a buffer, returns `Ok(None)` when it needs
//! more bytes, and checks every length against the configured limit before anything is reserved.
//! Bodies are split off the read buffer as [`Bytes`], not copied.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, ProtocolViolation};
use crate::message::{HEADER_LEN, Message, MessageHeader, MessageType};

/// The size of the frame length prefix on byte streams.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The byte order of the header fields (and of the frame length on byte streams).
///
/// The protocol's byte order is little endian; both sides must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Endian {
	/// Least significant byte first (the protocol's default).
	#[default]
	Little,
	/// Most significant byte first.
	Big,
	/// The byte order of this machine.
	Native,
}

impl Endian {
	/// Read a `u32` in this byte order.
	pub fn read_u32(self, bytes: [u8; 4]) -> u32 {
		match self {
			Endian::Little => u32::from_le_bytes(bytes),
			Endian::Big => u32::from_be_bytes(bytes),
			Endian::Native => u32::from_ne_bytes(bytes),
		}
	}

	/// Write a `u32` in this byte order.
	pub fn write_u32(self, value: u32) -> [u8; 4] {
		match self {
			Endian::Little => value.to_le_bytes(),
			Endian::Big => value.to_be_bytes(),
			Endian::Native => value.to_ne_bytes(),
		}
	}
}

/// Read four bytes at `offset`; the caller has checked the length.
fn field(bytes: &[u8], offset: usize) -> [u8; 4] {
	let mut out = [0; 4];
	out.copy_from_slice(&bytes[offset..offset + 4]);
	out
}

/// Decode a 12-byte header. Fails only on an unknown message type.
pub fn decode_header(bytes: &[u8; HEADER_LEN], endian: Endian) -> Result<MessageHeader, Error> {
	let value = endian.read_u32(field(bytes, 0));
	let message_type = MessageType::from_u32(value).ok_or(ProtocolViolation::UnknownMessageType { value })?;
	Ok(MessageHeader {
		message_type,
		request_id: endian.read_u32(field(bytes, 4)),
		service_id: endian.read_u32(field(bytes, 8)) as i32,
	})
}

/// Encode a 12-byte header.
#[inline]
pub fn encode_header(header: &MessageHeader, endian: Endian) -> [u8; HEADER_LEN] {
	let mut out = [0; HEADER_LEN];
	out[0..4].copy_from_slice(&endian.write_u32(header.message_type.to_u32()));
	out[4..8].copy_from_slice(&endian.write_u32(header.request_id));
	out[8..12].copy_from_slice(&endian.write_u32(header.service_id as u32));
	out
}

/// Decode one datagram (seqpacket framing: header and body, no length prefix).
///
/// The body is a slice of `datagram`, not a copy. `max_body_len` is checked here too, so a
/// receive buffer larger than the limit cannot smuggle in an oversized body.
pub fn decode_datagram(mut datagram: Bytes, endian: Endian, max_body_len: usize) -> Result<Message<Bytes>, Error> {
	let Some(header) = datagram.first_chunk::<HEADER_LEN>() else {
		return Err(ProtocolViolation::DatagramTooShort { length: datagram.len() }.into());
	};
	let header = decode_header(header, endian)?;
	let body_len = datagram.len() - HEADER_LEN;
	if body_len > max_body_len {
		return Err(Error::body_too_large(body_len, max_body_len));
	}
	datagram.advance(HEADER_LEN);
	Ok(Message { header, body: datagram })
}

/// Encoder and decoder of length-prefixed frames for byte-stream transports.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use peerwire::Message;
/// use peerwire::codec::{Endian, StreamCodec};
///
/// let codec = StreamCodec::new(Endian::Little, 1024, 1024);
/// let mut buffer = BytesMut::new();
/// codec.encode(&Message::<Bytes>::request(21, 0, "Hello World"), &mut buffer).unwrap();
/// assert_eq!(buffer.len(), 27);
///
/// let message = codec.decode(&mut buffer).unwrap().unwrap();
/// assert_eq!(message.header.request_id, 21);
/// assert_eq!(&message.body[..], b"Hello World");
/// assert!(codec.decode(&mut buffer).unwrap().is_none()); // needs more bytes
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCodec {
	endian: Endian,
	max_body_len_read: usize,
	max_body_len_write: usize,
}

impl StreamCodec {
	/// A codec with the given byte order and body limits for reading and writing.
	pub fn new(endian: Endian, max_body_len_read: usize, max_body_len_write: usize) -> Self {
		Self { endian, max_body_len_read, max_body_len_write }
	}

	/// The byte order of this codec.
	pub fn endian(&self) -> Endian {
		self.endian
	}

	/// The largest body this codec encodes.
	pub fn max_body_len_write(&self) -> usize {
		self.max_body_len_write
	}

	/// Check the frame at the front of `buffer` as far as it has arrived.
	///
	/// Returns the total length of the frame (prefix included) once its length field is there.
	/// Fails as soon as the bytes present show the frame to be malformed, so a hostile length or
	/// type is refused before the body is waited for, let alone allocated.
	pub fn check_frame(&self, buffer: &[u8]) -> Result<Option<usize>, Error> {
		let Some(length) = buffer.first_chunk::<4>() else {
			return Ok(None);
		};
		let length = self.endian.read_u32(*length);
		let Some(body_len) = (length as usize).checked_sub(HEADER_LEN) else {
			return Err(ProtocolViolation::FrameTooShort { length }.into());
		};
		if body_len > self.max_body_len_read {
			return Err(Error::body_too_large(body_len, self.max_body_len_read));
		}
		if buffer.len() >= LENGTH_PREFIX_LEN + 4 {
			let value = self.endian.read_u32(field(buffer, LENGTH_PREFIX_LEN));
			if MessageType::from_u32(value).is_none() {
				return Err(ProtocolViolation::UnknownMessageType { value }.into());
			}
		}
		// Overflows only where usize is 32 bits and the limit is near usize::MAX.
		let frame_len = (LENGTH_PREFIX_LEN + HEADER_LEN)
			.checked_add(body_len)
			.ok_or_else(|| Error::body_too_large(body_len, usize::MAX - LENGTH_PREFIX_LEN - HEADER_LEN))?;
		Ok(Some(frame_len))
	}

	/// Take one complete frame off the front of `buffer`.
	///
	/// `Ok(None)` means the buffer holds no complete frame yet; nothing is consumed then.
	/// After an error the buffer's contents are unspecified and the stream must be abandoned.
	pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Message<Bytes>>, Error> {
		let Some(frame_len) = self.check_frame(buffer)? else {
			return Ok(None);
		};
		if buffer.len() < frame_len {
			return Ok(None);
		}
		let header =
			buffer[LENGTH_PREFIX_LEN..].first_chunk::<HEADER_LEN>().expect("check_frame counted a whole header");
		let header = decode_header(header, self.endian)?;
		// One step over prefix and header, one split for the body: each step on a shared
		// buffer is bookkeeping per message.
		buffer.advance(LENGTH_PREFIX_LEN + HEADER_LEN);
		let body = buffer.split_to(frame_len - LENGTH_PREFIX_LEN - HEADER_LEN).freeze();
		Ok(Some(Message { header, body }))
	}

	/// The 16 bytes in front of a body of `body_len` bytes: frame length and header.
	///
	/// Fails if the body exceeds the write limit.
	#[inline]
	pub fn encode_prefix(&self, header: &MessageHeader, body_len: usize) -> Result<[u8; 16], Error> {
		// The limit is configurable up to usize::MAX, the wire field is a u32.
		let length = match u32::try_from(body_len + HEADER_LEN) {
			Ok(length) if body_len <= self.max_body_len_write => length,
			_ => return Err(self.too_large(body_len)),
		};
		let mut out = [0; 16];
		out[..4].copy_from_slice(&self.endian.write_u32(length));
		out[4..].copy_from_slice(&encode_header(header, self.endian));
		Ok(out)
	}

	/// The error for a body of `body_len` bytes that [`encode_prefix`](Self::encode_prefix)
	/// refuses; out of line, so that the encoding inlines small.
	#[cold]
	#[inline(never)]
	fn too_large(&self, body_len: usize) -> Error {
		Error::body_too_large(body_len, self.max_body_len_write.min(u32::MAX as usize - HEADER_LEN))
	}

	/// Append one whole frame to `dst`.
	pub fn encode(&self, message: &Message<Bytes>, dst: &mut BytesMut) -> Result<(), Error> {
		let prefix = self.encode_prefix(&message.header, message.body.len())?;
		dst.reserve(prefix.len() + message.body.len());
		dst.extend_from_slice(&prefix);
		dst.extend_from_slice(&message.body);
		Ok(())
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::error::ErrorKind;

	const LIMIT: usize = 1024;

	fn codec(endian: Endian) -> StreamCodec {
		StreamCodec::new(endian, LIMIT, LIMIT)
	}

	fn all_kinds() -> Vec<Message<Bytes>> {
		vec![
			Message::request(1, 2, "request"),
			Message::response(1, 0, "response"),
			Message::error_response(1, "error"),
			Message::requester_update(3, 4, "requester update"),
			Message::responder_update(5, -6, "responder update"),
			Message::stream(0, 7, "stream"),
			Message::stream(u32::MAX, i32::MIN, Bytes::new()),
		]
	}

	#[test]
	fn worked_example_request_matches_protocol_md() {
		let mut buffer = BytesMut::new();
		codec(Endian::Little).encode(&Message::request(21, 0, "Hello World"), &mut buffer).unwrap();
		let expected: &[u8] = &[
			0x17, 0, 0, 0, // length 23
			0, 0, 0, 0, // request
			0x15, 0, 0, 0, // request id 21
			0, 0, 0, 0, // service id 0
			b'H', b'e', b'l', b'l', b'o', b' ', b'W', b'o', b'r', b'l', b'd',
		];
		assert_eq!(&buffer[..], expected);
	}

	#[test]
	fn worked_example_error_response_matches_protocol_md() {
		let mut buffer = BytesMut::new();
		let message = Message::error_response(21, "failed to process request");
		codec(Endian::Little).encode(&message, &mut buffer).unwrap();
		let mut expected = vec![0x25, 0, 0, 0, 1, 0, 0, 0, 0x15, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
		expected.extend_from_slice(b"failed to process request");
		assert_eq!(&buffer[..], &expected[..]);

		let decoded = codec(Endian::Little).decode(&mut buffer).unwrap().unwrap();
		assert_eq!(decoded.error_text().as_deref(), Some("failed to process request"));
	}

	#[test]
	fn big_endian_puts_the_most_significant_byte_first() {
		let mut buffer = BytesMut::new();
		codec(Endian::Big).encode(&Message::request(21, -1, "x"), &mut buffer).unwrap();
		assert_eq!(&buffer[..16], &[0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 21, 0xff, 0xff, 0xff, 0xff]);
	}

	#[test]
	fn every_kind_round_trips_in_every_byte_order() {
		for endian in [Endian::Little, Endian::Big, Endian::Native] {
			let codec = codec(endian);
			for message in all_kinds() {
				let mut buffer = BytesMut::new();
				codec.encode(&message, &mut buffer).unwrap();
				assert_eq!(codec.decode(&mut buffer).unwrap(), Some(message));
				assert!(buffer.is_empty());
			}
		}
	}

	#[test]
	fn byte_orders_disagree_on_the_wire() {
		let mut little = BytesMut::new();
		let mut big = BytesMut::new();
		codec(Endian::Little).encode(&Message::request(1, 1, "x"), &mut little).unwrap();
		codec(Endian::Big).encode(&Message::request(1, 1, "x"), &mut big).unwrap();
		assert_ne!(little, big);
	}

	#[test]
	fn a_frame_arriving_a_byte_at_a_time_decodes_once_complete() {
		let codec = codec(Endian::Little);
		let mut wire = BytesMut::new();
		for message in all_kinds() {
			codec.encode(&message, &mut wire).unwrap();
		}
		let mut buffer = BytesMut::new();
		let mut decoded = Vec::new();
		for byte in wire.iter() {
			buffer.extend_from_slice(&[*byte]);
			while let Some(message) = codec.decode(&mut buffer).unwrap() {
				decoded.push(message);
			}
		}
		assert_eq!(decoded, all_kinds());
		assert!(buffer.is_empty());
	}

	#[test]
	fn many_frames_in_one_buffer_decode_in_order_without_copying() {
		let codec = codec(Endian::Little);
		let mut buffer = BytesMut::new();
		for i in 0..100u32 {
			codec.encode(&Message::stream(i, 1, format!("body {i}")), &mut buffer).unwrap();
		}
		let start = buffer.as_ptr() as usize;
		let end = start + buffer.len();
		for i in 0..100u32 {
			let message = codec.decode(&mut buffer).unwrap().unwrap();
			assert_eq!(message.header.request_id, i);
			assert_eq!(message.body, format!("body {i}"));
			// The body points into the read buffer: sliced, not copied.
			let body = message.body.as_ptr() as usize;
			assert!(body >= start && body < end);
		}
		assert_eq!(codec.decode(&mut buffer).unwrap(), None);
	}

	#[test]
	fn a_length_below_the_header_is_refused() {
		for length in [0u32, 1, 11] {
			let mut buffer = BytesMut::from(&length.to_le_bytes()[..]);
			let error = codec(Endian::Little).decode(&mut buffer).unwrap_err();
			assert_eq!(error.kind(), ErrorKind::Protocol);
			assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::FrameTooShort { length }));
		}
		// Exactly a header is a valid, empty-bodied frame.
		let mut buffer = BytesMut::from(&[12, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
		assert_eq!(codec(Endian::Little).decode(&mut buffer).unwrap(), Some(Message::stream(0, 0, Bytes::new())));
	}

	#[test]
	fn a_body_over_the_limit_is_refused_from_the_length_alone() {
		// Only the 4 length bytes are present: refused before the body is awaited or reserved.
		let length = (HEADER_LEN + LIMIT + 1) as u32;
		let mut buffer = BytesMut::from(&length.to_le_bytes()[..]);
		let error = codec(Endian::Little).decode(&mut buffer).unwrap_err();
		assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
		assert!(buffer.capacity() < 64);

		let mut buffer = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
		assert_eq!(codec(Endian::Little).decode(&mut buffer).unwrap_err().kind(), ErrorKind::BodyTooLarge);

		// Exactly at the limit is fine.
		let mut buffer = BytesMut::new();
		let body = Bytes::from(vec![7; LIMIT]);
		codec(Endian::Little).encode(&Message::stream(0, 0, body.clone()), &mut buffer).unwrap();
		assert_eq!(codec(Endian::Little).decode(&mut buffer).unwrap().unwrap().body, body);
	}

	#[test]
	fn an_unknown_message_type_is_refused_before_the_body_arrives() {
		for value in [5u32, 0xffff_ffff] {
			let mut buffer = BytesMut::new();
			buffer.extend_from_slice(&100u32.to_le_bytes());
			buffer.extend_from_slice(&value.to_le_bytes());
			let error = codec(Endian::Little).decode(&mut buffer).unwrap_err();
			assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value }));
		}
	}

	#[test]
	fn writing_over_the_limit_is_refused() {
		let codec = StreamCodec::new(Endian::Little, LIMIT, 4);
		let mut buffer = BytesMut::new();
		let error = codec.encode(&Message::stream(0, 0, "12345"), &mut buffer).unwrap_err();
		assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
		assert!(buffer.is_empty());
		codec.encode(&Message::stream(0, 0, "1234"), &mut buffer).unwrap();
	}

	#[test]
	fn datagrams_decode_and_refuse_short_or_oversized_input() {
		let mut datagram = encode_header(&MessageHeader::new(MessageType::Response, 9, -1), Endian::Native).to_vec();
		datagram.extend_from_slice(b"bad");
		let message = decode_datagram(Bytes::from(datagram.clone()), Endian::Native, 16).unwrap();
		assert_eq!(message, Message::error_response(9, "bad"));

		let error = decode_datagram(Bytes::from(datagram.clone()), Endian::Native, 2).unwrap_err();
		assert_eq!(error.kind(), ErrorKind::BodyTooLarge);

		let error = decode_datagram(Bytes::from(datagram[..11].to_vec()), Endian::Native, 16).unwrap_err();
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTooShort { length: 11 }));

		datagram[0..4].copy_from_slice(&Endian::Native.write_u32(9));
		let error = decode_datagram(Bytes::from(datagram), Endian::Native, 16).unwrap_err();
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value: 9 }));
	}
}
