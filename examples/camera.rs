//! A camera server and its client in one process, over a Unix seqpacket socket in a temporary
//! directory: `cargo run --example camera --features unix-seqpacket`.
//!
//! The client asks the camera to `record`. The camera answers with progress updates
//! ("recording", "processing", "done") and then a response whose body is the frame's metadata and
//! whose descriptor is a sealed memfd holding the pixels: the 300 KiB frame never goes through the
//! socket, only a descriptor for it does. The client reads the frame through the descriptor and
//! checks every pixel.
//!
//! The server and client halves are plain functions ([`serve`], [`record`]) so that the test suite
//! runs this same flow (`tests/seqpacket.rs`).

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use peerwire::{Config, PeerHandle, ReceivedMessage, ReceivedRequestHandle, UnixBody, UnixSeqpacketListener};
use rustix::fs::{MemfdFlags, SealFlags};

/// The service id of a `record` request.
pub const RECORD: i32 = 1;
/// The update kind of a progress report; its body is the stage, as text.
pub const PROGRESS: i32 = 1;
/// The stages the camera reports, in order.
pub const STAGES: [&str; 3] = ["recording", "processing", "done"];

/// The frame size of this camera.
pub const WIDTH: u32 = 640;
/// The frame size of this camera.
pub const HEIGHT: u32 = 480;

/// Errors of this example: peerwire's, I/O, and a frame that is not what it claims to be.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body: what the descriptor beside it holds. 16 bytes, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
	/// Counts the frames this camera recorded, from 1.
	pub sequence: u32,
	/// Pixels per row.
	pub width: u32,
	/// Rows.
	pub height: u32,
	/// Bytes from one row to the next (8-bit grey pixels, so at least `width`).
	pub stride: u32,
}

impl FrameInfo {
	/// Encode as the response body.
	pub fn encode(&self) -> Vec<u8> {
		[self.sequence, self.width, self.height, self.stride].iter().flat_map(|field| field.to_le_bytes()).collect()
	}

	/// Decode a response body; `None` if it is not 16 bytes.
	pub fn decode(bytes: &[u8]) -> Option<Self> {
		let bytes: &[u8; 16] = bytes.try_into().ok()?;
		let field = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
		Some(Self { sequence: field(0), width: field(4), height: field(8), stride: field(12) })
	}

	/// The size of the frame in bytes.
	pub fn byte_len(&self) -> u64 {
		u64::from(self.stride) * u64::from(self.height)
	}
}

/// The test pattern: a grey gradient from black at the top left to white at the bottom right.
pub fn pixel(x: u32, y: u32) -> u8 {
	((x + y) * 255 / (WIDTH + HEIGHT - 2)) as u8
}

