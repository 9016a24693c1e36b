//! Which half of a connection sets the pace: 64-byte stream messages with a raw tokio or a
//! peerwire sender, and a raw tokio or a peerwire receiver, in all four pairings, over TCP and
//! Unix stream sockets.
//!
//! ```text
//! cargo bench --bench halves                 # 3 repetitions
//! cargo bench --bench halves -- --reps 5
//! cargo bench --bench halves -- --quick      # a smoke run: one short repetition
//! cargo bench --bench halves -- --only "unix peerwire->raw"   # one pairing, for a profiler
//! ```
//!
//! The suite's stream scenario (`benches/suite`) pairs a peerwire sender with a peerwire receiver
//! and a raw sender with a raw receiver, so it tells how far peerwire is from raw tokio, not
//! which half the gap is in. Here each half is swapped on its own. The raw halves are the suite's:
//! a sender that writes frames into a 64 KiB buffered writer and a receiver that reads them
//! through a 64 KiB buffered reader into a new body each; both halves of a pairing run on one
//! tokio runtime with 2 workers, as in the suite, and every sender yields after 16 messages.
//!
//! Each run warms up for 300 ms, then counts the messages received in 5 windows of 400 ms; its
//! figure is the median window. Pairings alternate within each repetition, and every ratio is
//! against raw → raw of the same repetition (a shared machine drifts). Results go to stdout as a
//! Markdown table. The exit status is non-zero if a pairing received nothing at all (broken, not
//! slow); a slow pairing never fails the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

const BODY: usize = 64;
const STREAM: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
	Raw,
	Peerwire,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Socket {
	Tcp,
	Unix,
}

/// Frames into a buffered writer, 16 per turn, until the connection fails.
async fn raw_sender(write: impl AsyncWrite + Unpin, body: Bytes) {
	let mut write = BufWriter::with_capacity(64 * 1024, write);
	let mut prefix = [0; 16];
	prefix[0..4].copy_from_slice(&(12 + body.len() as u32).to_le_bytes());
	prefix[4..8].copy_from_slice(&STREAM.to_le_bytes());
	loop {
		for _ in 0..16 {
			let body = body.clone();
			if write.write_all(&prefix).await.is_err() || write.write_all(&body).await.is_err() {
				return;
			}
		}
		tokio::task::yield_now().await;
	}
}

/// Frames through a buffered reader, each body into a new allocation, counted.
async fn raw_receiver(read: impl AsyncRead + Unpin, count: Arc<AtomicU64>) {
	let mut read = BufReader::with_capacity(64 * 1024, read);
	loop {
		let mut prefix = [0; 16];
		if read.read_exact(&mut prefix).await.is_err() {
			return;
		}
		let len = u32::from_le_bytes(prefix[0..4].try_into().unwrap()).saturating_sub(12) as usize;
		let mut body = vec![0; len];
		if read.read_exact(&mut body).await.is_err() {
			return;
		}
		drop(Bytes::from(body));
		count.fetch_add(1, Ordering::Relaxed);
	}
}

async fn peerwire_sender<T: peerwire::Transport<Body = Bytes>>(transport: T, body: Bytes) {
	let peer = peerwire::Peer::spawn(transport, &peerwire::Config::default());
	loop {
		for _ in 0..16 {
			if peer.send_stream(0, body.clone()).await.is_err() {
				return;
			}
		}
		tokio::task::yield_now().await;
	}
}

async fn peerwire_receiver<T: peerwire::Transport<Body = Bytes>>(transport: T, count: Arc<AtomicU64>) {
	let peer = peerwire::Peer::spawn(transport, &peerwire::Config::default());
	let (mut read, _write) = peer.split();
	while let Ok(message) = read.recv_message().await {
		drop(message);
		count.fetch_add(1, Ordering::Relaxed);
	}
}

/// A connected pair of sockets: (sender's end, receiver's end).
async fn pair(socket: Socket) -> (Either, Either) {
	match socket {
		Socket::Tcp => {
			let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
			let address = listener.local_addr().unwrap();
			let (a, b) = tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
			let (a, b) = (a.unwrap(), b.unwrap().0);
			a.set_nodelay(true).unwrap();
			b.set_nodelay(true).unwrap();
			(Either::Tcp(a), Either::Tcp(b))
		},
		Socket::Unix => {
			let (a, b) = tokio::net::UnixStream::pair().unwrap();
			(Either::Unix(a), Either::Unix(b))
		},
	}
}

enum Either {
	Tcp(tokio::net::TcpStream),
	Unix(tokio::net::UnixStream),
}

async fn send(side: Side, socket: Either) {
	let body = Bytes::from(vec![7; BODY]);
	let config = peerwire::Config::default();
	match (side, socket) {
		(Side::Raw, Either::Tcp(socket)) => raw_sender(socket, body).await,
		(Side::Raw, Either::Unix(socket)) => raw_sender(socket, body).await,
		(Side::Peerwire, Either::Tcp(socket)) => {
			peerwire_sender(peerwire::transport::tcp::TcpTransport::from_socket(socket, &config).unwrap(), body).await
		},
		(Side::Peerwire, Either::Unix(socket)) => {
			let transport =
				peerwire::transport::unix_stream::UnixStreamTransport::from_socket(socket, &config).unwrap();
			peerwire_sender(transport, body).await
		},
	}
}

