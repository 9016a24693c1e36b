//! `peerwire send`: stream messages, one-way, then a clean close once they are on the wire.

use std::os::fd::OwnedFd;

use bytes::Bytes;
use serde_json::json;

use crate::body::load_main_body;
use crate::connect::{CliBody, Connected, Running, connect, open_fds};
use crate::failure::Failure;
use crate::output::Printer;
use crate::{Global, SendArgs};

pub async fn run(args: SendArgs, global: &Global) -> Result<(), Failure> {
	let body = load_main_body(args.body.as_ref())?;
	let fds = open_fds(&args.address, &args.fds)?;
	let config = global.config();
	let printer = Printer::new(global.json, None);
	match connect(&args.address, &config, global.quiet, &global.tls).await? {
		Connected::Stream(running) => send(running, &args, body, &fds, printer).await,
		Connected::Seqpacket(running) => send(running, &args, body, &fds, printer).await,
	}
}

async fn send<B: CliBody>(
	running: Running<B>,
	args: &SendArgs,
	body: Bytes,
	fds: &[OwnedFd],
	printer: Printer,
) -> Result<(), Failure> {
	let body_len = body.len();
	running.check_body_len(body_len)?;
	for sent in 0..args.count {
		let message = B::build(body.clone(), fds)?;
		if let Err(error) = running.peer.send_stream(args.service_id, message).await {
			let explained = running.explain(&error);
			return Err(Failure::peer(&error, format!("{}: {explained} (after {sent} messages)", args.address)));
		}
	}
	// Returns once everything queued is written and the connection is shut down.
	let watch = running.watch.clone();
	if let Err(error) = running.finish(None).await {
		let explained = crate::connect::explain(&error, watch.as_ref());
		return Err(Failure::peer(&error, format!("{}: {explained} (before every message was written)", args.address)));
	}
	let fields = [
		("count", json!(args.count)),
		("service_id", json!(args.service_id)),
		("body_len", json!(body_len)),
		("fds", json!(fds.len())),
	];
	printer.event("sent", None, &fields);
	Ok(())
}
