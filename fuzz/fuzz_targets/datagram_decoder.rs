//! Arbitrary datagrams through `decode_datagram` (the seqpacket framing: header and body, no
//! length prefix).
//!
//! Input layout: `[flags, datagram bytes...]`. `flags` picks the byte order (bits 0-1) and a
//! small read limit (bits 2-4).
//!
//! Checked: no panic; the result is exactly what PROTOCOL.md asks for (short datagram, unknown
//! type, body over the limit, else the header and the body as sent, the body sliced and not
//! copied). The seqpacket reader's classification of `recvmmsg` results (`MSG_TRUNC`,
//! `MSG_CTRUNC`) is private to it, so it is not reached from here; instead the kernel's cut is
//! modelled: the reader receives into `12 + limit + 1` bytes, and a longer datagram cut to that
//! size must still be refused by `decode_datagram`, so a lost `MSG_TRUNC` could not pass a
//! truncated body on as whole.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peerwire::codec::{Endian, decode_datagram, encode_header};
use peerwire::{ErrorKind, MessageType, ProtocolViolation};

const LIMITS: [usize; 8] = [0, 1, 4, 12, 16, 64, 255, 1024];

fuzz_target!(|data: &[u8]| {
	let [flags, datagram @ ..] = data else {
		return;
	};
	let endian = [Endian::Little, Endian::Big, Endian::Native, Endian::Little][usize::from(flags & 3)];
	let limit = LIMITS[usize::from((flags >> 2) & 7)];
	let bytes = Bytes::copy_from_slice(datagram);
	let start = bytes.as_ptr() as usize;

	let result = decode_datagram(bytes.clone(), endian, limit);
	if datagram.len() < 12 {
		let error = result.expect_err("a datagram shorter than a header was accepted");
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTooShort { length: datagram.len() }));
		return;
	}
	let value = endian.read_u32(datagram[..4].try_into().unwrap());
	if MessageType::from_u32(value).is_none() {
		let error = result.expect_err("an unknown message type was accepted");
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value }));
		return;
	}
	if datagram.len() - 12 > limit {
		assert_eq!(result.expect_err("a body over the limit was accepted").kind(), ErrorKind::BodyTooLarge);
	} else {
		let message = result.expect("a well-formed datagram was refused");
		assert_eq!(&encode_header(&message.header, endian)[..], &datagram[..12]);
		assert_eq!(&message.body[..], &datagram[12..]);
		if !message.body.is_empty() {
			assert_eq!(message.body.as_ptr() as usize, start + 12, "the body was copied");
		}
	}

	// What the kernel would deliver into the reader's receive buffer: never accepted as whole.
	let receive_len = 12 + limit + 1;
	if datagram.len() > receive_len {
		let cut = bytes.slice(..receive_len);
		assert!(decode_datagram(cut, endian, limit).is_err(), "a datagram cut by the kernel was accepted");
	}
});
