//! The Unix seqpacket transport over real sockets: descriptors, limits, malformed datagrams from a
//! raw socket, listener and connect, interop with fizyr-rpc 0.8, and the camera example's flow.
//!
//! The descriptor leak test is in `seqpacket_leak.rs`, alone in its process, because it counts
//! the process's open descriptors.

use std::fs::File;
use std::future::poll_fn;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use bytes::Bytes;
use peerwire::transport::seqpacket::{UnixSeqpacketReader, UnixSeqpacketTransport};
use peerwire::transport::{Transport, TransportRead, TransportWrite};
use peerwire::{
	Config, Error, ErrorKind, Message, Peer, PeerHandle, ProtocolViolation, UnixBody, UnixSeqpacketListener,
	UnixSeqpacketPeer,
};
use tokio::io::AsyncReadExt;
use tokio_seqpacket::UnixSeqpacket;

#[path = "../examples/camera.rs"]
mod camera;
mod common;

use common::seqpacket::{NO_FDS, raw_send};
use common::{socket_path, within};

fn limits(max_body: usize, max_fds: usize) -> Config {
	Config::default()
		.with_max_body_len_read(max_body)
		.with_max_body_len_write(max_body)
		.with_max_fds_read(max_fds)
		.with_max_fds_write(max_fds)
}

/// Two peers over a socket pair.
fn peers(config: &Config) -> (PeerHandle<UnixBody>, PeerHandle<UnixBody>) {
	let (a, b) = UnixSeqpacketTransport::pair(config).unwrap();
	(Peer::spawn(a, config), Peer::spawn(b, config))
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, File) {
	let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
	(read, File::from(write))
}

/// Everything a pipe delivers until every copy of its write end is closed.
async fn read_pipe(read: OwnedFd) -> Vec<u8> {
	let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read).unwrap();
	let mut data = Vec::new();
	within(receiver.read_to_end(&mut data)).await.unwrap();
	data
}

