//! A whole `Peer` over an in-memory byte stream, driven by a script of local and remote actions.
//!
//! The remote end of a `tokio::io::duplex` is driven by hand: it writes frames with arbitrary
//! ids (stray responses and updates, duplicate requests, streams) and reads everything the peer
//! writes. The local side sends requests, updates and responses, receives, clones and drops
//! handles in any order. Each input runs on its own current-thread runtime with paused time, so
//! "nothing more will happen" is seen at once (the clock only jumps when every task is idle) and
//! a hang shows as a timeout firing, not as a slow input.
//!
//! Input layout (read with `arbitrary::Unstructured`, one byte per field unless said): two
//! config bytes, then actions, each an opcode byte (mod 24) and its fields. Opcodes 21 to 23 end
//! the script: the remote closes (22: in the middle of a frame), or the local side calls `close`
//! (23); without them the local side drops every handle at the end. `fuzz/make_corpus.py`
//! writes seeds in this layout.
//!
//! Checked, beyond "no panic":
//! - the ids of requests the local side sends are never those of a request still open;
//! - every message reaches the handle it belongs to, in order, and none is lost: once the
//!   queues are drained, a handle has everything the remote sent for it (see `check_sent` and
//!   `check_received` for what timing may legitimately drop);
//! - the local side answers each request the remote opened exactly once (by the handle, or by
//!   the automatic error response of a dropped handle or a refused request) before it closes;
//! - after the remote closes (cleanly, or in the middle of a frame) or the local side closes,
//!   every open handle fails with `ConnectionClosed` carrying the right cause, and the peer task
//!   ends; every stream message the local side queued is on the wire once all is idle, and still
//!   gets there when the local side closes or drops everything.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use peerwire::codec::{Endian, StreamCodec};
use peerwire::{
	Config, Error, ErrorKind, Message, MessageHeader, MessageType, Peer, PeerReadHandle, PeerWriteHandle,
	ProtocolViolation, ReceivedMessage, ReceivedRequestHandle, ReceivedRequestWriteHandle, SentRequestHandle,
	SentRequestWriteHandle, StreamTransport,
};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

const MAX_ACTIONS: usize = 64;
/// A deadline for what must finish (virtual time: it only passes while everything is idle).
const WAIT: Duration = Duration::from_secs(60);
/// Long enough for every runnable task to run until it waits.
const IDLE: Duration = Duration::from_millis(1);
/// Room in each direction of the duplex: more than any script can write, so no write blocks.
const DUPLEX: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Id {
	/// A small id: collides with the local side's ids and with earlier remote requests.
	Small(u8),
	/// The id of a request the local side sent (as seen on the wire), by index.
	SeenLocal(u8),
	/// The id of a request the remote opened, by index.
	Opened(u8),
	Raw(u32),
}

#[derive(Debug)]
enum Action {
	RemoteRequest { id: Id, service: i8 },
	RemoteResponse { id: Id, service: i8 },
	RemoteRequesterUpdate { id: Id },
	RemoteResponderUpdate { id: Id },
	RemoteStream { id: Id },
	SendRequest { service: i8 },
	SendStream,
	SentUpdate { which: u8, via_writer: bool },
	SentRecv { which: u8 },
	SentCloneWriter { which: u8 },
	SentDrop { which: u8 },
	SentDropWriter { which: u8 },
	RecvMessage,
	ReceivedUpdate { which: u8, via_writer: bool },
	ReceivedRespond { which: u8, via_writer: bool, error: bool },
	ReceivedRecv { which: u8 },
	ReceivedCloneWriter { which: u8 },
	ReceivedDrop { which: u8 },
	ReceivedDropWriter { which: u8 },
	DropPeerRead,
	DropPeerWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
	/// The local side drops every handle; the remote reads until the peer hangs up.
	LocalDropsAll,
	/// The remote shuts down its write direction between frames.
	RemoteCloses,
	/// The remote writes the first `cut` bytes of a 24-byte frame, then shuts down.
	RemoteClosesMidFrame { cut: usize },
	/// The local side closes the connection (`close` on a peer handle) and keeps its handles.
	LocalCloses,
}

#[derive(Debug)]
struct Input {
	config: Config,
	actions: Vec<Action>,
	ending: Ending,
}

fn byte(u: &mut Unstructured<'_>) -> arbitrary::Result<u8> {
	u8::arbitrary(u)
}

fn id(u: &mut Unstructured<'_>) -> arbitrary::Result<Id> {
	Ok(match byte(u)? % 4 {
		0 => Id::Small(byte(u)?),
		1 => Id::SeenLocal(byte(u)?),
		2 => Id::Opened(byte(u)?),
		_ => Id::Raw(u32::from_le_bytes([byte(u)?, byte(u)?, byte(u)?, byte(u)?])),
	})
}