/// Capture a frame into a fresh memfd and seal it, so that the client can trust it will not
/// change under its feet (or shrink and fault a mapping).
fn capture(sequence: u32) -> std::io::Result<(FrameInfo, File)> {
	let info = FrameInfo { sequence, width: WIDTH, height: HEIGHT, stride: WIDTH };
	let memfd = rustix::fs::memfd_create("peerwire-camera-frame", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
	let mut file = File::from(memfd);
	let mut row = vec![0; info.stride as usize];
	for y in 0..HEIGHT {
		for (x, byte) in row.iter_mut().enumerate() {
			*byte = pixel(x as u32, y);
		}
		file.write_all(&row)?;
	}
	Ok((info, file))
}

fn seal(file: &File) -> std::io::Result<()> {
	let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL;
	Ok(rustix::fs::fcntl_add_seals(file, seals)?)
}

/// Serve one connection until it closes: `record` requests get a frame, anything else an error.
pub async fn serve(mut peer: PeerHandle<UnixBody>) {
	let mut sequence = 0;
	while let Ok(message) = peer.recv_message().await {
		let ReceivedMessage::Request(request, _body) = message else { continue };
		if request.service_id() != RECORD {
			let text = format!("unknown service {}", request.service_id());
			let _ = request.send_error_response(&text).await;
			continue;
		}
		sequence += 1;
		if let Err(error) = answer_record(&request, sequence).await {
			eprintln!("[camera] record failed: {error}");
			let _ = request.send_error_response(&error.to_string()).await;
		}
	}
}

async fn answer_record(request: &ReceivedRequestHandle<UnixBody>, sequence: u32) -> Result<(), BoxError> {
	request.send_update(PROGRESS, STAGES[0]).await?;
	let (info, frame) = capture(sequence)?;
	request.send_update(PROGRESS, STAGES[1]).await?;
	seal(&frame)?;
	request.send_update(PROGRESS, STAGES[2]).await?;
	request.send_response(0, UnixBody::new(info.encode(), [frame])).await?;
	Ok(())
}

/// What the client got from one `record`.
#[derive(Debug)]
pub struct Recording {
	/// The progress updates, in the order they arrived.
	pub stages: Vec<String>,
	/// The frame's metadata from the response body.
	pub info: FrameInfo,
	/// The frame, read through the descriptor.
	pub pixels: Vec<u8>,
}

/// Ask the camera for a frame, follow its progress, read the frame through the descriptor and
/// check it.
pub async fn record(peer: &PeerHandle<UnixBody>) -> Result<Recording, BoxError> {
	let mut request = peer.send_request(RECORD, UnixBody::default()).await?;
	let mut stages = Vec::new();
	while let Some(update) = request.recv_update().await? {
		stages.push(String::from_utf8_lossy(&update.body.data).into_owned());
	}
	// An error response from the camera is an `Err` of kind `ErrorKind::Remote` here.
	let response = request.recv_response_ok().await.map_err(|error| format!("the camera failed: {error}"))?;
	let info = FrameInfo::decode(&response.body.data).ok_or("the response body is not frame metadata")?;
	let mut fds = response.body.fds.into_iter();
	let (Some(fd), None) = (fds.next(), fds.next()) else {
		return Err("expected exactly one descriptor with the frame".into());
	};
	let frame = File::from(fd);

	let seals = rustix::fs::fcntl_get_seals(&frame)?;
	if !seals.contains(SealFlags::WRITE | SealFlags::SHRINK) {
		return Err(format!("the frame is not sealed against changes ({seals:?})").into());
	}
	if frame.metadata()?.len() != info.byte_len() {
		return Err(format!(
			"the frame holds {} bytes, the metadata says {}",
			frame.metadata()?.len(),
			info.byte_len()
		)
		.into());
	}
	let mut pixels = vec![0; info.byte_len() as usize];
	frame.read_exact_at(&mut pixels, 0)?;
	for (y, row) in pixels.chunks(info.stride as usize).enumerate() {
		for (x, &value) in row[..info.width as usize].iter().enumerate() {
			if value != pixel(x as u32, y as u32) {
				return Err(format!("pixel ({x}, {y}) is {value}, expected {}", pixel(x as u32, y as u32)).into());
			}
		}
	}
	Ok(Recording { stages, info, pixels })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
	let dir = std::env::temp_dir().join(format!("peerwire-camera-{}", std::process::id()));
	std::fs::create_dir_all(&dir)?;
	let path = dir.join("camera.sock");
	let result = run(&path).await;
	let _ = std::fs::remove_dir_all(&dir);
	result
}

async fn run(path: &std::path::Path) -> Result<(), BoxError> {
	let config = Config::default();
	let mut listener = UnixSeqpacketListener::bind(path, &config).await?;
	println!("[camera] listening on {}", path.display());
	let camera = tokio::spawn(async move {
		let (peer, info) = listener.accept().await?;
		println!("[camera] client connected: {info}");
		serve(peer).await;
		Ok::<_, peerwire::Error>(())
	});

	let (peer, _info) = peerwire::UnixSeqpacketPeer::connect(path, &config).await?;
	for _ in 0..2 {
		let recording = record(&peer).await?;
		let info = recording.info;
		println!("[client] progress: {}", recording.stages.join(" -> "));
		println!(
			"[client] frame {}: {}x{} grey, {} bytes through a sealed memfd, every pixel checked (centre = {})",
			info.sequence,
			info.width,
			info.height,
			recording.pixels.len(),
			recording.pixels[(info.height / 2 * info.stride + info.width / 2) as usize],
		);
	}
	peer.close();
	drop(peer);
	camera.await??;
	println!("[camera] client gone, done");
	Ok(())
}
