//! Property tests of the pure codec: every message survives a round trip in every byte order,
//! and no byte string makes the decoder panic, hand out a body over the limit, or allocate.

use bytes::{Bytes, BytesMut};
use peerwire::codec::{Endian, LENGTH_PREFIX_LEN, StreamCodec, decode_datagram, decode_header, encode_header};
use peerwire::message::HEADER_LEN;
use peerwire::{ErrorKind, Message, MessageHeader, MessageType, ProtocolViolation};
use proptest::prelude::*;

fn message_type() -> impl Strategy<Value = MessageType> {
	prop_oneof![
		Just(MessageType::Request),
		Just(MessageType::Response),
		Just(MessageType::RequesterUpdate),
		Just(MessageType::ResponderUpdate),
		Just(MessageType::Stream),
	]
}

fn endian() -> impl Strategy<Value = Endian> {
	prop_oneof![Just(Endian::Little), Just(Endian::Big), Just(Endian::Native)]
}

fn message() -> impl Strategy<Value = Message<Bytes>> {
	(message_type(), any::<u32>(), any::<i32>(), proptest::collection::vec(any::<u8>(), 0..600)).prop_map(
		|(message_type, request_id, service_id, body)| {
			Message::new(MessageHeader::new(message_type, request_id, service_id), Bytes::from(body))
		},
	)
}

/// What `StreamCodec::decode` must do with the frame at the front of `wire`, worked out from
/// PROTOCOL.md independently of the codec: `Ok(Some(frame length))`, `Ok(None)` for "needs more
/// bytes", or the error it must report.
fn expected_front(
	wire: &[u8],
	endian: Endian,
	limit: usize,
) -> Result<Option<usize>, (ErrorKind, Option<ProtocolViolation>)> {
	let read = |at: usize| endian.read_u32(wire[at..at + 4].try_into().unwrap());
	if wire.len() < 4 {
		return Ok(None);
	}
	let length = read(0);
	if length < 12 {
		return Err((ErrorKind::Protocol, Some(ProtocolViolation::FrameTooShort { length })));
	}
	let body_len = length as usize - 12;
	if body_len > limit {
		return Err((ErrorKind::BodyTooLarge, None));
	}
	if wire.len() >= 8 && read(4) > 4 {
		return Err((ErrorKind::Protocol, Some(ProtocolViolation::UnknownMessageType { value: read(4) })));
	}
	let frame_len = 16 + body_len;
	Ok((wire.len() >= frame_len).then_some(frame_len))
}