impl<'a> Arbitrary<'a> for Input {
	fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
		let a = byte(u)?;
		let b = byte(u)?;
		let config = Config::default()
			.with_endian(if a & 1 == 0 { Endian::Little } else { Endian::Big })
			.with_max_open_requests([1, 2, 4, 1 << 16][usize::from((a >> 1) & 3)])
			.with_request_queue([1, 2, 4, 32][usize::from((a >> 3) & 3)])
			.with_incoming_queue([1, 2, 4, 128][usize::from((a >> 5) & 3)])
			.with_write_queue([1, 2, 4, 128][usize::from(b & 3)])
			// The incoming byte budget: a remote body here is 4 bytes, plus the per-message charge.
			.with_max_buffered_incoming([64 << 20, 1, 100, 1000][usize::from((b >> 2) & 3)]);
		let mut actions = Vec::new();
		let mut ending = Ending::LocalDropsAll;
		while !u.is_empty() && actions.len() < MAX_ACTIONS {
			let action = match byte(u)? % 24 {
				0 => Action::RemoteRequest { id: id(u)?, service: byte(u)? as i8 },
				1 => Action::RemoteResponse { id: id(u)?, service: byte(u)? as i8 },
				2 => Action::RemoteRequesterUpdate { id: id(u)? },
				3 => Action::RemoteResponderUpdate { id: id(u)? },
				4 => Action::RemoteStream { id: id(u)? },
				5 => Action::SendRequest { service: byte(u)? as i8 },
				6 => Action::SendStream,
				7 => Action::SentUpdate { which: byte(u)?, via_writer: byte(u)? & 1 == 1 },
				8 => Action::SentRecv { which: byte(u)? },
				9 => Action::SentCloneWriter { which: byte(u)? },
				10 => Action::SentDrop { which: byte(u)? },
				11 => Action::SentDropWriter { which: byte(u)? },
				12 => Action::RecvMessage,
				13 => Action::ReceivedUpdate { which: byte(u)?, via_writer: byte(u)? & 1 == 1 },
				14 => {
					let which = byte(u)?;
					let flags = byte(u)?;
					Action::ReceivedRespond { which, via_writer: flags & 1 == 1, error: flags & 2 == 2 }
				},
				15 => Action::ReceivedRecv { which: byte(u)? },
				16 => Action::ReceivedCloneWriter { which: byte(u)? },
				17 => Action::ReceivedDrop { which: byte(u)? },
				18 => Action::ReceivedDropWriter { which: byte(u)? },
				19 => Action::DropPeerRead,
				20 => Action::DropPeerWrite,
				21 => {
					ending = Ending::RemoteCloses;
					break;
				},
				22 => {
					ending = Ending::RemoteClosesMidFrame { cut: 1 + usize::from(byte(u)?) % 23 };
					break;
				},
				_ => {
					ending = Ending::LocalCloses;
					break;
				},
			};
			actions.push(action);
		}
		Ok(Input { config, actions, ending })
	}
}

fuzz_target!(|input: Input| {
	if std::env::var_os("PEER_TRACKING_PRINT").is_some() {
		eprintln!("{input:#?}");
	}
	let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
	runtime.block_on(run(input));
});

/// Let every task run until all of them wait.
async fn settle() {
	tokio::time::sleep(IDLE).await;
}

/// The tag the remote put in a message body (every remote body is a unique 4-byte tag).
fn tag(body: &[u8]) -> u32 {
	u32::from_le_bytes(body.try_into().expect("remote bodies are 4-byte tags"))
}

/// The remote end: writes frames by hand, reads and checks what the peer writes.
struct Remote {
	read: ReadHalf<DuplexStream>,
	write: WriteHalf<DuplexStream>,
	codec: StreamCodec,
	buffer: BytesMut,
	next_tag: u32,
	/// The peer hung up (only allowed once the local side dropped every handle).
	eof: bool,
	/// A write failed because the peer is gone.
	broken: bool,
	/// Requests of the local side, as read from the wire.
	local_ever: HashSet<u32>,
	local_open: HashSet<u32>,
	local_order: Vec<u32>,
	/// The tag counter when each local request was read: remote messages tagged below it were
	/// sent before the remote knew of the request.
	local_seen_at: HashMap<u32, u32>,
	/// Responder updates and responses the remote sent, per id, in wire order.
	to_local: HashMap<u32, Vec<(MessageType, u32)>>,
	/// Unanswered openings of each id the remote used for a request.
	opened: HashMap<u32, usize>,
	opened_order: Vec<u32>,
	/// Every request the remote sent: tag -> (id, service id).
	requests: HashMap<u32, (u32, i32)>,
	/// Requester updates the remote sent, per id: tags in wire order.
	requester_updates: HashMap<u32, Vec<u32>>,
	/// Tags of the stream messages the remote sent, in order.
	streams: Vec<u32>,
	/// Stream messages read from the peer.
	streams_read: usize,
}

impl Remote {
	fn resolve(&self, id: Id) -> u32 {
		match id {
			Id::Small(n) => u32::from(n % 8),
			Id::SeenLocal(n) => pick(&self.local_order, n).unwrap_or(0),
			Id::Opened(n) => pick(&self.opened_order, n).unwrap_or(0),
			Id::Raw(n) => n,
		}
	}