/// An anonymous in-memory file holding `data`.
fn memfile(data: &[u8]) -> File {
	let mut file = File::from(rustix::fs::memfd_create("peerwire-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap());
	file.write_all(data).unwrap();
	file
}

fn contents(fd: OwnedFd) -> Vec<u8> {
	let file = File::from(fd);
	let mut data = vec![0; file.metadata().unwrap().len() as usize];
	file.read_exact_at(&mut data, 0).unwrap();
	data
}

fn devnull() -> File {
	File::open("/dev/null").unwrap()
}

async fn recv_stream(peer: &mut PeerHandle<UnixBody>) -> Message<UnixBody> {
	within(peer.recv_message()).await.unwrap().into_stream().expect("a stream message")
}

#[tokio::test]
async fn a_descriptor_sent_is_usable_on_the_other_side() {
	let config = Config::default();
	let (client, mut server) = peers(&config);

	// A pipe's write end goes to the server, which writes into it; the client reads.
	let (read, write) = pipe();
	let mut request = within(client.send_request(1, UnixBody::new("write here", [write]))).await.unwrap();
	let (incoming, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!(&body.data[..], b"write here");
	let mut write = File::from(body.fds.into_iter().next().unwrap());
	write.write_all(b"written by the server").unwrap();
	drop(write);
	assert_eq!(read_pipe(read).await, b"written by the server");

	// A memfd comes back in the response.
	within(incoming.send_response(0, UnixBody::new("frame", [memfile(b"pixels")]))).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.body.fds.len(), 1);
	assert_eq!(contents(response.body.fds.into_iter().next().unwrap()), b"pixels");
}

#[tokio::test]
async fn many_descriptors_travel_in_one_message_in_order() {
	for (max_fds, count) in [(16, 16), (250, 250)] {
		let config = limits(1 << 16, max_fds);
		let (client, mut server) = peers(&config);
		let files: Vec<File> = (0..count).map(|i| memfile(format!("file {i}").as_bytes())).collect();
		within(client.send_stream(3, UnixBody::new("many", files))).await.unwrap();
		let message = recv_stream(&mut server).await;
		assert_eq!(message.body.fds.len(), count);
		for (i, fd) in message.body.fds.into_iter().enumerate() {
			assert_eq!(contents(fd), format!("file {i}").as_bytes());
		}
	}
}

#[tokio::test]
async fn descriptors_travel_in_updates_both_ways() {
	let config = Config::default();
	let (client, mut server) = peers(&config);
	let mut request = within(client.send_request(1, UnixBody::default())).await.unwrap();
	let (mut incoming, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	within(request.send_update(5, UnixBody::new("up", [memfile(b"requester")]))).await.unwrap();
	let update = within(incoming.recv_update()).await.unwrap().unwrap();
	assert_eq!(contents(update.body.fds.into_iter().next().unwrap()), b"requester");
	within(incoming.send_update(6, UnixBody::new("down", [memfile(b"responder")]))).await.unwrap();
	let update = within(request.recv_update()).await.unwrap().unwrap();
	assert_eq!(update.header.service_id, 6);
	assert_eq!(contents(update.body.fds.into_iter().next().unwrap()), b"responder");
	within(incoming.send_response(0, "")).await.unwrap();
	assert!(!within(request.recv_response()).await.unwrap().is_error_response());
}

#[tokio::test]
async fn at_the_limits_passes_and_over_them_fails_for_that_message_only() {
	let config = limits(1000, 4);
	let (client, mut server) = peers(&config);

	// Exactly at both limits.
	let files: Vec<File> = (0..4).map(|i| memfile(&[i])).collect();
	within(client.send_stream(1, UnixBody::new(vec![7; 1000], files))).await.unwrap();
	let message = recv_stream(&mut server).await;
	assert_eq!(message.body.data.len(), 1000);
	assert_eq!(message.body.fds.len(), 4);

	// One over: refused, and nothing is queued.
	let error = within(client.send_stream(1, UnixBody::from(vec![0; 1001]))).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
	let (read, write) = pipe();
	let body = UnixBody::new("x", [write, devnull(), devnull(), devnull(), devnull()]);
	let error = within(client.send_request(1, body)).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::TooManyFds);
	// The refused message's descriptors were closed: the pipe's only write end is gone.
	assert_eq!(read_pipe(read).await, b"");

	// Updates and responses over the limits fail alone too.
	let mut request = within(client.send_request(2, "question")).await.unwrap();
	let (mut incoming, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	let error = within(request.send_update(0, UnixBody::from(vec![0; 1001]))).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
	let too_many: Vec<File> = (0..5).map(|_| devnull()).collect();
	let error = within(incoming.send_update(0, UnixBody::new("", too_many))).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::TooManyFds);
	let error = within(incoming.send_response(0, UnixBody::from(vec![0; 1001]))).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);

	// The connection and the request keep working.
	within(request.send_update(1, "still here")).await.unwrap();
	assert_eq!(&within(incoming.recv_update()).await.unwrap().unwrap().body.data[..], b"still here");
	within(incoming.send_response(0, UnixBody::new("answer", [memfile(b"ok")]))).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(&response.body.data[..], b"answer");
	within(client.send_stream(3, "after")).await.unwrap();
	assert_eq!(&recv_stream(&mut server).await.body.data[..], b"after");
}

#[tokio::test]
async fn large_bodies_use_the_overflow_buffer_and_arrive_intact() {
	let config = limits(4 << 20, 16);
	let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
	let max_body = a.max_datagram_len().min(b.max_datagram_len()) - peerwire::message::HEADER_LEN;
	let (client, mut server) = (Peer::spawn(a, &config), Peer::spawn(b, &config));
	for len in [70_000, 1 << 20, max_body] {
		let data = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
		within(client.send_stream(1, UnixBody::new(data.clone(), [memfile(b"x")]))).await.unwrap();
		let message = recv_stream(&mut server).await;
		assert!(message.body.data == data, "body of {len} bytes differs");
		assert_eq!(message.body.fds.len(), 1);
	}
}

#[tokio::test]
async fn a_body_the_kernel_cannot_carry_is_refused_for_that_message_only() {
	let config = limits(64 << 20, 16);
	let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
	let max_datagram = a.max_datagram_len();
	assert!(max_datagram <= 4 << 20, "{max_datagram}");
	let (_, mut writer) = a.split();
	let (mut reader, _) = b.split();
	let header = peerwire::message::HEADER_LEN;
	let error =
		writer.start_send(Message::stream(0, 0, UnixBody::from(vec![0; max_datagram - header + 1]))).unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
	// Exactly the limit is what the kernel takes.
	writer.start_send(Message::stream(0, 0, UnixBody::new(vec![1; max_datagram - header], [devnull()]))).unwrap();
	within(poll_fn(|cx| writer.poll_flush(cx))).await.unwrap();
	let message = within(poll_fn(|cx| reader.poll_read_message(cx))).await.unwrap().unwrap();
	assert_eq!(message.body.data.len(), max_datagram - header);
}

#[tokio::test]
async fn through_a_peer_the_kernel_limit_fails_at_the_send_call() {
	// The configured limit is far above what one datagram can carry: the handle must refuse
	// the body when it is sent, not let the peer drop it later.
	let config = limits(64 << 20, 16);
	let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
	let max_body = a.max_datagram_len() - peerwire::message::HEADER_LEN;
	let (client, mut server) = (Peer::spawn(a, &config), Peer::spawn(b, &config));
	let error = client.send_request(1, UnixBody::from(vec![0; max_body + 1])).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
	assert!(error.to_string().contains(&max_body.to_string()), "{error}");
	client.send_stream(2, UnixBody::from(vec![7; max_body])).await.unwrap();
	assert_eq!(recv_stream(&mut server).await.body.data.len(), max_body);
}

/// A raw socket to play the remote, and our reader on the other end.
fn raw_pair(config: &Config) -> (UnixSeqpacket, UnixSeqpacketReader) {
	let (raw, ours) = UnixSeqpacket::pair().unwrap();
	let (reader, _writer) = UnixSeqpacketTransport::from_socket(ours, config).unwrap().split();
	(raw, reader)
}

/// A datagram: a little-endian header and a body.
fn datagram(message_type: u32, request_id: u32, service_id: i32, body: &[u8]) -> Vec<u8> {
	let mut out = Vec::new();
	out.extend_from_slice(&message_type.to_le_bytes());
	out.extend_from_slice(&request_id.to_le_bytes());
	out.extend_from_slice(&service_id.to_le_bytes());
	out.extend_from_slice(body);
	out
}

fn descriptors(count: usize) -> Vec<OwnedFd> {
	(0..count).map(|_| devnull().into()).collect()
}

async fn read(reader: &mut UnixSeqpacketReader) -> Result<Option<Message<UnixBody>>, Error> {
	within(poll_fn(|cx| reader.poll_read_message(cx))).await
}

#[tokio::test]
async fn malformed_datagrams_from_a_raw_socket_give_the_documented_errors() {
	let config = limits(16, 2);

	// At the limits: fine.
	let (raw, mut reader) = raw_pair(&config);
	raw_send(&raw, &datagram(4, 9, 3, &[5; 16]), &descriptors(2)).await.unwrap();
	let message = read(&mut reader).await.unwrap().unwrap();
	assert_eq!((message.header.request_id, message.header.service_id), (9, 3));
	assert_eq!((message.body.data.len(), message.body.fds.len()), (16, 2));

	// A body one byte over the limit still fits the receive buffer: too large.
	let (raw, mut reader) = raw_pair(&config);
	raw_send(&raw, &datagram(4, 0, 0, &[0; 17]), NO_FDS).await.unwrap();
	assert_eq!(read(&mut reader).await.unwrap_err().kind(), ErrorKind::BodyTooLarge);

	// Anything longer is cut by the kernel: truncated.
	let (raw, mut reader) = raw_pair(&config);
	raw_send(&raw, &datagram(4, 0, 0, &[0; 1000]), &descriptors(1)).await.unwrap();
	let error = read(&mut reader).await.unwrap_err();
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTruncated));

	// Shorter than a header, with or without descriptors.
	for fds in [0, 1] {
		let (raw, mut reader) = raw_pair(&config);
		raw_send(&raw, &[0; 11], &descriptors(fds)).await.unwrap();
		let error = read(&mut reader).await.unwrap_err();
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTooShort { length: 11 }));
	}

	// One descriptor over the limit arrives whole: too many.
	let (raw, mut reader) = raw_pair(&config);
	raw_send(&raw, &datagram(4, 0, 0, b""), &descriptors(3)).await.unwrap();
	let error = read(&mut reader).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::TooManyFds);

	// Far more than the control buffer holds: the kernel cuts them.
	let (raw, mut reader) = raw_pair(&config);
	raw_send(&raw, &datagram(4, 0, 0, b""), &descriptors(64)).await.unwrap();
	let error = read(&mut reader).await.unwrap_err();
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::ControlTruncated));

	// An unknown message type.
	let (raw, mut reader) = raw_pair(&config);
	raw_send(&raw, &datagram(7, 0, 0, b""), &descriptors(1)).await.unwrap();
	let error = read(&mut reader).await.unwrap_err();
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value: 7 }));

	// The remote shutting down its end is a clean end of stream.
	let (raw, mut reader) = raw_pair(&config);
	raw.shutdown(std::net::Shutdown::Write).unwrap();
	assert!(read(&mut reader).await.unwrap().is_none());
}

