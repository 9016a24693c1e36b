//! Arbitrary bytes through `StreamCodec::decode`, whole and in pieces.
//!
//! Input layout: `[flags, split count n, n split lengths..., wire bytes...]`. `flags` picks the
//! byte order (bits 0-1) and a small read limit (bits 2-4). The wire bytes are decoded once in
//! one piece and once fed in chunks of the given lengths (cycled; 0 counts as 1), and both
//! decodings must agree: the same messages, the same error, the same bytes left over.
//!
//! Checked: no panic; no body over the limit; every message re-encodes to exactly the bytes it
//! came from; decoding never grows the buffer (it only splits); bodies point into the buffer.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use peerwire::codec::{Endian, LENGTH_PREFIX_LEN, StreamCodec};
use peerwire::{Error, Message};

const LIMITS: [usize; 8] = [0, 1, 4, 12, 16, 64, 255, 1024];

/// How a decoding ended: the messages it produced, then the error or the bytes left over.
#[derive(Debug, PartialEq)]
struct Outcome {
	messages: Vec<Message<Bytes>>,
	end: Result<Vec<u8>, (peerwire::ErrorKind, Option<peerwire::ProtocolViolation>)>,
}

fn error_key(error: &Error) -> (peerwire::ErrorKind, Option<peerwire::ProtocolViolation>) {
	(error.kind(), error.protocol_violation().cloned())
}

/// Decode every frame in `buffer`, checking what each call may do to it.
fn drain(
	codec: &StreamCodec,
	limit: usize,
	buffer: &mut BytesMut,
	messages: &mut Vec<Message<Bytes>>,
) -> Result<(), Error> {
	loop {
		let capacity = buffer.capacity();
		let start = buffer.as_ptr() as usize;
		let end = start + buffer.len();
		let len = buffer.len();
		match codec.decode(buffer) {
			Ok(Some(message)) => {
				assert!(message.body.len() <= limit, "body of {} bytes over the limit {limit}", message.body.len());
				let consumed = LENGTH_PREFIX_LEN + 12 + message.body.len();
				assert_eq!(buffer.len(), len - consumed, "decode consumed more or less than one frame");
				// Never allocates: what is left is the tail of the same allocation.
				assert!(buffer.capacity() <= capacity, "decode grew the buffer");
				if !message.body.is_empty() {
					let body = message.body.as_ptr() as usize;
					assert!(body >= start && body + message.body.len() <= end, "body was copied");
				}
				messages.push(message);
			},
			Ok(None) => {
				assert_eq!(buffer.len(), len, "`Ok(None)` consumed bytes");
				assert!(buffer.capacity() <= capacity, "decode grew the buffer");
				return Ok(());
			},
			Err(error) => {
				assert!(buffer.capacity() <= capacity, "decode grew the buffer");
				return Err(error);
			},
		}
	}
}

fuzz_target!(|data: &[u8]| {
	let [flags, split_count, rest @ ..] = data else {
		return;
	};
	let split_count = usize::from(*split_count).min(rest.len());
	let (splits, wire) = rest.split_at(split_count);
	let endian = [Endian::Little, Endian::Big, Endian::Native, Endian::Little][usize::from(flags & 3)];
	let limit = LIMITS[usize::from((flags >> 2) & 7)];
	let codec = StreamCodec::new(endian, limit, usize::MAX);

	// In one piece.
	let mut whole = BytesMut::from(wire);
	let mut messages = Vec::new();
	let end = drain(&codec, limit, &mut whole, &mut messages).map(|()| whole.to_vec()).map_err(|e| error_key(&e));
	let one_piece = Outcome { messages, end };

	// Every message re-encodes to exactly the bytes it was decoded from.
	let mut offset = 0;
	for message in &one_piece.messages {
		let mut encoded = BytesMut::new();
		StreamCodec::new(endian, usize::MAX, usize::MAX)
			.encode(message, &mut encoded)
			.expect("a decoded message encodes");
		assert_eq!(&encoded[..], &wire[offset..offset + encoded.len()], "decode disagrees with encode");
		offset += encoded.len();
	}

	// In pieces.
	let mut buffer = BytesMut::new();
	let mut messages = Vec::new();
	let mut position = 0;
	let mut next_split = 0;
	let mut end = Ok(());
	while position < wire.len() {
		let step = splits.get(next_split % splits.len().max(1)).map_or(wire.len(), |&n| usize::from(n).max(1));
		next_split += 1;
		let chunk = &wire[position..(position + step).min(wire.len())];
		position += chunk.len();
		buffer.extend_from_slice(chunk);
		end = drain(&codec, limit, &mut buffer, &mut messages);
		if end.is_err() {
			break;
		}
	}
	let end = end.map(|()| buffer.to_vec()).map_err(|e| error_key(&e));
	let in_pieces = Outcome { messages, end };

	assert_eq!(one_piece, in_pieces, "decoding in pieces differs from decoding in one piece");
});
