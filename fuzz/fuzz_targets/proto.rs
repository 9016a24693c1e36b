//! The connection state (`peerwire::proto::Connection`) driven directly, without a runtime or a
//! socket: a script of remote messages, local actions of the handles and the peer task's
//! transmissions, with the state's own counters checked after every step.
//!
//! Input layout (read with `arbitrary::Unstructured`): four config bytes, then actions, each an
//! opcode byte and its fields, until the input ends. At the end the local side drops every
//! handle and the peer task transmits what is left.
//!
//! Checked, beyond "no panic":
//! - the counters (bytes held for handles, bytes of unanswered requests, open requests, queued
//!   messages) agree with what they count (`check_invariants`), after every step;
//! - the ids of requests the local side opens are never those of a request still open;
//! - every request the remote opened is answered exactly once (by a handle, or by an automatic
//!   error response) once everything is dropped, unless the connection ended or is closing.

#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Wake, Waker};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peerwire::proto::{Connection, Incoming, Limits, Refused};
use peerwire::{Config, Error, Message, MessageType};

#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
	fn wake(self: Arc<Self>) {
		self.0.fetch_add(1, Ordering::Relaxed);
	}
}

/// The parts of one request the local side holds: the reading handle, and write handles.
struct Held {
	key: usize,
	parts: usize,
	reader: bool,
}

impl Held {
	fn new(key: usize) -> Self {
		Self { key, parts: 1, reader: true }
	}

	fn add(&mut self, c: &mut Connection<Bytes>) {
		c.add_part(self.key);
		self.parts += 1;
	}

	/// Drop one part (the reading one if `reader` and it is still held); whether none is left.
	fn drop_one(&mut self, c: &mut Connection<Bytes>, reader: bool) -> bool {
		let reader = reader && self.reader;
		if !reader && self.parts == usize::from(self.reader) {
			return false;
		}
		c.drop_part(self.key, reader);
		self.parts -= 1;
		self.reader &= !reader;
		self.parts == 0
	}

	fn drop_all(mut self, c: &mut Connection<Bytes>) {
		while self.parts > 0 {
			let reader = self.reader;
			self.drop_one(c, reader);
		}
	}
}

struct Sent {
	held: Held,
	id: u32,
}

struct Model {
	c: Connection<Bytes>,
	sent: Vec<Sent>,
	received: Vec<Held>,
	/// Ids of requests the local side sent whose response has not been seen by its handle.
	open_local_ids: HashSet<u32>,
	/// Per id: requests the remote sent, and answers the local side wrote.
	remote_requests: HashMap<u32, usize>,
	answers: HashMap<u32, usize>,
	/// A message the state could not take yet (as the peer task holds it).
	blocked: Option<Message<Bytes>>,
	reader_alive: bool,
	waker: Waker,
}

fn byte(u: &mut Unstructured<'_>) -> arbitrary::Result<u8> {
	u8::arbitrary(u)
}

fn body(u: &mut Unstructured<'_>) -> arbitrary::Result<Bytes> {
	Ok(Bytes::from(vec![0u8; usize::from(byte(u)?) * 4]))
}

impl Model {
	fn transmit(&mut self) {
		let mut batch = VecDeque::new();
		self.c.take_outgoing(&mut batch);
		let metered = batch.iter().filter(|outgoing| outgoing.metered).count();
		let auto = batch.len() - metered;
		let cost = batch.iter().map(|outgoing| outgoing.cost).sum();
		self.c.on_taken(metered);
		self.c.on_flushed(cost, auto, u64::MAX);
		for outgoing in batch {
			let header = outgoing.message.header;
			if header.message_type == MessageType::Response {
				*self.answers.entry(header.request_id).or_default() += 1;
			}
		}
	}

	fn remote(&mut self, message: Message<Bytes>) {
		if self.blocked.is_some() {
			return;
		}
		let header = message.header;
		match self.c.recv(message) {
			Ok(()) => {
				if header.message_type == MessageType::Request {
					*self.remote_requests.entry(header.request_id).or_default() += 1;
				}
			},
			Err(message) => self.blocked = Some(message),
		}
	}

	fn retry_blocked(&mut self) {
		if let Some(message) = self.blocked.take() {
			self.remote(message);
		}
	}

	fn pick_id(&self, u: &mut Unstructured<'_>) -> arbitrary::Result<u32> {
		Ok(match byte(u)? % 3 {
			0 if !self.sent.is_empty() => self.sent[usize::from(byte(u)?) % self.sent.len()].id,
			_ => u32::from(byte(u)? % 16),
		})
	}