/// `count` datagrams of varied sizes queued at once, each with a pipe's write end when `i % 3`
/// is 0; the read ends, in order.
async fn queue_many(raw: &UnixSeqpacket, count: usize, sizes: &[usize]) -> Vec<Option<OwnedFd>> {
	let mut pipes = Vec::new();
	for i in 0..count {
		let body: Vec<u8> = (0..sizes[i % sizes.len()]).map(|at| (at + i) as u8).collect();
		if i % 3 == 0 {
			let (read, write) = pipe();
			raw_send(raw, &datagram(4, i as u32, 2, &body), &[OwnedFd::from(write)]).await.unwrap();
			pipes.push(Some(read));
		} else {
			raw_send(raw, &datagram(4, i as u32, 2, &body), NO_FDS).await.unwrap();
			pipes.push(None);
		}
	}
	pipes
}

#[tokio::test]
async fn many_datagrams_queued_at_once_arrive_whole_and_in_order() {
	// Small ones batched through the arena, and ones over 16 KiB through the other slots.
	let sizes = [0, 1, 100, 16 * 1024, 20_000, 7, 150_000, 64];
	// With the default address space for batch slots, and with limits so large that every
	// datagram is received alone.
	for max_body in [200_000, 300 << 20] {
		let config = limits(max_body, 2);
		let (raw, mut reader) = raw_pair(&config);
		let count = 100;
		let sender = tokio::spawn(async move {
			let pipes = queue_many(&raw, count, &sizes).await;
			(raw, pipes)
		});
		let mut messages = Vec::new();
		for _ in 0..count {
			messages.push(read(&mut reader).await.unwrap().unwrap());
		}
		let (_raw, pipes) = within(sender).await.unwrap();
		for (i, (mut message, pipe)) in messages.into_iter().zip(pipes).enumerate() {
			assert_eq!(message.header.request_id, i as u32);
			let expected: Vec<u8> = (0..sizes[i % sizes.len()]).map(|at| (at + i) as u8).collect();
			assert_eq!(message.body.data, expected, "message {i}, limit {max_body}");
			match pipe {
				Some(read_end) => {
					// The descriptor is the pipe's write end: what goes in comes out.
					let mut write = File::from(message.body.fds.pop().expect("a descriptor"));
					write.write_all(b"through").unwrap();
					drop(write);
					assert_eq!(read_pipe(read_end).await, b"through");
				},
				None => assert!(message.body.fds.is_empty()),
			}
		}
	}
}