	/// Whether the remote ever sent a response with this id: then the local side may have closed
	/// the request with that id at any moment since.
	fn may_have_answered(&self, id: u32) -> bool {
		self.to_local.get(&id).is_some_and(|sent| sent.iter().any(|(kind, _)| *kind == MessageType::Response))
	}

	async fn send(&mut self, message_type: MessageType, id: u32, service_id: i32) {
		let tag = self.next_tag;
		self.next_tag += 1;
		match message_type {
			MessageType::Request => {
				*self.opened.entry(id).or_default() += 1;
				self.opened_order.push(id);
				self.requests.insert(tag, (id, service_id));
			},
			MessageType::Response | MessageType::ResponderUpdate => {
				self.to_local.entry(id).or_default().push((message_type, tag));
				if message_type == MessageType::Response {
					self.local_open.remove(&id);
				}
			},
			MessageType::RequesterUpdate => self.requester_updates.entry(id).or_default().push(tag),
			MessageType::Stream => self.streams.push(tag),
		}
		let message =
			Message::new(MessageHeader::new(message_type, id, service_id), Bytes::copy_from_slice(&tag.to_le_bytes()));
		let mut frame = BytesMut::new();
		self.codec.encode(&message, &mut frame).unwrap();
		self.write_bytes(&frame).await;
	}

	async fn write_bytes(&mut self, bytes: &[u8]) {
		if self.broken {
			return;
		}
		match tokio::time::timeout(WAIT, self.write.write_all(bytes)).await.expect("a remote write blocked") {
			Ok(()) => {},
			// The peer is gone (checked by the caller: only after every local handle is dropped).
			Err(_) => self.broken = true,
		}
	}

	/// Read and check everything the peer has written so far.
	async fn pump(&mut self) {
		let mut chunk = [0u8; 4096];
		while !self.eof {
			let mut buf = ReadBuf::new(&mut chunk);
			let read = poll_fn(|cx| Poll::Ready(Pin::new(&mut self.read).poll_read(cx, &mut buf))).await;
			match read {
				Poll::Ready(Ok(())) if buf.filled().is_empty() => self.eof = true,
				Poll::Ready(Ok(())) => self.buffer.extend_from_slice(buf.filled()),
				Poll::Ready(Err(error)) => panic!("remote read failed: {error}"),
				Poll::Pending => break,
			}
		}
		while let Some(message) = self.codec.decode(&mut self.buffer).expect("the peer wrote a malformed frame") {
			self.check_from_peer(message);
		}
		if self.eof {
			assert!(self.buffer.is_empty(), "the peer hung up in the middle of a frame");
		}
	}

	fn check_from_peer(&mut self, message: Message<Bytes>) {
		let id = message.header.request_id;
		match message.header.message_type {
			MessageType::Request => {
				assert!(!self.local_open.contains(&id), "the peer opened request {id} while it was still open");
				self.local_open.insert(id);
				self.local_ever.insert(id);
				self.local_order.push(id);
				self.local_seen_at.insert(id, self.next_tag);
			},
			MessageType::RequesterUpdate => {
				assert!(self.local_ever.contains(&id), "requester update for request {id}, which the peer never sent");
			},
			MessageType::ResponderUpdate => {
				let open = self.opened.get(&id).copied().unwrap_or(0);
				assert!(open > 0, "responder update for request {id}, which the remote did not open or was answered");
			},
			MessageType::Response => {
				let open = self.opened.entry(id).or_default();
				assert!(*open > 0, "response for request {id}, which the remote did not open or was answered already");
				*open -= 1;
			},
			MessageType::Stream => self.streams_read += 1,
		}
	}
}

fn pick(items: &[u32], n: u8) -> Option<u32> {
	(!items.is_empty()).then(|| items[usize::from(n) % items.len()])
}

/// A request the local side sent.
struct Sent {
	id: u32,
	/// `None` once dropped; what it received is checked only while it is kept.
	handle: Option<SentRequestHandle>,
	writers: Vec<SentRequestWriteHandle>,
	/// (type, tag) of every message received, in order.
	delivered: Vec<(MessageType, u32)>,
	got_response: bool,
}

impl Sent {
	fn live(&self) -> bool {
		self.handle.is_some() || !self.writers.is_empty()
	}
}

/// A request the remote opened, as received locally.
struct Received {
	id: u32,
	/// The tag of the request message.
	tag: u32,
	handle: Option<ReceivedRequestHandle>,
	writers: Vec<ReceivedRequestWriteHandle>,
	delivered: Vec<u32>,
	responded: bool,
}

impl Received {
	fn live(&self) -> bool {
		self.handle.is_some() || !self.writers.is_empty()
	}
}

struct Local {
	read: Option<PeerReadHandle>,
	write: Option<PeerWriteHandle>,
	/// The read handle was never dropped: every stream message must arrive.
	read_kept: bool,
	streams: Vec<u32>,
	/// Stream messages the local side queued successfully.
	streams_sent: usize,
	sent: Vec<Sent>,
	received: Vec<Received>,
	max_open_requests: usize,
}