	fn step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
		let op = byte(u)? % 22;
		let which = usize::from(byte(u)?);
		match op {
			0 => {
				let id = self.pick_id(u)?;
				self.remote(Message::request(id, 1, body(u)?));
			},
			1 => {
				let id = self.pick_id(u)?;
				self.remote(Message::response(id, 1, body(u)?));
			},
			2 => {
				let id = self.pick_id(u)?;
				self.remote(Message::responder_update(id, 1, body(u)?));
			},
			3 => {
				let id = self.pick_id(u)?;
				self.remote(Message::requester_update(id, 1, body(u)?));
			},
			4 => self.remote(Message::stream(0, 1, body(u)?)),
			5 => match self.c.open_request(1, body(u)?) {
				Ok((key, id)) => {
					assert!(self.open_local_ids.insert(id), "id {id} given to two open requests");
					self.sent.push(Sent { held: Held::new(key), id });
				},
				Err(Refused::Full(_)) => {},
				Err(Refused::Failed(error)) => check_failure(&error),
			},
			6 => {
				if let Err(Refused::Failed(error)) = self.c.send_stream(1, body(u)?) {
					check_failure(&error);
				}
			},
			7 if !self.sent.is_empty() => {
				let key = self.sent[which % self.sent.len()].held.key;
				let _ = self.c.send_requester_update(key, 1, body(u)?);
			},
			8 if !self.sent.is_empty() => {
				let index = which % self.sent.len();
				let sent = &self.sent[index];
				if sent.held.reader {
					match self.c.poll_recv_sent(sent.held.key, &self.waker) {
						Poll::Ready(Ok(message)) if message.header.message_type == MessageType::Response => {
							self.open_local_ids.remove(&sent.id);
						},
						Poll::Ready(Err(_)) => {
							self.open_local_ids.remove(&sent.id);
						},
						Poll::Ready(Ok(_)) | Poll::Pending => {},
					}
				}
			},
			9 if !self.sent.is_empty() => {
				let index = which % self.sent.len();
				self.sent[index].held.add(&mut self.c);
			},
			10 if !self.sent.is_empty() => {
				let index = which % self.sent.len();
				let reader = byte(u)? % 2 == 0;
				if self.sent[index].held.drop_one(&mut self.c, reader) {
					let sent = self.sent.swap_remove(index);
					self.open_local_ids.remove(&sent.id);
				}
			},
			11 if self.reader_alive => match self.c.poll_recv_incoming(&self.waker) {
				Poll::Ready(Ok(Incoming::Request { key, .. })) => {
					self.received.push(Held::new(key));
				},
				Poll::Ready(_) | Poll::Pending => {},
			},
			12 if !self.received.is_empty() => {
				let key = self.received[which % self.received.len()].key;
				let _ = self.c.send_responder_update(key, 1, body(u)?);
			},
			13 if !self.received.is_empty() => {
				let key = self.received[which % self.received.len()].key;
				let _ = self.c.send_response(key, 1, body(u)?);
			},
			14 if !self.received.is_empty() => {
				let received = &self.received[which % self.received.len()];
				if received.reader {
					let _ = self.c.poll_recv_received(received.key, &self.waker);
				}
			},
			15 if !self.received.is_empty() => {
				let index = which % self.received.len();
				self.received[index].add(&mut self.c);
			},
			16 if !self.received.is_empty() => {
				let index = which % self.received.len();
				let reader = byte(u)? % 2 == 0;
				if self.received[index].drop_one(&mut self.c, reader) {
					self.received.swap_remove(index);
				}
			},
			17 if self.reader_alive => {
				self.c.drop_reader();
				self.c.drop_link();
				self.reader_alive = false;
			},
			18 => self.transmit(),
			19 => self.retry_blocked(),
			20 if byte(u)? % 8 == 0 => self.c.remote_done(),
			21 if byte(u)? % 16 == 0 => self.c.request_close(),
			_ => {},
		}
		Ok(())
	}
}

/// Sends fail only for a reason the caller can act on.
fn check_failure(error: &Error) {
	assert!(
		error.is_connection_closed()
			|| matches!(error.kind(), peerwire::ErrorKind::TooManyRequests | peerwire::ErrorKind::BodyTooLarge),
		"unexpected failure: {error}"
	);
}

fuzz_target!(|data: &[u8]| {
	let mut u = Unstructured::new(data);
	let Ok(bytes) = <[u8; 4]>::arbitrary(&mut u) else { return };
	let config = Config::default()
		.with_max_open_requests(usize::from(bytes[0] % 8) + 1)
		.with_request_queue(usize::from(bytes[1] % 4) + 1)
		.with_incoming_queue(usize::from(bytes[1] / 64) + 1)
		.with_max_buffered_incoming(usize::from(bytes[2]) * 8 + 1)
		.with_max_unanswered_incoming(usize::from(bytes[3]) * 8 + 1)
		.with_write_queue(usize::from(bytes[0] / 32) + 1)
		.with_max_buffered_outgoing(usize::from(bytes[2] ^ bytes[3]) * 8 + 1);
	let mut model = Model {
		c: Connection::new(Limits::new(&config, 1 << 20, 16)),
		sent: Vec::new(),
		received: Vec::new(),
		open_local_ids: HashSet::new(),
		remote_requests: HashMap::new(),
		answers: HashMap::new(),
		blocked: None,
		reader_alive: true,
		waker: Waker::from(Arc::new(Count::default())),
	};
	// The peer handle: its read half (dropped by opcode 17) and its write half.
	model.c.add_link();
	model.c.add_link();
	for _ in 0..256 {
		if u.is_empty() || model.step(&mut u).is_err() {
			break;
		}
		if let Err(broken) = model.c.check_invariants() {
			panic!("after a step: {broken}");
		}
	}
	// The local side lets go of everything; the peer task hands over what it held and writes.
	for sent in std::mem::take(&mut model.sent) {
		sent.held.drop_all(&mut model.c);
	}
	for received in std::mem::take(&mut model.received) {
		received.drop_all(&mut model.c);
	}
	if model.reader_alive {
		model.c.drop_reader();
		model.c.drop_link();
	}
	model.retry_blocked();
	model.transmit();
	model.c.check_invariants().unwrap();
	model.c.drop_link();
	assert_eq!(model.c.links(), 0);
	assert_eq!(model.c.unanswered(), 0, "a request is left open with every handle gone");
	if !model.c.is_closing() && !model.c.is_remote_done() {
		for (id, requests) in &model.remote_requests {
			let answers = model.answers.get(id).copied().unwrap_or(0);
			assert_eq!(answers, *requests, "request id {id}: {requests} requests, {answers} answers");
		}
	}
});
