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