impl Local {
	/// Every handle is gone: the peer closes the connection on its own.
	fn gone(&self) -> bool {
		self.read.is_none()
			&& self.write.is_none()
			&& !self.sent.iter().any(Sent::live)
			&& !self.received.iter().any(Received::live)
	}

	fn pick_sent(&mut self, which: u8) -> Option<&mut Sent> {
		let live: Vec<usize> = (0..self.sent.len()).filter(|&i| self.sent[i].live()).collect();
		let index = *live.get(usize::from(which) % live.len().max(1))?;
		Some(&mut self.sent[index])
	}

	fn pick_received(&mut self, which: u8) -> Option<&mut Received> {
		let live: Vec<usize> = (0..self.received.len()).filter(|&i| self.received[i].live()).collect();
		let index = *live.get(usize::from(which) % live.len().max(1))?;
		Some(&mut self.received[index])
	}

	fn take_incoming(&mut self, remote: &Remote, message: ReceivedMessage) {
		match message {
			ReceivedMessage::Request(handle, body) => {
				let tag = tag(&body);
				let (id, service_id) = remote.requests[&tag];
				assert_eq!((handle.request_id(), handle.service_id()), (id, service_id), "request routed wrongly");
				assert!(self.received.iter().all(|r| r.tag != tag), "request delivered twice");
				self.received.push(Received {
					id,
					tag,
					handle: Some(handle),
					writers: Vec::new(),
					delivered: Vec::new(),
					responded: false,
				});
			},
			ReceivedMessage::Stream(message) => {
				assert_eq!(message.header.message_type, MessageType::Stream);
				self.streams.push(tag(&message.body));
			},
		}
	}
}

/// Record a message received by a sent request's handle; `None` from `recv_update` means the
/// response is in, and it is taken at once.
async fn take_sent(record: &mut Sent, update: Option<Message>) {
	let message = match update {
		Some(update) => {
			assert_eq!(update.header.message_type, MessageType::ResponderUpdate);
			update
		},
		None => {
			let handle = record.handle.as_mut().unwrap();
			let response = tokio::time::timeout(WAIT, handle.recv_response())
				.await
				.expect("recv_response hung after recv_update ended")
				.expect("recv_response failed after recv_update ended");
			assert_eq!(response.header.message_type, MessageType::Response);
			record.got_response = true;
			response
		},
	};
	assert_eq!(message.header.request_id, record.id, "message routed to the wrong request");
	record.delivered.push((message.header.message_type, tag(&message.body)));
}

/// What a sent request's handle received must be what the remote sent for its id, in order,
/// up to and including the first response. Messages the remote sent before it had read the
/// request may have been dropped (the peer saw them before the request existed), but only as
/// a prefix: the peer reads in order. `complete`: nothing more can arrive.
fn check_sent(remote: &Remote, record: &Sent, complete: bool) {
	let empty = Vec::new();
	let sent = remote.to_local.get(&record.id).unwrap_or(&empty);
	let seen_at = remote.local_seen_at.get(&record.id).copied().unwrap_or(u32::MAX);
	let before = sent.iter().take_while(|(_, tag)| *tag < seen_at).count();
	let fits = (0..=before).any(|skip| {
		let rest = &sent[skip..];
		let end = rest.iter().position(|(kind, _)| *kind == MessageType::Response).map_or(rest.len(), |p| p + 1);
		let expected = &rest[..end];
		if complete { record.delivered == expected } else { expected.starts_with(&record.delivered) }
	});
	assert!(
		fits,
		"request {}: received {:?}, the remote sent {sent:?} (request read at tag {seen_at})",
		record.id, record.delivered
	);
}

/// What a received request's handle got must be the requester updates the remote sent for its
/// id after the request, in order; all of them if the request is still open and nothing more can
/// arrive.
fn check_received(remote: &Remote, record: &Received, complete: bool) {
	let sent: Vec<u32> = remote
		.requester_updates
		.get(&record.id)
		.into_iter()
		.flatten()
		.copied()
		.filter(|&tag| tag > record.tag)
		.collect();
	let fits =
		if complete && !record.responded { record.delivered == sent } else { sent.starts_with(&record.delivered) };
	assert!(
		fits,
		"received request {} (tag {}): got {:?}, the remote sent {sent:?}",
		record.id, record.tag, record.delivered
	);
}