/// Five good datagrams, a bad one, five more good ones, all queued before the reader looks: the
/// first five are read, then the error; the descriptors of the bad one and of those behind it
/// are closed (a pipe whose write end travelled in each sees its end).
async fn a_bad_datagram_in_the_middle_of_a_batch(bad: &[u8], fds: usize, check: impl Fn(&Error)) {
	let config = limits(16, 2);
	let (raw, mut reader) = raw_pair(&config);
	let mut read_ends = Vec::new();
	let mut send_with_pipe = async |data: &[u8], extra: usize| {
		let (read_end, write_end) = pipe();
		let mut sent: Vec<OwnedFd> = vec![write_end.into()];
		sent.extend(descriptors(extra));
		raw_send(&raw, data, &sent).await.unwrap();
		read_ends.push(read_end);
	};
	for i in 0..5 {
		send_with_pipe(&datagram(4, i, 0, b"before"), 0).await;
	}
	send_with_pipe(bad, fds.saturating_sub(1)).await;
	for i in 5..10 {
		send_with_pipe(&datagram(4, i, 0, b"after"), 0).await;
	}
	for i in 0..5 {
		let message = read(&mut reader).await.unwrap().unwrap();
		assert_eq!((message.header.request_id, &message.body.data[..]), (i, &b"before"[..]));
		assert_eq!(message.body.fds.len(), 1);
	}
	check(&read(&mut reader).await.unwrap_err());
	let mut read_ends = read_ends.into_iter();
	// The good ones delivered are still open...
	let delivered: Vec<OwnedFd> = read_ends.by_ref().take(5).collect();
	// ...and every later one is closed already, or once the reader is gone (the datagrams still
	// in the socket behind the batch).
	drop(reader);
	for read_end in read_ends {
		assert_eq!(read_pipe(read_end).await, b"");
	}
	drop(delivered);
}