async fn receive(side: Side, socket: Either, count: Arc<AtomicU64>) {
	let config = peerwire::Config::default();
	match (side, socket) {
		(Side::Raw, Either::Tcp(socket)) => raw_receiver(socket, count).await,
		(Side::Raw, Either::Unix(socket)) => raw_receiver(socket, count).await,
		(Side::Peerwire, Either::Tcp(socket)) => {
			peerwire_receiver(peerwire::transport::tcp::TcpTransport::from_socket(socket, &config).unwrap(), count)
				.await
		},
		(Side::Peerwire, Either::Unix(socket)) => {
			let transport =
				peerwire::transport::unix_stream::UnixStreamTransport::from_socket(socket, &config).unwrap();
			peerwire_receiver(transport, count).await
		},
	}
}

/// Messages per second received in one run (the median of the windows), and how many were
/// received in all, warm-up included.
fn run(socket: Socket, sender: Side, receiver: Side, warm: Duration, window: Duration, windows: usize) -> (f64, u64) {
	let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
	let rate = runtime.block_on(async {
		let (ours, theirs) = pair(socket).await;
		let count = Arc::new(AtomicU64::new(0));
		tokio::spawn(send(sender, ours));
		tokio::spawn(receive(receiver, theirs, count.clone()));
		tokio::time::sleep(warm).await;
		let mut rates = Vec::new();
		for _ in 0..windows {
			let (before, start) = (count.load(Ordering::Relaxed), Instant::now());
			tokio::time::sleep(window).await;
			rates.push((count.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64());
		}
		(median(&mut rates), count.load(Ordering::Relaxed))
	});
	runtime.shutdown_timeout(Duration::from_millis(100));
	rate
}

fn median(values: &mut [f64]) -> f64 {
	values.sort_by(|a, b| a.total_cmp(b));
	values[values.len() / 2]
}

fn main() {
	let mut reps = 3;
	// Words that a pairing's label ("unix peerwire->raw") must all contain.
	let mut only: Vec<String> = Vec::new();
	let (mut warm, mut window, mut windows) = (Duration::from_millis(300), Duration::from_millis(400), 5);
	let mut args = std::env::args().skip(1);
	while let Some(arg) = args.next() {
		match arg.as_str() {
			"--only" => {
				only = args.next().expect("--only needs words").split_whitespace().map(str::to_lowercase).collect();
			},
			"--reps" => reps = args.next().and_then(|n| n.parse().ok()).expect("--reps needs a number"),
			"--quick" => {
				reps = 1;
				(warm, window, windows) = (Duration::from_millis(50), Duration::from_millis(100), 1);
			},
			// What cargo passes to every bench target.
			"--bench" => {},
			other => panic!("unknown argument {other:?}: use --reps N, --quick or --only WORDS"),
		}
	}
	let pairings = [
		(Side::Raw, Side::Raw),
		(Side::Raw, Side::Peerwire),
		(Side::Peerwire, Side::Raw),
		(Side::Peerwire, Side::Peerwire),
	];
	println!("## Which half sets the pace: 64-byte stream messages, {reps} repetitions\n");
	println!("| socket | sender → receiver | rate (median) | / raw → raw of the same repetition (median, range) |");
	println!("|---|---|---|---|");
	for socket in [Socket::Tcp, Socket::Unix] {
		let mut rates = vec![Vec::new(); pairings.len()];
		let mut ratios = vec![Vec::new(); pairings.len()];
		for rep in 0..reps {
			let mut baseline = 0.0;
			for (i, &(sender, receiver)) in pairings.iter().enumerate() {
				let label = format!("{socket:?} {sender:?}->{receiver:?}").to_lowercase();
				if !only.iter().all(|word| label.contains(word.as_str())) {
					continue;
				}
				let (rate, received) = run(socket, sender, receiver, warm, window, windows);
				if received == 0 {
					// Broken, not slow: nothing at all arrived, warm-up included.
					eprintln!("{socket:?} {sender:?} -> {receiver:?}: no message arrived");
					std::process::exit(1);
				}
				eprintln!("[{}/{reps}] {socket:?} {sender:?} -> {receiver:?}: {:.2} M/s", rep + 1, rate / 1e6);
				if i == 0 {
					baseline = rate;
				}
				rates[i].push(rate);
				// Without raw -> raw in this repetition (left out by --only) there is no ratio.
				if baseline > 0.0 {
					ratios[i].push(rate / baseline);
				}
			}
		}
		for (i, &(sender, receiver)) in pairings.iter().enumerate() {
			if rates[i].is_empty() {
				continue;
			}
			if ratios[i].is_empty() {
				println!("| {socket:?} | {sender:?} → {receiver:?} | {:.2} M/s | — |", median(&mut rates[i]) / 1e6);
				continue;
			}
			let (low, high) = ratios[i].iter().fold((f64::MAX, f64::MIN), |(low, high), &r| (low.min(r), high.max(r)));
			println!(
				"| {socket:?} | {sender:?} → {receiver:?} | {:.2} M/s | {:.2} ({low:.2}–{high:.2}) |",
				median(&mut rates[i]) / 1e6,
				median(&mut ratios[i]),
			);
		}
	}
}