async fn run(input: Input) {
	let Input { config, actions, ending } = input;
	let (local_end, remote_end) = tokio::io::duplex(DUPLEX);
	let (read, write) = tokio::io::split(local_end);
	let (peer, handle) = Peer::new(StreamTransport::new(read, write, &config), &config);
	let peer_task = tokio::spawn(peer.run());
	let (remote_read, remote_write) = tokio::io::split(remote_end);
	let mut remote = Remote {
		read: remote_read,
		write: remote_write,
		codec: StreamCodec::new(config.endian, usize::MAX, usize::MAX),
		buffer: BytesMut::new(),
		next_tag: 0,
		eof: false,
		broken: false,
		local_ever: HashSet::new(),
		local_open: HashSet::new(),
		local_order: Vec::new(),
		local_seen_at: HashMap::new(),
		to_local: HashMap::new(),
		opened: HashMap::new(),
		opened_order: Vec::new(),
		requests: HashMap::new(),
		requester_updates: HashMap::new(),
		streams: Vec::new(),
		streams_read: 0,
	};
	let (read, write) = handle.split();
	let mut local = Local {
		read: Some(read),
		write: Some(write),
		read_kept: true,
		streams: Vec::new(),
		streams_sent: 0,
		sent: Vec::new(),
		received: Vec::new(),
		max_open_requests: config.max_open_requests,
	};
	// Set once the local side has dropped every handle: the peer closes on its own, and the
	// remote's later requests legitimately go unanswered.
	let mut gone_early = false;

	for action in actions {
		act(&mut local, &mut remote, action).await;
		settle().await;
		remote.pump().await;
		if local.gone() {
			gone_early = true;
		}
		assert!(!remote.eof || gone_early, "the peer hung up while handles were still held");
		assert!(!remote.broken || gone_early, "the peer's end went away while handles were still held");
		// Whatever the local side queued is on the wire once everything is idle.
		assert_eq!(remote.streams_read, local.streams_sent, "stream messages queued but not written");
	}

	match ending {
		Ending::LocalDropsAll => local_drops_all(local, remote, peer_task, gone_early).await,
		Ending::LocalCloses if local.read.is_none() && local.write.is_none() => {
			// No handle to close with: what is left is dropping everything.
			local_drops_all(local, remote, peer_task, gone_early).await
		},
		Ending::RemoteCloses | Ending::RemoteClosesMidFrame { .. } | Ending::LocalCloses => {
			closes(local, remote, peer_task, gone_early, ending).await
		},
	}
}