#[tokio::test]
async fn a_bad_datagram_in_the_middle_of_a_batch_ends_reading_after_the_good_ones_before_it() {
	let violation =
		|expected: ProtocolViolation| move |error: &Error| assert_eq!(error.protocol_violation(), Some(&expected));
	// Cut by the kernel.
	a_bad_datagram_in_the_middle_of_a_batch(
		&datagram(4, 99, 0, &[0; 1000]),
		1,
		violation(ProtocolViolation::DatagramTruncated),
	)
	.await;
	// Descriptors cut by the kernel.
	a_bad_datagram_in_the_middle_of_a_batch(
		&datagram(4, 99, 0, b""),
		40,
		violation(ProtocolViolation::ControlTruncated),
	)
	.await;
	// One descriptor over the limit.
	a_bad_datagram_in_the_middle_of_a_batch(&datagram(4, 99, 0, b""), 3, |error| {
		assert_eq!(error.kind(), ErrorKind::TooManyFds)
	})
	.await;
	// Shorter than a header.
	a_bad_datagram_in_the_middle_of_a_batch(&[0; 11], 1, violation(ProtocolViolation::DatagramTooShort { length: 11 }))
		.await;
	// Over the body limit.
	a_bad_datagram_in_the_middle_of_a_batch(&datagram(4, 99, 0, &[0; 17]), 1, |error| {
		assert_eq!(error.kind(), ErrorKind::BodyTooLarge)
	})
	.await;
}

#[tokio::test]
async fn the_end_of_the_connection_behind_a_batch_comes_after_its_messages() {
	let config = limits(16, 2);
	let (raw, mut reader) = raw_pair(&config);
	for i in 0..20 {
		raw_send(&raw, &datagram(4, i, 0, b"last words"), &descriptors(1)).await.unwrap();
	}
	drop(raw);
	for i in 0..20 {
		assert_eq!(read(&mut reader).await.unwrap().unwrap().header.request_id, i);
	}
	// And it stays ended.
	assert!(read(&mut reader).await.unwrap().is_none());
	assert!(read(&mut reader).await.unwrap().is_none());
}

#[tokio::test]
async fn a_writer_batch_with_descriptors_arrives_whole_and_in_order() {
	// More than one call's worth, with some messages carrying descriptors, some not, and more
	// descriptors in all than one call's control buffer holds.
	let config = limits(1000, 253);
	let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
	let (_, mut writer) = a.split();
	let (mut reader, _) = b.split();
	let fds_of = |i: usize| match i % 4 {
		0 => 0,
		1 => 1,
		2 => 253,
		_ => 7,
	};
	let mut pipes = Vec::new();
	for i in 0..60 {
		let (read_end, write_end) = pipe();
		let mut fds: Vec<OwnedFd> = Vec::new();
		if fds_of(i) > 0 {
			fds.push(write_end.into());
			fds.extend(descriptors(fds_of(i) - 1));
			pipes.push(Some(read_end));
		} else {
			pipes.push(None);
		}
		writer.start_send(Message::stream(i as u32, 1, UnixBody::new(vec![i as u8; i * 10], fds))).unwrap();
	}
	assert!(!writer.wants_more() || writer.has_queued());
	within(poll_fn(|cx| writer.poll_flush(cx))).await.unwrap();
	assert!(!writer.has_queued());
	for (i, pipe) in pipes.into_iter().enumerate() {
		let mut message = read(&mut reader).await.unwrap().unwrap();
		assert_eq!(message.header.request_id, i as u32);
		assert_eq!(message.body.data, vec![i as u8; i * 10]);
		assert_eq!(message.body.fds.len(), fds_of(i));
		if let Some(read_end) = pipe {
			let mut write = File::from(message.body.fds.swap_remove(0));
			write.write_all(b"ok").unwrap();
			drop((write, message));
			// This side's copy was closed once the datagram was sent: only the one received
			// held the pipe open.
			assert_eq!(read_pipe(read_end).await, b"ok");
		}
	}
}