proptest! {
	#![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

	#[test]
	fn every_message_round_trips_in_every_byte_order(message in message(), endian in endian()) {
		let codec = StreamCodec::new(endian, 1024, 1024);
		let mut buffer = BytesMut::new();
		codec.encode(&message, &mut buffer).unwrap();
		prop_assert_eq!(buffer.len(), LENGTH_PREFIX_LEN + HEADER_LEN + message.body.len());
		let length = endian.read_u32(buffer[..4].try_into().unwrap());
		prop_assert_eq!(length as usize, HEADER_LEN + message.body.len());
		prop_assert_eq!(codec.decode(&mut buffer).unwrap(), Some(message));
		prop_assert!(buffer.is_empty());
	}

	#[test]
	fn headers_and_datagrams_round_trip(message in message(), endian in endian()) {
		let header = encode_header(&message.header, endian);
		prop_assert_eq!(decode_header(&header, endian).unwrap(), message.header);
		let mut datagram = header.to_vec();
		datagram.extend_from_slice(&message.body);
		prop_assert_eq!(decode_datagram(Bytes::from(datagram), endian, 1024).unwrap(), message);
	}

	/// Many frames in one buffer, arriving in arbitrary pieces, come out whole and in order.
	#[test]
	fn a_sequence_in_arbitrary_pieces_decodes_in_order(
		messages in proptest::collection::vec(message(), 0..12),
		endian in endian(),
		pieces in proptest::collection::vec(1usize..64, 1..16),
	) {
		let codec = StreamCodec::new(endian, 1024, 1024);
		let mut wire = BytesMut::new();
		for message in &messages {
			codec.encode(message, &mut wire).unwrap();
		}
		let mut buffer = BytesMut::new();
		let mut decoded = Vec::new();
		let mut position = 0;
		for step in pieces.iter().cycle() {
			if position == wire.len() {
				break;
			}
			let end = (position + step).min(wire.len());
			buffer.extend_from_slice(&wire[position..end]);
			position = end;
			while let Some(message) = codec.decode(&mut buffer).unwrap() {
				decoded.push(message);
			}
		}
		prop_assert_eq!(decoded, messages);
		prop_assert!(buffer.is_empty());
	}

	/// Any bytes at all: decode agrees with the model of PROTOCOL.md, never panics, never hands out
	/// a body over the limit, and never allocates (what it returns is split off the buffer, and
	/// what is left is the tail of the same allocation).
	#[test]
	fn decoding_any_bytes_is_safe_and_allocation_free(
		wire in proptest::collection::vec(any::<u8>(), 0..256),
		endian in endian(),
		limit in prop_oneof![Just(0usize), Just(1), Just(16), Just(64), Just(1024)],
	) {
		let codec = StreamCodec::new(endian, limit, limit);
		let mut buffer = BytesMut::from(&wire[..]);
		let start = buffer.as_ptr() as usize;
		let end = start + buffer.len();
		let mut position = 0;
		loop {
			let capacity = buffer.capacity();
			let expected = expected_front(&wire[position..], endian, limit);
			let checked = codec.check_frame(&buffer);
			match &checked {
				Ok(Some(frame_len)) => prop_assert!(*frame_len <= LENGTH_PREFIX_LEN + HEADER_LEN + limit),
				Ok(None) => prop_assert!(buffer.len() < 4),
				Err(_) => {},
			}
			match codec.decode(&mut buffer) {
				Ok(Some(message)) => {
					let frame_len = expected.expect("the model says this frame is malformed").expect("the model says incomplete");
					prop_assert!(message.body.len() <= limit);
					prop_assert_eq!(LENGTH_PREFIX_LEN + HEADER_LEN + message.body.len(), frame_len);
					prop_assert_eq!(&message.body[..], &wire[position + 16..position + frame_len]);
					if !message.body.is_empty() {
						let body = message.body.as_ptr() as usize;
						prop_assert!(body >= start && body + message.body.len() <= end, "the body was copied");
					}
					position += frame_len;
					prop_assert_eq!(buffer.len(), wire.len() - position);
				},
				Ok(None) => {
					prop_assert_eq!(expected, Ok(None));
					prop_assert_eq!(buffer.len(), wire.len() - position, "`Ok(None)` consumed bytes");
					prop_assert!(buffer.capacity() <= capacity);
					break;
				},
				Err(error) => {
					let (kind, violation) = expected.expect_err("the model accepts this frame");
					prop_assert_eq!(error.kind(), kind);
					prop_assert_eq!(error.protocol_violation().cloned(), violation);
					prop_assert!(buffer.capacity() <= capacity);
					break;
				},
			}
			prop_assert!(buffer.capacity() <= capacity, "decode grew the buffer");
		}
	}

	/// A frame announcing more than the limit is refused from its length alone, whatever follows,
	/// and nothing is reserved for it.
	#[test]
	fn an_oversized_length_is_refused_without_reserving(
		limit in 0usize..4096,
		excess in 1u32..u32::MAX / 2,
		tail in proptest::collection::vec(any::<u8>(), 0..64),
		endian in endian(),
	) {
		let length = (HEADER_LEN + limit) as u32 + excess;
		let mut buffer = BytesMut::with_capacity(4 + tail.len());
		buffer.extend_from_slice(&endian.write_u32(length));
		buffer.extend_from_slice(&tail);
		let capacity = buffer.capacity();
		let error = StreamCodec::new(endian, limit, limit).decode(&mut buffer).unwrap_err();
		prop_assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
		prop_assert_eq!(buffer.capacity(), capacity);
	}

	/// Any datagram: refused exactly as PROTOCOL.md says, otherwise header and body as sent.
	#[test]
	fn decoding_any_datagram_agrees_with_the_protocol(
		datagram in proptest::collection::vec(any::<u8>(), 0..128),
		endian in endian(),
		limit in 0usize..128,
	) {
		let result = decode_datagram(Bytes::from(datagram.clone()), endian, limit);
		if datagram.len() < HEADER_LEN {
			let error = result.unwrap_err();
			prop_assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTooShort { length: datagram.len() }));
			return Ok(());
		}
		let value = endian.read_u32(datagram[..4].try_into().unwrap());
		if value > 4 {
			let error = result.unwrap_err();
			prop_assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value }));
		} else if datagram.len() - HEADER_LEN > limit {
			prop_assert_eq!(result.unwrap_err().kind(), ErrorKind::BodyTooLarge);
		} else {
			let message = result.unwrap();
			prop_assert_eq!(&encode_header(&message.header, endian)[..], &datagram[..HEADER_LEN]);
			prop_assert_eq!(&message.body[..], &datagram[HEADER_LEN..]);
		}
	}

	/// Encoding refuses a body over the write limit and leaves the buffer untouched.
	#[test]
	fn encoding_over_the_write_limit_writes_nothing(message in message(), limit in 0usize..600) {
		let codec = StreamCodec::new(Endian::Little, usize::MAX, limit);
		let mut buffer = BytesMut::new();
		match codec.encode(&message, &mut buffer) {
			Ok(()) => prop_assert!(message.body.len() <= limit),
			Err(error) => {
				prop_assert!(message.body.len() > limit);
				prop_assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
				prop_assert!(buffer.is_empty());
			},
		}
	}
}