async fn act(local: &mut Local, remote: &mut Remote, action: Action) {
	match action {
		Action::RemoteRequest { id, service } => {
			remote.send(MessageType::Request, remote.resolve(id), service.into()).await
		},
		Action::RemoteResponse { id, service } => {
			remote.send(MessageType::Response, remote.resolve(id), service.into()).await
		},
		Action::RemoteRequesterUpdate { id } => remote.send(MessageType::RequesterUpdate, remote.resolve(id), 1).await,
		Action::RemoteResponderUpdate { id } => remote.send(MessageType::ResponderUpdate, remote.resolve(id), 1).await,
		Action::RemoteStream { id } => remote.send(MessageType::Stream, remote.resolve(id), 2).await,
		Action::SendRequest { service } => {
			let Some(write) = &local.write else { return };
			let result = tokio::time::timeout(WAIT, write.send_request(service.into(), "request"))
				.await
				.expect("send_request hung");
			// Open in the peer's table: at least the live requests the remote never answered, at
			// most every live request.
			let live = local.sent.iter().filter(|r| r.live()).count();
			let surely_open = local.sent.iter().filter(|r| r.live() && !remote.may_have_answered(r.id)).count();
			match result {
				Ok(handle) => {
					let id = handle.request_id();
					assert!(surely_open < local.max_open_requests, "more requests open than the limit");
					for other in local.sent.iter().filter(|r| r.live() && r.id == id) {
						assert!(remote.may_have_answered(other.id), "request id {id} handed out while still open");
					}
					local.sent.push(Sent {
						id,
						handle: Some(handle),
						writers: Vec::new(),
						delivered: Vec::new(),
						got_response: false,
					});
				},
				Err(error) => {
					assert_eq!(error.kind(), ErrorKind::TooManyRequests, "send_request failed: {error}");
					assert!(live >= local.max_open_requests, "refused a request below the limit");
				},
			}
		},
		Action::SendStream => {
			let Some(write) = &local.write else { return };
			let result = tokio::time::timeout(WAIT, write.send_stream(3, "stream")).await.expect("send_stream hung");
			result.expect("send_stream failed on a live connection");
			local.streams_sent += 1;
		},
		Action::SentUpdate { which, via_writer } => {
			let may_be_closed = |id| remote.may_have_answered(id);
			let Some(record) = local.pick_sent(which) else { return };
			let result = match (&record.handle, record.writers.first()) {
				(Some(_), Some(writer)) if via_writer => {
					tokio::time::timeout(WAIT, writer.send_update(4, "update")).await
				},
				(Some(handle), _) => tokio::time::timeout(WAIT, handle.send_update(4, "update")).await,
				(None, Some(writer)) => tokio::time::timeout(WAIT, writer.send_update(4, "update")).await,
				(None, None) => unreachable!("picked a live request"),
			};
			let result = result.expect("send_update hung");
			if let Err(error) = result {
				assert_eq!(error.kind(), ErrorKind::RequestClosed, "send_update failed: {error}");
				assert!(may_be_closed(record.id), "request {} closed without a response", record.id);
			}
		},
		Action::SentRecv { which } => {
			let Some(record) = local.pick_sent(which) else { return };
			let Some(handle) = &mut record.handle else { return };
			if record.got_response {
				assert!(
					tokio::time::timeout(WAIT, handle.recv_update())
						.await
						.expect("recv_update hung")
						.unwrap()
						.is_none()
				);
				return;
			}
			match tokio::time::timeout(IDLE, handle.recv_update()).await {
				Err(_) => {},
				Ok(Ok(update)) => take_sent(record, update).await,
				Ok(Err(error)) => panic!("recv_update failed on a live connection: {error}"),
			}
		},
		Action::SentCloneWriter { which } => {
			if let Some(record) = local.pick_sent(which) {
				let writer = match (&record.handle, record.writers.first()) {
					(Some(handle), _) => handle.write_handle(),
					(None, Some(writer)) => writer.clone(),
					(None, None) => return,
				};
				record.writers.push(writer);
			}
		},
		Action::SentDrop { which } => {
			if let Some(record) = local.pick_sent(which) {
				record.handle = None;
			}
		},
		Action::SentDropWriter { which } => {
			if let Some(record) = local.pick_sent(which) {
				record.writers.pop();
			}
		},
		Action::RecvMessage => {
			let Some(mut read) = local.read.take() else { return };
			match tokio::time::timeout(IDLE, read.recv_message()).await {
				Err(_) => {},
				Ok(Ok(message)) => local.take_incoming(remote, message),
				Ok(Err(error)) => panic!("recv_message failed on a live connection: {error}"),
			}
			local.read = Some(read);
		},
		Action::ReceivedUpdate { which, via_writer } => {
			let Some(record) = local.pick_received(which) else { return };
			let result = match (&record.handle, record.writers.first()) {
				(Some(_), Some(writer)) if via_writer => {
					tokio::time::timeout(WAIT, writer.send_update(5, "update")).await
				},
				(Some(handle), _) => tokio::time::timeout(WAIT, handle.send_update(5, "update")).await,
				(None, Some(writer)) => tokio::time::timeout(WAIT, writer.send_update(5, "update")).await,
				(None, None) => return,
			};
			let result = result.expect("send_update hung");
			match result {
				Ok(()) => assert!(!record.responded, "an update after the response was accepted"),
				Err(error) => {
					assert_eq!(error.kind(), ErrorKind::RequestClosed, "send_update failed: {error}");
					assert!(record.responded, "request closed without a response");
				},
			}
		},
		Action::ReceivedRespond { which, via_writer, error } => {
			let Some(record) = local.pick_received(which) else { return };
			let result = match (&record.handle, record.writers.first()) {
				(Some(_), Some(writer)) if via_writer && error => {
					tokio::time::timeout(WAIT, writer.send_error_response("no")).await
				},
				(Some(_), Some(writer)) if via_writer => {
					tokio::time::timeout(WAIT, writer.send_response(0, "ok")).await
				},
				(Some(handle), _) if error => tokio::time::timeout(WAIT, handle.send_error_response("no")).await,
				(Some(handle), _) => tokio::time::timeout(WAIT, handle.send_response(0, "ok")).await,
				(None, Some(writer)) => tokio::time::timeout(WAIT, writer.send_response(0, "ok")).await,
				(None, None) => return,
			};
			match result.expect("send_response hung") {
				Ok(()) => {
					assert!(!record.responded, "a second response was accepted");
					record.responded = true;
				},
				Err(error) => {
					assert_eq!(error.kind(), ErrorKind::RequestClosed, "send_response failed: {error}");
					assert!(record.responded, "request closed without a response");
				},
			}
		},
		Action::ReceivedRecv { which } => {
			let Some(record) = local.pick_received(which) else { return };
			let Some(handle) = &mut record.handle else { return };
			match tokio::time::timeout(IDLE, handle.recv_update()).await {
				Err(_) => assert!(!record.responded, "recv_update waits after the response"),
				Ok(Ok(Some(update))) => {
					assert!(!record.responded, "an update arrived after the response");
					assert_eq!(update.header.request_id, record.id, "update routed to the wrong request");
					assert_eq!(update.header.message_type, MessageType::RequesterUpdate);
					record.delivered.push(tag(&update.body));
				},
				Ok(Ok(None)) => assert!(record.responded, "recv_update ended before the response"),
				Ok(Err(error)) => panic!("recv_update failed on a live connection: {error}"),
			}
		},
		Action::ReceivedCloneWriter { which } => {
			if let Some(record) = local.pick_received(which) {
				let writer = match (&record.handle, record.writers.first()) {
					(Some(handle), _) => handle.write_handle(),
					(None, Some(writer)) => writer.clone(),
					(None, None) => return,
				};
				record.writers.push(writer);
			}
		},
		Action::ReceivedDrop { which } => {
			if let Some(record) = local.pick_received(which) {
				record.handle = None;
				// The last part gone without a response: an error response goes out.
				record.responded |= record.writers.is_empty();
			}
		},
		Action::ReceivedDropWriter { which } => {
			if let Some(record) = local.pick_received(which) {
				record.writers.pop();
				record.responded |= !record.live();
			}
		},
		Action::DropPeerRead => {
			local.read = None;
			local.read_kept = false;
		},
		Action::DropPeerWrite => local.write = None,
	}
}