#[tokio::test]
async fn a_malformed_datagram_ends_the_connection_and_every_handle_learns_why() {
	let config = limits(16, 2);
	let (raw, ours) = UnixSeqpacket::pair().unwrap();
	let (peer, mut handle) = Peer::new(UnixSeqpacketTransport::from_socket(ours, &config).unwrap(), &config);
	let run = tokio::spawn(peer.run());
	raw_send(&raw, &datagram(4, 0, 0, &[0; 100]), &descriptors(1)).await.unwrap();
	let error = within(run).await.unwrap().unwrap_err();
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTruncated));
	let error = within(handle.recv_message()).await.unwrap_err();
	assert!(error.is_connection_closed());
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTruncated));
}

#[tokio::test]
async fn closing_flushes_queued_messages_with_their_descriptors() {
	let config = Config::default();
	let (client, mut server) = peers(&config);
	for i in 0..20u8 {
		within(client.send_stream(1, UnixBody::new(vec![i], [memfile(&[i; 3])]))).await.unwrap();
	}
	client.close();
	for i in 0..20u8 {
		let message = recv_stream(&mut server).await;
		assert_eq!(&message.body.data[..], &[i]);
		assert_eq!(contents(message.body.fds.into_iter().next().unwrap()), [i; 3]);
	}
	assert!(within(server.recv_message()).await.unwrap_err().is_connection_closed());
}

#[tokio::test]
async fn big_endian_works_when_both_sides_agree() {
	let config = Config::default().with_endian(peerwire::codec::Endian::Big);
	let (raw, mut reader) = raw_pair(&config);
	let mut wire = Vec::new();
	for field in [4u32, 0x0102_0304, 0x0000_0010] {
		wire.extend_from_slice(&field.to_be_bytes());
	}
	raw_send(&raw, &wire, NO_FDS).await.unwrap();
	let message = read(&mut reader).await.unwrap().unwrap();
	assert_eq!((message.header.request_id, message.header.service_id), (0x0102_0304, 16));
}

#[tokio::test]
async fn listener_connect_credentials_and_stale_socket_files() {
	let path = socket_path("listen");
	let config = Config::default();
	let mut listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();
	assert_eq!(listener.local_addr().unwrap().as_deref(), Some(path.as_path()));

	// A second server on the same path is refused while the first is alive.
	let error = UnixSeqpacketListener::bind(&path, &config).await.unwrap_err();
	assert_eq!(error.io_error().map(std::io::Error::kind), Some(std::io::ErrorKind::AddrInUse));

	let (client, server) =
		within(async { tokio::join!(UnixSeqpacketPeer::connect(&path, &config), listener.accept()) }).await;
	let (client, client_info) = client.unwrap();
	let (mut server, server_info) = server.unwrap();
	let me = std::fs::metadata("/proc/self").unwrap();
	for info in [&client_info, &server_info] {
		let credentials = info.credentials.unwrap();
		assert_eq!((credentials.uid, credentials.gid), (me.uid(), me.gid()));
		assert_eq!(credentials.pid, Some(std::process::id() as i32));
	}
	// The client knows the server's path; the server's client is unnamed.
	assert_eq!(client_info.remote_address, Some(peerwire::RemoteAddress::Unix(Some(path.clone()))));
	assert_eq!(server_info.remote_address, Some(peerwire::RemoteAddress::Unix(None)));

	within(client.send_stream(1, UnixBody::new("hi", [memfile(b"via listener")]))).await.unwrap();
	let message = recv_stream(&mut server).await;
	assert_eq!(contents(message.body.fds.into_iter().next().unwrap()), b"via listener");

	// A listener dropped removes its socket file.
	drop(listener);
	assert!(!path.exists());
	// A server that died without dropping its listener leaves its socket file: the next bind
	// removes it.
	drop(tokio_seqpacket::UnixSeqpacketListener::bind(&path).unwrap());
	assert!(path.exists());
	let listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();
	drop(listener);
	assert!(!path.exists());
}

