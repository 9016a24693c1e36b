//! The read handle reads for the peer task: in a steady flow of stream messages, the messages it
//! returns are read from the socket by its own task, not by the peer task and handed over. And
//! what that leaves unread behind messages nobody takes (the remote closing, a malformed frame)
//! is still noticed.

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::raw::stream_frame;
use common::{within, within_for};
use peerwire::{Config, Peer, StreamTransport};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf};

/// A read half that counts, per task, the reads that brought bytes.
struct ByTask {
	inner: ReadHalf<DuplexStream>,
	reads: Arc<Mutex<HashMap<Option<tokio::task::Id>, usize>>>,
}

impl AsyncRead for ByTask {
	fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
		// At most 4 KiB a read, so that a flow takes many.
		let mut chunk = [0; 4096];
		let len = chunk.len().min(buf.remaining());
		let mut limited = ReadBuf::new(&mut chunk[..len]);
		let polled = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
		if let Poll::Ready(Ok(())) = polled
			&& !limited.filled().is_empty()
		{
			buf.put_slice(limited.filled());
			*self.reads.lock().unwrap().entry(tokio::task::try_id()).or_default() += 1;
		}
		polled
	}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_handle_reads_a_steady_flow_itself() {
	const MESSAGES: usize = 20_000;
	let config = Config::default();
	let (remote, ours) = tokio::io::duplex(4 << 20);
	let (read, write) = tokio::io::split(ours);
	let reads = Arc::new(Mutex::new(HashMap::new()));
	let transport = StreamTransport::new(ByTask { inner: read, reads: reads.clone() }, write, &config);
	let peer = Peer::spawn(transport, &config);
	// Everything is on the way before anyone reads: the reader, not the sender, sets the pace.
	let (_remote_read, mut remote_write) = tokio::io::split(remote);
	let mut bytes = Vec::new();
	for i in 0..MESSAGES {
		bytes.extend_from_slice(&stream_frame(4, 0, 7, &(i as u64).to_le_bytes()));
	}
	remote_write.write_all(&bytes).await.unwrap();

	let (mut read_handle, _write_handle) = peer.split();
	let reading = tokio::spawn(async move {
		let id = tokio::task::id();
		for i in 0..MESSAGES {
			let message = read_handle.recv_message().await.unwrap().into_stream().unwrap();
			assert_eq!(message.body[..], (i as u64).to_le_bytes(), "message {i} out of order");
		}
		id
	});
	let reading_task = within(reading).await.unwrap();
	let reads = reads.lock().unwrap().clone();
	let total: usize = reads.values().sum();
	let by_reader = reads.get(&Some(reading_task)).copied().unwrap_or(0);
	// The peer task reads the first batch (the handle was not waiting yet), and may read again
	// whenever the handle found the socket empty for a moment; the rest is the handle's.
	assert!(by_reader * 10 >= total * 8, "the read handle's task made {by_reader} of the {total} reads: {reads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_stream_messages_do_not_hide_the_remote_closing() {
	let config = Config::default();
	let (remote, ours) = tokio::io::duplex(1 << 16);
	let (read, write) = tokio::io::split(ours);
	let peer = Peer::spawn(StreamTransport::new(read, write, &config), &config);
	let (_remote_read, mut remote_write) = tokio::io::split(remote);
	for i in 0..3u8 {
		remote_write.write_all(&stream_frame(4, 0, 7, &[i])).await.unwrap();
	}
	// Nobody takes them, and no request is open: reading is left to the read handle, for a
	// while. The remote's close behind them is noticed all the same.
	tokio::time::sleep(Duration::from_millis(20)).await;
	remote_write.shutdown().await.unwrap();
	drop(remote_write);
	drop(_remote_read);
	within_for(Duration::from_secs(2), peer.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_behind_unread_stream_messages_ends_the_connection() {
	let config = Config::default();
	let (remote, ours) = tokio::io::duplex(1 << 16);
	let (read, write) = tokio::io::split(ours);
	let (peer, handle) = Peer::new(StreamTransport::new(read, write, &config), &config);
	let run = tokio::spawn(peer.run());
	let (_remote_read, mut remote_write) = tokio::io::split(remote);
	remote_write.write_all(&stream_frame(4, 0, 7, b"fine")).await.unwrap();
	tokio::time::sleep(Duration::from_millis(20)).await;
	// An unknown message type, while the good message waits unread.
	remote_write.write_all(&stream_frame(9, 0, 7, b"bad")).await.unwrap();
	let result = within_for(Duration::from_secs(2), run).await.unwrap();
	let error = result.expect_err("the connection must end with the protocol violation");
	assert!(error.protocol_violation().is_some(), "{error}");
	drop(handle);
}