/// Take everything the peer has delivered to any handle, until nothing more comes.
async fn drain(local: &mut Local, remote: &mut Remote) {
	loop {
		settle().await;
		remote.pump().await;
		let mut progress = false;
		if let Some(mut read) = local.read.take() {
			while let Ok(result) = tokio::time::timeout(IDLE, read.recv_message()).await {
				let message = result.expect("recv_message failed on a live connection");
				local.take_incoming(remote, message);
				progress = true;
			}
			local.read = Some(read);
		}
		for record in &mut local.sent {
			while let (Some(handle), false) = (&mut record.handle, record.got_response) {
				let Ok(result) = tokio::time::timeout(IDLE, handle.recv_update()).await else { break };
				take_sent(record, result.expect("recv_update failed on a live connection")).await;
				progress = true;
			}
		}
		for record in &mut local.received {
			while let (Some(handle), false) = (&mut record.handle, record.responded) {
				let Ok(result) = tokio::time::timeout(IDLE, handle.recv_update()).await else { break };
				let update = result.expect("recv_update failed on a live connection").expect("an open request ended");
				record.delivered.push(tag(&update.body));
				progress = true;
			}
		}
		if !progress {
			return;
		}
	}
}

async fn local_drops_all(
	mut local: Local,
	mut remote: Remote,
	peer_task: JoinHandle<Result<(), Error>>,
	gone_early: bool,
) {
	if !gone_early {
		drain(&mut local, &mut remote).await;
		// The queues are empty and the peer has read everything: nothing may be missing.
		if local.read_kept {
			assert_eq!(local.streams, remote.streams, "stream messages lost or reordered");
		}
		for record in local.sent.iter().filter(|r| r.handle.is_some()) {
			check_sent(&remote, record, true);
		}
		for record in local.received.iter().filter(|r| r.handle.is_some()) {
			check_received(&remote, record, true);
		}
	}
	let local_streams_sent = local.streams_sent;
	drop(local);
	tokio::time::timeout(WAIT, async {
		while !remote.eof {
			settle().await;
			remote.pump().await;
		}
	})
	.await
	.expect("the peer did not hang up after every handle was dropped");
	assert_eq!(remote.streams_read, local_streams_sent, "stream messages queued before the drop were lost");
	if !gone_early {
		let unanswered: Vec<_> = remote.opened.iter().filter(|(_, open)| **open > 0).collect();
		assert!(unanswered.is_empty(), "requests the remote opened were never answered: {unanswered:?}");
	}
	let result = tokio::time::timeout(WAIT, peer_task)
		.await
		.expect("the peer task did not end")
		.expect("the peer task panicked");
	assert!(result.is_ok(), "the peer ended with an error: {result:?}");
}

/// The error every handle must see once the connection is closed.
fn check_closed(error: &Error, ending: Ending) {
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
	match ending {
		Ending::LocalCloses => assert!(error.is_closed_locally(), "{error}"),
		Ending::RemoteCloses => assert!(error.is_closed_by_remote(), "{error}"),
		Ending::RemoteClosesMidFrame { cut } => {
			assert_eq!(
				error.protocol_violation(),
				Some(&ProtocolViolation::TruncatedFrame { buffered: cut }),
				"{error}"
			)
		},
		Ending::LocalDropsAll => unreachable!(),
	}
}

/// Drain a received request's handle until it fails. The handle is handed back: dropping it
/// here could drop the last handle and end the connection from this side first.
async fn drain_received(mut handle: ReceivedRequestHandle) -> (ReceivedRequestHandle, Vec<u32>, Error) {
	let mut delivered = Vec::new();
	loop {
		match handle.recv_update().await {
			Ok(Some(update)) => delivered.push(tag(&update.body)),
			Ok(None) => panic!("an unanswered request ended without an error"),
			Err(error) => return (handle, delivered, error),
		}
	}
}