#[tokio::test]
async fn a_child_process_can_wrap_an_inherited_descriptor() {
	let config = Config::default();
	let (parent, child) = UnixSeqpacket::pair().unwrap();
	// What a child gets: a plain descriptor, possibly in blocking mode.
	let inherited = OwnedFd::from(child);
	rustix::io::ioctl_fionbio(&inherited, false).unwrap();
	let mut child = Peer::spawn(UnixSeqpacketTransport::from_fd(inherited, &config).unwrap(), &config);
	let parent = Peer::spawn(UnixSeqpacketTransport::from_socket(parent, &config).unwrap(), &config);
	within(parent.send_stream(1, UnixBody::new("to the child", [memfile(b"shared")]))).await.unwrap();
	let message = recv_stream(&mut child).await;
	assert_eq!(contents(message.body.fds.into_iter().next().unwrap()), b"shared");

	let (read, _write) = pipe();
	let error = UnixSeqpacketTransport::from_fd(read, &config).unwrap_err();
	assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn the_camera_example_records_a_frame_through_a_memfd() {
	let config = Config::default();
	let (client, server) = peers(&config);
	let camera = tokio::spawn(camera::serve(server));
	for sequence in 1..=3 {
		let recording = within(camera::record(&client)).await.unwrap();
		assert_eq!(recording.stages, camera::STAGES);
		assert_eq!(recording.info.sequence, sequence);
		assert_eq!((recording.info.width, recording.info.height), (camera::WIDTH, camera::HEIGHT));
		assert_eq!(recording.pixels.len(), 640 * 480);
		assert_eq!(recording.pixels[0], 0);
		assert_eq!(recording.pixels[640 * 480 - 1], 255);
	}
	// Anything but `record` is an error response, and the camera keeps serving.
	let mut request = within(client.send_request(99, UnixBody::default())).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.error_text().as_deref(), Some("unknown service 99"));
	drop(request);
	drop(client);
	within(camera).await.unwrap();
}

#[tokio::test]
async fn the_camera_example_runs_over_a_socket_in_a_temp_dir() {
	let dir = std::env::temp_dir().join(format!("peerwire-camera-test-{}", std::process::id()));
	std::fs::create_dir_all(&dir).unwrap();
	let path = dir.join("camera.sock");
	let config = Config::default();
	let mut listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();
	let camera = tokio::spawn(async move { camera::serve(listener.accept().await.unwrap().0).await });
	let (client, _) = within(UnixSeqpacketPeer::connect(&path, &config)).await.unwrap();
	let recording = within(camera::record(&client)).await.unwrap();
	assert_eq!(recording.info.byte_len(), 640 * 480);
	drop(client);
	within(camera).await.unwrap();
	std::fs::remove_dir_all(&dir).unwrap();
}

mod interop {
	//! peerwire against fizyr-rpc 0.8's seqpacket transport, both ways, with descriptors in
	//! requests, updates and responses.

	use super::*;

	fn fizyr_config() -> fizyr_rpc::UnixConfig {
		let mut config = fizyr_rpc::UnixConfig::default();
		config.max_body_len_read = 64 * 1024;
		config.max_body_len_write = 64 * 1024;
		config
	}

	fn fizyr_body(data: &[u8], fds: Vec<OwnedFd>) -> fizyr_rpc::UnixBody {
		fizyr_rpc::UnixBody { data: data.to_vec(), fds: fds.into_iter().map(Into::into).collect() }
	}

	fn owned(body: fizyr_rpc::UnixBody) -> Vec<OwnedFd> {
		body.fds.into_iter().map(OwnedFd::from).collect()
	}

