//! A Unix stream socket server: `cargo run --example unix-stream-server [PATH]`
//! (default /tmp/peerwire-example.sock). Try it with `cargo run --example unix-stream-client`.

#[path = "shared/service.rs"]
mod service;

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let path = std::env::args().nth(1).unwrap_or_else(|| "/tmp/peerwire-example.sock".into());
	let mut listener = peerwire::UnixStreamListener::bind(&path, &peerwire::Config::default()).await?;
	println!("[server] listening on unix://{path}");
	loop {
		match listener.accept().await {
			Ok((peer, info)) => {
				// The kernel tells who is on the other end: refuse processes you do not trust here.
				println!("[server] connection from {info}");
				tokio::spawn(service::serve(peer));
			},
			Err(error) => eprintln!("[server] accept failed: {error}"),
		}
	}
}
