//! A Unix stream socket client: `cargo run --example unix-stream-client [PATH]`
//! (default /tmp/peerwire-example.sock), against `cargo run --example unix-stream-server`.

#[path = "shared/client.rs"]
mod client;
#[path = "shared/service.rs"]
mod service;

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let path = std::env::args().nth(1).unwrap_or_else(|| "/tmp/peerwire-example.sock".into());
	let (peer, _info) = peerwire::UnixStreamPeer::connect(&path, &peerwire::Config::default()).await?;
	println!("[client] connected to unix://{path}");
	client::run(&peer).await
}