	#[tokio::test]
	async fn a_fizyr_client_talks_to_a_peerwire_server() {
		let path = socket_path("fizyr-client");
		let config = Config::default();
		let mut listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();

		let server = tokio::spawn(async move {
			let (mut peer, _) = listener.accept().await.unwrap();
			let (mut request, body) = peer.recv_message().await.unwrap().into_request().unwrap();
			assert_eq!(request.service_id(), 7);
			assert_eq!(&body.data[..], b"read these");
			let texts: Vec<Vec<u8>> = body.fds.into_iter().map(contents).collect();
			let update = request.recv_update().await.unwrap().unwrap();
			assert_eq!(contents(update.body.fds.into_iter().next().unwrap()), b"in an update");
			request.send_update(2, UnixBody::new("progress", [memfile(b"from a responder update")])).await.unwrap();
			request.send_response(0, UnixBody::new(texts.concat(), [memfile(b"from the response")])).await.unwrap();
			// The fizyr side closes first; wait for it.
			let _ = peer.recv_message().await;
		});

		let (client, _info) = within(fizyr_rpc::UnixSeqpacketPeer::connect(&path, fizyr_config())).await.unwrap();
		let body = fizyr_body(b"read these", vec![memfile(b"one ").into(), memfile(b"two").into()]);
		let mut request = within(client.send_request(7, body)).await.unwrap();
		within(request.send_update(1, fizyr_body(b"update", vec![memfile(b"in an update").into()]))).await.unwrap();
		let update = within(request.recv_update()).await.expect("a responder update");
		assert_eq!(update.header.service_id, 2);
		assert_eq!(update.body.data, b"progress");
		assert_eq!(contents(owned(update.body).remove(0)), b"from a responder update");
		let response = within(request.recv_response()).await.unwrap();
		assert_eq!(response.body.data, b"one two");
		assert_eq!(contents(owned(response.body).remove(0)), b"from the response");
		client.close();
		within(server).await.unwrap();
		let _ = std::fs::remove_file(&path);
	}

	#[tokio::test]
	async fn a_peerwire_client_talks_to_a_fizyr_server() {
		let path = socket_path("fizyr-server");
		let mut listener = within(fizyr_rpc::UnixSeqpacketListener::bind(&path, fizyr_config())).await.unwrap();

		let server = tokio::spawn(async move {
			let (mut peer, _) = listener.accept().await.unwrap();
			let fizyr_rpc::ReceivedMessage::Request(mut request, body) = peer.recv_message().await.unwrap() else {
				panic!("expected a request");
			};
			assert_eq!(request.service_id(), 3);
			let texts: Vec<Vec<u8>> = owned(body).into_iter().map(contents).collect();
			let update = request.recv_update().await.unwrap();
			assert_eq!(contents(owned(update.body).remove(0)), b"requester update");
			within(request.send_update(4, fizyr_body(b"working", vec![memfile(b"responder update").into()])))
				.await
				.unwrap();
			within(request.send_response(0, fizyr_body(&texts.concat(), vec![memfile(b"response").into()])))
				.await
				.unwrap();
			let message = peer.recv_message().await.unwrap();
			let fizyr_rpc::ReceivedMessage::Stream(message) = message else { panic!("expected a stream message") };
			assert_eq!(contents(owned(message.body).remove(0)), b"stream");
		});

		let (client, _) = within(UnixSeqpacketPeer::connect(&path, &Config::default())).await.unwrap();
		let files = [memfile(b"alpha "), memfile(b"beta")];
		let mut request = within(client.send_request(3, UnixBody::new("request", files))).await.unwrap();
		within(request.send_update(1, UnixBody::new("", [memfile(b"requester update")]))).await.unwrap();
		let update = within(request.recv_update()).await.unwrap().unwrap();
		assert_eq!((update.header.service_id, &update.body.data[..]), (4, &b"working"[..]));
		assert_eq!(contents(update.body.fds.into_iter().next().unwrap()), b"responder update");
		let response = within(request.recv_response()).await.unwrap();
		assert_eq!(&response.body.data[..], b"alpha beta");
		assert_eq!(contents(response.body.fds.into_iter().next().unwrap()), b"response");
		within(client.send_stream(5, UnixBody::new("", [memfile(b"stream")]))).await.unwrap();
		within(server).await.unwrap();
		let _ = std::fs::remove_file(&path);
	}
}
