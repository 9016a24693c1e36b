//! Access control on listeners: Unix socket files that have their mode and group from the first
//! moment they can be seen, and admission checks at accept that close a refused connection
//! before anything is read from it, for Unix stream, seqpacket and TCP listeners.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{socket_path, within};
use peerwire::transport::SocketPermissions;
use peerwire::{
	Config, ConnectionInfo, ErrorKind, PeerHandle, ReceivedMessage, TcpListener, TcpPeer, UnixStreamListener,
	UnixStreamPeer, admission,
};

/// The uid and gid of this process, as the files it creates get them.
fn own_ids() -> (u32, u32) {
	let probe = std::env::temp_dir().join(format!("peerwire-ids-{}", std::process::id()));
	std::fs::write(&probe, "").unwrap();
	let created = std::fs::metadata(&probe).unwrap();
	std::fs::remove_file(&probe).unwrap();
	(created.uid(), created.gid())
}

/// Watch `path` with `stat` in a tight loop on a thread of its own, until told to stop, and
/// return the mode and group of the file the first time it was seen (or `None`).
fn watch_first_mode(
	path: PathBuf,
	started: Arc<AtomicBool>,
	stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<(u32, u32)>> {
	std::thread::spawn(move || {
		loop {
			// Read before the stat: once the flag is up the file exists, so this stat sees it.
			let stopping = stop.load(Ordering::Acquire);
			if let Ok(metadata) = std::fs::symlink_metadata(&path) {
				return Some((metadata.mode() & 0o7777, metadata.gid()));
			}
			started.store(true, Ordering::Release);
			if stopping {
				return None;
			}
		}
	})
}

/// Bind with `bind` while a concurrent `stat` loop watches `path`; the mode and group the file
/// had the first time it could be seen.
async fn first_seen<T, F: std::future::Future<Output = Result<T, peerwire::Error>>>(
	path: &Path,
	bind: impl FnOnce() -> F,
) -> (T, u32, u32) {
	let (started, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
	let watcher = watch_first_mode(path.to_path_buf(), started.clone(), stop.clone());
	while !started.load(Ordering::Acquire) {
		std::thread::yield_now();
	}
	let listener = bind().await.unwrap();
	stop.store(true, Ordering::Release);
	let (mode, gid) = watcher.join().unwrap().expect("the watcher never saw the socket file");
	(listener, mode, gid)
}

/// How many binds each mode test watches: a bind followed by a `chmod` leaves a window of a few
/// microseconds, which one try rarely catches and a few hundred do.
const TRIES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_stream_socket_file_has_its_mode_the_first_time_it_can_be_seen() {
	let (_, gid) = own_ids();
	let config = Config::default();
	for mode in [0o600, 0o660, 0o666].into_iter().flat_map(|mode| std::iter::repeat_n(mode, TRIES / 3)) {
		let path = socket_path("mode");
		let permissions = SocketPermissions::mode(mode).with_group(gid);
		let (listener, first_mode, first_gid) =
			first_seen(&path, || UnixStreamListener::bind_with_permissions(&path, permissions, &config)).await;
		assert_eq!(first_mode, mode, "first seen with mode {first_mode:o}, wanted {mode:o}");
		assert_eq!(first_gid, gid);
		let metadata = std::fs::symlink_metadata(&path).unwrap();
		assert!(metadata.file_type().is_socket());
		assert_eq!(listener.local_addr().unwrap().as_deref(), Some(path.as_path()));
		// It is a working listener at `path`.
		let mut listener = listener;
		let (client, server) = tokio::join!(UnixStreamPeer::connect(&path, &config), listener.accept());
		client.unwrap();
		server.unwrap();
		drop(listener);
		assert!(!path.exists(), "the socket file is removed with the listener");
	}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_file_has_its_group_the_first_time_it_can_be_seen() {
	let (uid, own_gid) = own_ids();
	// Root may give the file to any group; anyone else only to their own groups, and the
	// primary one is all this test knows of (then it shows that setting it does no harm).
	let gid = if uid == 0 { 65534 } else { own_gid };
	let config = Config::default();
	for _ in 0..TRIES / 3 {
		let path = socket_path("group");
		let permissions = SocketPermissions::mode(0o660).with_group(gid);
		let (_listener, mode, first_gid) =
			first_seen(&path, || UnixStreamListener::bind_with_permissions(&path, permissions, &config)).await;
		assert_eq!((mode, first_gid), (0o660, gid), "first seen with mode {mode:o} and group {first_gid}");
	}
}

#[tokio::test]
async fn binding_with_permissions_never_replaces_a_live_socket_and_leaves_no_temporary_file() {
	let dir = std::env::temp_dir().join(format!("peerwire-access-{}", std::process::id()));
	let _ = std::fs::remove_dir_all(&dir);
	std::fs::create_dir(&dir).unwrap();
	let path = dir.join("live.sock");
	let live = UnixStreamListener::bind(&path, &Config::default()).await.unwrap();
	let error = UnixStreamListener::bind_with_permissions(&path, SocketPermissions::mode(0o600), &Config::default())
		.await
		.unwrap_err();
	assert_eq!(error.io_error().map(std::io::Error::kind), Some(std::io::ErrorKind::AddrInUse), "{error}");
	// A regular file in the way is not replaced either.
	let file = dir.join("file");
	std::fs::write(&file, "mine").unwrap();
	assert!(
		UnixStreamListener::bind_with_permissions(&file, SocketPermissions::mode(0o600), &Config::default())
			.await
			.is_err()
	);
	assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
	drop(live);
	let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name()).collect();
	assert_eq!(names, [std::ffi::OsString::from("file")], "temporary files left behind");
	std::fs::remove_dir_all(&dir).unwrap();
}

/// Connect, send a request, and return its outcome; `Err` if the connection was closed on it.
async fn ask(peer: &PeerHandle) -> Result<bytes::Bytes, peerwire::Error> {
	Ok(peer.send_request(1, "may I").await?.recv_response().await?.body)
}

/// Answer every request of one connection with its own body.
fn echo(mut peer: PeerHandle) {
	tokio::spawn(async move {
		while let Ok(message) = peer.recv_message().await {
			if let ReceivedMessage::Request(request, body) = message {
				let _ = request.send_response(0, body).await;
			}
		}
	});
}

#[tokio::test]
async fn an_admission_check_for_another_uid_refuses_this_process_until_its_uid_is_allowed() {
	let (uid, _) = own_ids();
	let path = socket_path("admission");
	let mut listener = UnixStreamListener::bind(&path, &Config::default())
		.await
		.unwrap()
		.with_admission(admission::uids([uid.wrapping_add(1)]));

	// Refused: the connection is closed without an answer, and accept yields nothing.
	let (client, _) = UnixStreamPeer::connect(&path, &Config::default()).await.unwrap();
	let (asked, accepted) =
		tokio::join!(within(ask(&client)), tokio::time::timeout(Duration::from_millis(300), listener.accept()));
	let error = asked.expect_err("a refused client got an answer");
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
	assert!(accepted.is_err(), "accept yielded a refused connection");
	assert_eq!(listener.open_connections(), 0);

	// Allowed now: the same process is admitted and answered.
	listener.set_admission(admission::uids([uid]));
	let (client, _) = UnixStreamPeer::connect(&path, &Config::default()).await.unwrap();
	let accepting = async {
		let (peer, info): (PeerHandle, ConnectionInfo) = listener.accept().await.unwrap();
		assert_eq!(info.credentials.unwrap().uid, uid);
		echo(peer);
	};
	let (answer, ()) = within(async { tokio::join!(ask(&client), accepting) }).await;
	assert_eq!(&answer.unwrap()[..], b"may I");
}

/// A request frame (service 1, request id 0, body "hi"), little endian.
fn request_frame() -> Vec<u8> {
	let message = common::raw::request_datagram(0, 1, b"hi");
	let mut frame = u32::try_from(message.len()).unwrap().to_le_bytes().to_vec();
	frame.extend_from_slice(&message);
	frame
}

#[tokio::test]
async fn a_refused_connection_is_closed_before_any_message_is_read() {
	use tokio::io::{AsyncReadExt, AsyncWriteExt};
	// The client's request is in the server socket's receive queue before the listener even
	// accepts. Closing a Unix stream socket with unread data makes the kernel report a reset to
	// the other end; had the listener read the request first, the client would see a clean end
	// of stream instead. (Over TCP the write half's shutdown sends a FIN ahead of the reset, so
	// the client cannot tell the two apart there.)
	let (_, gid) = own_ids();
	let path = socket_path("refused-unread");
	let mut listener = UnixStreamListener::bind(&path, &Config::default())
		.await
		.unwrap()
		.with_admission(admission::gids([gid.wrapping_add(1)]));
	let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
	client.write_all(&request_frame()).await.unwrap();
	let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
	let mut buffer = [0; 64];
	let read = within(client.read(&mut buffer)).await;
	assert_eq!(
		read.as_ref().map_err(std::io::Error::kind).err(),
		Some(std::io::ErrorKind::ConnectionReset),
		"{read:?}"
	);
	assert!(!accepting.is_finished());
	accepting.abort();
}

#[tokio::test]
async fn a_tcp_admission_check_by_address() {
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default())
		.await
		.unwrap()
		.with_admission(admission::ip_addresses(["10.9.9.9".parse().unwrap()]));
	let address = listener.local_addr().unwrap();
	let (client, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let (asked, accepted) =
		tokio::join!(within(ask(&client)), tokio::time::timeout(Duration::from_millis(300), listener.accept()));
	assert_eq!(asked.unwrap_err().kind(), ErrorKind::ConnectionClosed);
	assert!(accepted.is_err());

	listener.set_admission(admission::loopback());
	let (client, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let accepting = async { echo(listener.accept().await.unwrap().0) };
	let (answer, ()) = within(async { tokio::join!(ask(&client), accepting) }).await;
	assert_eq!(&answer.unwrap()[..], b"may I");
}

#[cfg(feature = "unix-seqpacket")]
mod seqpacket {
	use super::*;
	use peerwire::{UnixSeqpacketListener, UnixSeqpacketPeer};

	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_unix_seqpacket_socket_file_has_its_mode_the_first_time_it_can_be_seen() {
		let config = Config::default();
		for _ in 1..TRIES {
			let path = socket_path("seqpacket-mode");
			let permissions = SocketPermissions::mode(0o600);
			let (_listener, first_mode, _) =
				first_seen(&path, || UnixSeqpacketListener::bind_with_permissions(&path, permissions, &config)).await;
			assert_eq!(first_mode, 0o600, "first seen with mode {first_mode:o}");
		}
		let path = socket_path("seqpacket-mode");
		let permissions = SocketPermissions::mode(0o600);
		let (listener, first_mode, _) =
			first_seen(&path, || UnixSeqpacketListener::bind_with_permissions(&path, permissions, &config)).await;
		assert_eq!(first_mode, 0o600, "first seen with mode {first_mode:o}");
		assert_eq!(listener.local_addr().unwrap().as_deref(), Some(path.as_path()));
		let mut listener = listener;
		let (client, server) = tokio::join!(UnixSeqpacketPeer::connect(&path, &config), listener.accept());
		client.unwrap();
		server.unwrap();
	}

	#[tokio::test]
	async fn a_seqpacket_admission_check_refuses_then_admits() {
		let (uid, _) = own_ids();
		let path = socket_path("seqpacket-admission");
		let mut listener = UnixSeqpacketListener::bind(&path, &Config::default())
			.await
			.unwrap()
			.with_admission(admission::uids([uid.wrapping_add(1)]));
		let (client, _) = UnixSeqpacketPeer::connect(&path, &Config::default()).await.unwrap();
		let asked = async { client.send_request(1, "may I").await?.recv_response().await };
		let (asked, accepted) =
			tokio::join!(within(asked), tokio::time::timeout(Duration::from_millis(300), listener.accept()));
		assert_eq!(asked.unwrap_err().kind(), ErrorKind::ConnectionClosed);
		assert!(accepted.is_err());

		listener.set_admission(admission::uids([uid]));
		let (client, _) = UnixSeqpacketPeer::connect(&path, &Config::default()).await.unwrap();
		let accepting = async {
			let (mut peer, _) = listener.accept().await.unwrap();
			if let Ok(ReceivedMessage::Request(request, body)) = peer.recv_message().await {
				request.send_response(0, body).await.unwrap();
			}
		};
		let asked = async { client.send_request(1, "may I").await?.recv_response().await };
		let (answer, ()) = within(async { tokio::join!(asked, accepting) }).await;
		assert_eq!(&answer.unwrap().body.data[..], b"may I");
	}
}
