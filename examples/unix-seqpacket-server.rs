//! A Unix seqpacket server that works with file descriptors:
//! `cargo run --example unix-seqpacket-server --features unix-seqpacket [PATH]`
//! (default /tmp/peerwire-seqpacket-example.sock). Try it with the `unix-seqpacket-client` example.
//!
//! Services:
//! - 1, echo: answers with the request's body and the same descriptors, sent back.
//! - 2, read: reads every descriptor of the request from its start, reports each with an update,
//!   and answers with what they held, concatenated.
//! - 3, pipe: answers with the read end of a fresh pipe, then writes a greeting into it.
//! - stream 10, log: printed.

use std::io::Write;
use std::os::unix::fs::FileExt;

use peerwire::{Error, PeerHandle, ReceivedMessage, ReceivedRequestHandle, UnixBody};

const ECHO: i32 = 1;
const READ: i32 = 2;
const PIPE: i32 = 3;
const LOG: i32 = 10;

#[tokio::main]
async fn main() -> Result<(), Error> {
	let path = std::env::args().nth(1).unwrap_or_else(|| "/tmp/peerwire-seqpacket-example.sock".into());
	let mut listener = peerwire::UnixSeqpacketListener::bind(&path, &peerwire::Config::default()).await?;
	println!("[server] listening on seqpacket://{path}");
	loop {
		match listener.accept().await {
			Ok((peer, info)) => {
				// The kernel tells who is on the other end: refuse processes you do not trust here.
				println!("[server] connection from {info}");
				tokio::spawn(serve(peer));
			},
			Err(error) => eprintln!("[server] accept failed: {error}"),
		}
	}
}

async fn serve(mut peer: PeerHandle<UnixBody>) {
	loop {
		match peer.recv_message().await {
			Ok(ReceivedMessage::Request(request, body)) => {
				tokio::spawn(async move {
					if let Err(error) = answer(request, body).await {
						eprintln!("[server] request failed: {error}");
					}
				});
			},
			Ok(ReceivedMessage::Stream(message)) if message.header.service_id == LOG => {
				let text = String::from_utf8_lossy(&message.body.data);
				println!("[server] log: {text} ({} descriptors)", message.body.fds.len());
			},
			Ok(ReceivedMessage::Stream(_)) => {},
			Err(error) => {
				println!("[server] connection ended: {error}");
				return;
			},
		}
	}
}

async fn answer(request: ReceivedRequestHandle<UnixBody>, body: UnixBody) -> Result<(), Error> {
	match request.service_id() {
		ECHO => request.send_response(0, body).await,
		READ => {
			let mut contents = Vec::new();
			for (i, fd) in body.fds.into_iter().enumerate() {
				let file = std::fs::File::from(fd);
				match read_all_at(&file) {
					Ok(data) => {
						request.send_update(0, format!("descriptor {i}: {} bytes", data.len())).await?;
						contents.extend_from_slice(&data);
					},
					Err(error) => return request.send_error_response(&format!("descriptor {i}: {error}")).await,
				}
			}
			request.send_response(0, contents).await
		},
		PIPE => {
			let (read, write) = match rustix::pipe::pipe() {
				Ok(pipe) => pipe,
				Err(error) => return request.send_error_response(&format!("pipe: {error}")).await,
			};
			request.send_response(0, UnixBody::new("the read end of a pipe", [read])).await?;
			// Written after the response: the client reads it through the descriptor it got.
			let mut write = std::fs::File::from(write);
			let _ = writeln!(write, "hello through a pipe from process {}", std::process::id());
			Ok(())
		},
		other => request.send_error_response(&format!("unknown service {other}")).await,
	}
}

/// Read a file from its start, whatever its current offset (the client may have written to it).
fn read_all_at(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
	let mut data = vec![0; file.metadata()?.len() as usize];
	file.read_exact_at(&mut data, 0)?;
	Ok(data)
}
