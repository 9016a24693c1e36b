//! A Unix seqpacket client that passes file descriptors:
//! `cargo run --example unix-seqpacket-client --features unix-seqpacket [PATH]`
//! (default /tmp/peerwire-seqpacket-example.sock), against the `unix-seqpacket-server` example.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use peerwire::{Config, UnixBody, UnixSeqpacketPeer};

const ECHO: i32 = 1;
const READ: i32 = 2;
const PIPE: i32 = 3;
const LOG: i32 = 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An anonymous in-memory file holding `text`.
fn memfile(name: &str, text: &str) -> std::io::Result<std::fs::File> {
	let mut file = std::fs::File::from(rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?);
	file.write_all(text.as_bytes())?;
	Ok(file)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
	let path = std::env::args().nth(1).unwrap_or_else(|| "/tmp/peerwire-seqpacket-example.sock".into());
	let (peer, info) = UnixSeqpacketPeer::connect(&path, &Config::default()).await?;
	println!("[client] connected to seqpacket://{path}, server {info}");

	// Echo: the descriptor comes back as a new number for the same open file.
	let file = memfile("echo", "")?;
	let inode = file.metadata()?.ino();
	let mut request = peer.send_request(ECHO, UnixBody::new("echo", [file])).await?;
	let response = request.recv_response().await?;
	let returned = std::fs::File::from(response.body.fds.into_iter().next().ok_or("no descriptor came back")?);
	println!("[client] echo: {:?}, same file: {}", response.body.data, returned.metadata()?.ino() == inode);

	// Read: the server reads what two files hold, reporting each with an update.
	let files = [memfile("first", "Hello, ")?, memfile("second", "descriptors!")?];
	let mut request = peer.send_request(READ, UnixBody::new("", files)).await?;
	while let Some(update) = request.recv_update().await? {
		println!("[client] read update: {}", String::from_utf8_lossy(&update.body.data));
	}
	let response = request.recv_response().await?;
	println!("[client] read response: {}", String::from_utf8_lossy(&response.body.data));

	// Pipe: the server hands over a pipe and writes into it.
	let mut request = peer.send_request(PIPE, UnixBody::default()).await?;
	let response = request.recv_response().await?;
	let mut pipe = std::fs::File::from(response.body.fds.into_iter().next().ok_or("no pipe came back")?);
	let text = tokio::task::spawn_blocking(move || {
		let mut text = String::new();
		pipe.read_to_string(&mut text).map(|_| text)
	})
	.await??;
	println!("[client] from the pipe: {}", text.trim_end());

	peer.send_stream(LOG, UnixBody::new("client done", [memfile("log", "")?])).await?;
	peer.close();
	// Wait for the log message (and its descriptor) to be on the wire before the process exits.
	peer.closed().await;
	Ok(())
}