/// The connection is closed by either side while the local side holds its handles: each of
/// them fails with the reason, promptly. When the remote closes, everything it sent before has
/// been read and must have arrived (`complete`); when the local side closes, it stops reading, so
/// only order is checked.
async fn closes(
	mut local: Local,
	mut remote: Remote,
	peer_task: JoinHandle<Result<(), Error>>,
	gone_early: bool,
	ending: Ending,
) {
	let complete = ending != Ending::LocalCloses;
	match ending {
		Ending::RemoteClosesMidFrame { cut } => {
			let mut frame = BytesMut::new();
			remote.codec.encode(&Message::stream(0, 0, "12345678"), &mut frame).unwrap();
			remote.write_bytes(&frame[..cut]).await;
			let _ = remote.write.shutdown().await;
		},
		Ending::RemoteCloses => {
			let _ = remote.write.shutdown().await;
		},
		Ending::LocalCloses => match (&local.write, &local.read) {
			(Some(write), _) => write.close(),
			(None, Some(read)) => read.close(),
			(None, None) => unreachable!("closing needs a peer handle"),
		},
		Ending::LocalDropsAll => unreachable!(),
	}
	if gone_early {
		tokio::time::timeout(WAIT, peer_task)
			.await
			.expect("the peer task did not end")
			.expect("the peer task panicked")
			.ok();
		return;
	}

	// Drain every handle at once: one left unread could hold the peer back from reading on.
	let mut sent_tasks = Vec::new();
	for (index, record) in local.sent.iter_mut().enumerate() {
		if record.got_response {
			continue;
		}
		if let Some(mut handle) = record.handle.take() {
			sent_tasks.push((
				index,
				tokio::spawn(async move {
					let mut delivered = Vec::new();
					loop {
						// The handle is handed back, not dropped: see `drain_received`.
						match handle.recv_update().await {
							Ok(Some(update)) => delivered.push(update),
							Ok(None) => {
								delivered.push(handle.recv_response().await.expect("the response was in"));
								return (handle, delivered, None);
							},
							Err(error) => return (handle, delivered, Some(error)),
						}
					}
				}),
			));
		}
	}
	let mut received_tasks = Vec::new();
	for (index, record) in local.received.iter_mut().enumerate() {
		if record.responded {
			continue;
		}
		if let Some(handle) = record.handle.take() {
			received_tasks.push((index, tokio::spawn(drain_received(handle))));
		}
	}
	let incoming_task = local.read.take().map(|mut read| {
		tokio::spawn(async move {
			let mut messages = Vec::new();
			let mut drains = Vec::new();
			loop {
				match read.recv_message().await {
					Ok(ReceivedMessage::Request(handle, body)) => {
						let (id, service_id) = (handle.request_id(), handle.service_id());
						drains.push((tag(&body), id, service_id, tokio::spawn(drain_received(handle))));
					},
					Ok(ReceivedMessage::Stream(message)) => messages.push(message),
					Err(error) => return (read, messages, drains, error),
				}
			}
		})
	});

	tokio::time::timeout(WAIT, async {
		for (index, task) in sent_tasks {
			let (handle, delivered, error) = task.await.expect("a drain task panicked");
			let record = &mut local.sent[index];
			record.handle = Some(handle);
			for message in delivered {
				assert_eq!(message.header.request_id, record.id, "message routed to the wrong request");
				record.got_response |= message.header.message_type == MessageType::Response;
				record.delivered.push((message.header.message_type, tag(&message.body)));
			}
			if let Some(error) = error {
				check_closed(&error, ending);
			}
			check_sent(&remote, record, complete);
		}
		for (index, task) in received_tasks {
			let (handle, delivered, error) = task.await.expect("a drain task panicked");
			let record = &mut local.received[index];
			record.handle = Some(handle);
			record.delivered.extend(delivered);
			check_closed(&error, ending);
			check_received(&remote, record, complete);
		}
		if let Some(task) = incoming_task {
			let (read, messages, drains, error) = task.await.expect("the incoming drain task panicked");
			local.read = Some(read);
			check_closed(&error, ending);
			for message in messages {
				local.take_incoming(&remote, ReceivedMessage::Stream(message));
			}
			for (tag, id, service_id, task) in drains {
				assert_eq!(remote.requests[&tag], (id, service_id), "request routed wrongly");
				let (handle, delivered, error) = task.await.expect("a drain task panicked");
				check_closed(&error, ending);
				let record =
					Received { id, tag, handle: Some(handle), writers: Vec::new(), delivered, responded: false };
				check_received(&remote, &record, complete);
				local.received.push(record);
			}
			// The read handle is still here, so it was kept all along: every stream message counts.
			if complete {
				assert_eq!(local.streams, remote.streams, "stream messages lost or reordered");
			} else {
				assert!(remote.streams.starts_with(&local.streams), "stream messages reordered");
			}
		}
		let result = peer_task.await.expect("the peer task panicked");
		match ending {
			Ending::RemoteCloses | Ending::LocalCloses => assert!(result.is_ok(), "{result:?}"),
			Ending::RemoteClosesMidFrame { cut } => {
				let error = result.expect_err("a truncated frame ended the peer without an error");
				assert_eq!(
					error.protocol_violation(),
					Some(&ProtocolViolation::TruncatedFrame { buffered: cut }),
					"{error}"
				);
			},
			Ending::LocalDropsAll => unreachable!(),
		}
	})
	.await
	.expect("a handle did not fail promptly after the connection closed");

	if ending == Ending::LocalCloses {
		// Everything queued before the close was written, then the peer hung up.
		tokio::time::timeout(WAIT, async {
			while !remote.eof {
				settle().await;
				remote.pump().await;
			}
		})
		.await
		.expect("the peer did not hang up after closing");
		assert_eq!(remote.streams_read, local.streams_sent, "stream messages queued before the close were lost");
	}

	// Whatever is left can no longer send.
	for record in &local.sent {
		for writer in &record.writers {
			let error = writer.send_update(1, "late").await.expect_err("an update was queued on a closed connection");
			check_closed(&error, ending);
		}
	}
	for record in &local.received {
		for writer in &record.writers {
			let error =
				writer.send_response(0, "late").await.expect_err("a response was queued on a closed connection");
			check_closed(&error, ending);
		}
	}
	if let Some(write) = &local.write {
		let error = write.send_request(1, "late").await.expect_err("a request was queued on a closed connection");
		check_closed(&error, ending);
	}
}
