//! The connection state driven directly: no runtime, no socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, Wake, Waker};

use bytes::Bytes;

use super::*;
use crate::ErrorKind;

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
	fn wake(self: Arc<Self>) {
		self.0.fetch_add(1, Ordering::Relaxed);
	}
}

fn waker() -> (Arc<Count>, Waker) {
	let count = Arc::new(Count::default());
	(count.clone(), Waker::from(count))
}

fn woken(count: &Count) -> usize {
	count.0.load(Ordering::Relaxed)
}

fn config() -> Config {
	Config {
		max_open_requests: 4,
		request_queue: 2,
		incoming_queue: 2,
		max_buffered_incoming: 1000,
		max_unanswered_incoming: 1000,
		write_queue: 3,
		max_buffered_outgoing: 10_000,
		..Config::default()
	}
}

/// A connection with one link (the peer handle), as `Peer::new` makes it.
fn connection(config: &Config) -> Connection<Bytes> {
	let mut connection = Connection::new(Limits::new(config, usize::MAX, usize::MAX));
	connection.add_link();
	connection
}

/// Everything queued for writing, as the peer task would take it, all flushed at once.
fn transmit(connection: &mut Connection<Bytes>) -> Vec<Message<Bytes>> {
	let mut batch = VecDeque::new();
	connection.take_outgoing(&mut batch);
	let metered = batch.iter().filter(|outgoing| outgoing.metered).count();
	let auto = batch.len() - metered;
	let cost = batch.iter().map(|outgoing| outgoing.cost).sum();
	connection.on_taken(metered);
	let total = connection.queued_total;
	connection.on_flushed(cost, auto, total);
	batch.into_iter().map(|outgoing| outgoing.message).collect()
}

fn body(text: &'static str) -> Bytes {
	Bytes::from_static(text.as_bytes())
}

fn recv_request(connection: &mut Connection<Bytes>, waker: &Waker) -> (Key, MessageHeader, Bytes) {
	match connection.poll_recv_incoming(waker) {
		Poll::Ready(Ok(Incoming::Request { key, header, body })) => (key, header, body),
		other => panic!("expected a request, got {other:?}"),
	}
}

#[test]
fn a_sent_request_gets_its_updates_and_response_in_order_and_frees_its_id() {
	let mut c = connection(&config());
	let (count, waker) = waker();
	let (key, id) = c.open_request(7, body("hello")).unwrap();
	let sent = transmit(&mut c);
	assert_eq!(sent.len(), 1);
	assert_eq!(sent[0].header, MessageHeader::new(MessageType::Request, id, 7));
	assert_eq!(sent[0].body, "hello");

	assert!(c.poll_recv_sent(key, &waker).is_pending());
	c.recv(Message::responder_update(id, 7, body("50%"))).unwrap();
	assert_eq!(woken(&count), 1, "the waiting handle is woken");
	c.recv(Message::response(id, 7, body("done"))).unwrap();
	// The id is free as soon as the response is read: a late update is dropped quietly.
	c.recv(Message::responder_update(id, 7, body("late"))).unwrap();
	let Poll::Ready(Ok(update)) = c.poll_recv_sent(key, &waker) else { panic!() };
	assert_eq!(update.body, "50%");
	let Poll::Ready(Ok(response)) = c.poll_recv_sent(key, &waker) else { panic!() };
	assert_eq!(response.header.message_type, MessageType::Response);
	// Nothing more will come: the request is closed, not pending.
	assert!(matches!(c.poll_recv_sent(key, &waker), Poll::Ready(Err(_))));
	c.drop_part(key, true);
	assert!(c.is_idle());
	assert_eq!(c.links(), 1);
}

#[test]
fn a_received_request_dropped_unanswered_is_answered_once_with_an_error() {
	let mut c = connection(&config());
	let (_, waker) = waker();
	c.recv(Message::request(9, 3, body("job"))).unwrap();
	let (key, header, request_body) = recv_request(&mut c, &waker);
	assert_eq!((header.request_id, header.service_id, &request_body[..]), (9, 3, &b"job"[..]));
	assert_eq!(c.unanswered(), 1);
	let write = c.links();
	c.add_part(key);
	// The reading part goes first: the request stays open for the write part.
	c.drop_part(key, true);
	assert!(transmit(&mut c).is_empty());
	c.drop_part(key, false);
	assert_eq!(c.links(), write - 1);
	let sent = transmit(&mut c);
	assert_eq!(sent.len(), 1);
	assert!(sent[0].is_error_response());
	assert_eq!(sent[0].error_text().unwrap(), crate::handle::DROPPED_REQUEST_TEXT);
	assert_eq!(c.unanswered(), 0);
	// The id may be used again by the remote.
	c.recv(Message::request(9, 3, body("again"))).unwrap();
	assert_eq!(recv_request(&mut c, &waker).1.request_id, 9);
}

#[test]
fn answering_frees_the_id_drops_queued_updates_and_refuses_a_second_answer() {
	let mut c = connection(&config());
	let (count, waker) = waker();
	c.recv(Message::request(1, 3, body("job"))).unwrap();
	let (key, ..) = recv_request(&mut c, &waker);
	c.recv(Message::requester_update(1, 3, body("more"))).unwrap();
	c.send_responder_update(key, 3, body("working")).unwrap();
	c.send_response(key, 3, body("ok")).unwrap();
	assert!(matches!(c.poll_recv_received(key, &waker), Poll::Ready(Ok(None))), "updates are dropped");
	let Err(Refused::Failed(error)) = c.send_response(key, 3, body("twice")) else { panic!() };
	assert_eq!(error.kind(), ErrorKind::RequestClosed);
	let sent = transmit(&mut c);
	let types: Vec<_> = sent.iter().map(|message| message.header.message_type).collect();
	assert_eq!(types, [MessageType::ResponderUpdate, MessageType::Response]);
	// An update that arrives after the answer is dropped, not queued.
	c.recv(Message::requester_update(1, 3, body("late"))).unwrap();
	c.drop_part(key, true);
	assert!(transmit(&mut c).is_empty(), "no automatic reply after a response");
	assert!(c.is_idle());
	let _ = woken(&count);
}

#[test]
fn duplicate_ids_and_limits_get_automatic_replies_and_reading_goes_on() {
	let config = Config { max_open_requests: 3, ..config() };
	let mut c = connection(&config);
	c.recv(Message::request(1, 3, Bytes::new())).unwrap();
	c.recv(Message::request(1, 3, Bytes::new())).unwrap();
	c.recv(Message::request(2, 3, Bytes::new())).unwrap();
	// The incoming queue (2) is full: the next request waits for the read handle.
	let blocked = c.recv(Message::request(3, 3, Bytes::new())).unwrap_err();
	let sent = transmit(&mut c);
	assert_eq!(sent.len(), 1);
	assert_eq!(sent[0].error_text().unwrap(), ProtocolViolation::DuplicateRequestId { request_id: 1 }.to_string());
	let (_, waker) = waker();
	let (key, ..) = recv_request(&mut c, &waker);
	c.recv(blocked).unwrap();
	// Three requests are open: the fourth is refused.
	c.recv(Message::request(4, 3, Bytes::new())).unwrap();
	let sent = transmit(&mut c);
	assert_eq!(sent[0].header.request_id, 4);
	assert_eq!(sent[0].error_text().unwrap(), "too many open requests");
	c.send_response(key, 3, Bytes::new()).unwrap();
	recv_request(&mut c, &waker);
	c.recv(Message::request(4, 3, Bytes::new())).unwrap();
	assert_eq!(c.unanswered(), 3);
}

#[test]
fn requests_past_the_unanswered_budget_are_refused_as_busy() {
	let config = Config { max_unanswered_incoming: 300, ..config() };
	let mut c = connection(&config);
	let (_, waker) = waker();
	c.recv(Message::request(1, 3, Bytes::from(vec![0; 200]))).unwrap();
	let (key, ..) = recv_request(&mut c, &waker);
	c.recv(Message::request(2, 3, Bytes::from(vec![0; 200]))).unwrap();
	let sent = transmit(&mut c);
	assert_eq!(sent[0].error_text().unwrap(), crate::handle::BUSY_TEXT);
	c.send_response(key, 3, Bytes::new()).unwrap();
	c.recv(Message::request(2, 3, Bytes::from(vec![0; 200]))).unwrap();
	assert_eq!(c.unanswered(), 1);
}

#[test]
fn a_full_incoming_budget_blocks_the_driver_until_a_handle_takes_something() {
	let config = Config { max_buffered_incoming: 300, incoming_queue: 100, ..config() };
	let mut c = connection(&config);
	let (driver, driver_waker) = waker();
	c.recv(Message::stream(0, 1, Bytes::from(vec![0; 200]))).unwrap();
	let blocked = c.recv(Message::stream(0, 1, Bytes::from(vec![0; 200]))).unwrap_err();
	c.park_driver(&driver_waker, false);
	let (_, waker) = waker();
	assert!(matches!(c.poll_recv_incoming(&waker), Poll::Ready(Ok(Incoming::Stream(_)))));
	assert_eq!(woken(&driver), 1);
	c.recv(blocked).unwrap();
	// A message larger than the whole budget goes alone.
	assert!(matches!(c.poll_recv_incoming(&waker), Poll::Ready(Ok(Incoming::Stream(_)))));
	c.recv(Message::stream(0, 1, Bytes::from(vec![0; 5000]))).unwrap();
	assert!(c.recv(Message::stream(0, 1, Bytes::new())).is_err());
}

#[test]
fn a_full_request_queue_blocks_only_until_its_handle_reads() {
	let mut c = connection(&config());
	let (_, waker) = waker();
	let (key, id) = c.open_request(1, Bytes::new()).unwrap();
	for _ in 0..2 {
		c.recv(Message::responder_update(id, 1, Bytes::new())).unwrap();
	}
	let blocked = c.recv(Message::response(id, 1, Bytes::new())).unwrap_err();
	assert!(c.poll_recv_sent(key, &waker).is_ready());
	c.recv(blocked).unwrap();
}

#[test]
fn the_write_queue_is_bounded_in_messages_and_bytes() {
	let config = Config { write_queue: 2, max_buffered_outgoing: 1000, ..config() };
	let mut c = connection(&config);
	c.send_stream(1, Bytes::new()).unwrap();
	c.send_stream(1, Bytes::new()).unwrap();
	assert!(matches!(c.send_stream(1, body("x")), Err(Refused::Full(b)) if b == "x"));
	assert!(c.room_wanted);
	transmit(&mut c);
	c.send_stream(1, Bytes::from(vec![0; 800])).unwrap();
	// 864 of 1000 bytes are held until flushed.
	assert!(matches!(c.send_stream(1, Bytes::from(vec![0; 100])), Err(Refused::Full(_))));
	let target = c.flush_target().unwrap();
	assert!(c.poll_flushed(target).is_pending());
	transmit(&mut c);
	assert!(c.poll_flushed(target).is_ready());
	// A body larger than the whole budget goes alone.
	c.send_stream(1, Bytes::from(vec![0; 5000])).unwrap();
	assert!(matches!(c.send_stream(1, Bytes::new()), Err(Refused::Full(_))));
}

#[test]
fn the_remote_finishing_fails_sent_requests_but_received_ones_can_still_be_answered() {
	let mut c = connection(&config());
	let (count, waker) = waker();
	let (sent_key, _) = c.open_request(1, Bytes::new()).unwrap();
	c.recv(Message::request(5, 2, Bytes::new())).unwrap();
	c.recv(Message::stream(0, 2, body("last"))).unwrap();
	let (key, ..) = recv_request(&mut c, &waker);
	assert!(c.poll_recv_sent(sent_key, &waker).is_pending());
	assert!(c.poll_recv_received(key, &waker).is_pending());
	c.remote_done();
	assert!(woken(&count) >= 2);
	let Poll::Ready(Err(error)) = c.poll_recv_sent(sent_key, &waker) else { panic!() };
	assert!(error.is_closed_by_remote());
	assert!(matches!(c.poll_recv_received(key, &waker), Poll::Ready(Err(_))));
	// What was received before the end is still delivered, then the end.
	assert!(matches!(c.poll_recv_incoming(&waker), Poll::Ready(Ok(Incoming::Stream(_)))));
	assert!(matches!(c.poll_recv_incoming(&waker), Poll::Ready(Err(_))));
	assert!(matches!(c.open_request(1, Bytes::new()), Err(Refused::Failed(_))));
	assert_eq!(c.unanswered(), 1);
	c.send_response(key, 2, body("answer")).unwrap();
	assert_eq!(c.unanswered(), 0);
	assert_eq!(transmit(&mut c).last().unwrap().body, "answer");
}

#[test]
fn the_end_fails_everything_with_its_reason_and_drops_the_write_queue() {
	let mut c = connection(&config());
	let (_, waker) = waker();
	let (key, _) = c.open_request(1, Bytes::new()).unwrap();
	let target = c.flush_target().unwrap();
	c.end(Error::closed_by(Error::timeout(std::time::Duration::from_secs(1))));
	let Poll::Ready(Err(error)) = c.poll_recv_sent(key, &waker) else { panic!() };
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	assert!(matches!(c.poll_flushed(target), Poll::Ready(Err(_))));
	assert!(matches!(c.send_stream(1, Bytes::new()), Err(Refused::Failed(_))));
	assert!(transmit(&mut c).is_empty());
	// Handles still let go of their parts after the end.
	c.drop_part(key, true);
	assert_eq!(c.links(), 1);
}

#[test]
fn a_dropped_read_handle_answers_queued_and_new_requests_and_drops_streams() {
	let mut c = connection(&config());
	c.recv(Message::request(1, 1, Bytes::new())).unwrap();
	c.recv(Message::stream(0, 1, Bytes::new())).unwrap();
	c.drop_reader();
	c.recv(Message::request(2, 1, Bytes::new())).unwrap();
	c.recv(Message::stream(0, 1, Bytes::new())).unwrap();
	let sent = transmit(&mut c);
	let ids: Vec<_> = sent.iter().map(|message| message.header.request_id).collect();
	assert_eq!(ids, [1, 2]);
	assert!(sent.iter().all(Message::is_error_response));
	assert!(c.is_idle());
}

#[test]
fn automatic_replies_stop_reading_until_flushed() {
	let config = Config { max_open_requests: 1, ..config() };
	let mut c = connection(&config);
	c.recv(Message::request(0, 1, Bytes::new())).unwrap();
	for id in 1..=MAX_AUTO_REPLIES as u32 {
		assert!(!c.too_many_auto_replies());
		c.recv(Message::request(id, 1, Bytes::new())).unwrap();
	}
	assert!(c.too_many_auto_replies());
	assert_eq!(transmit(&mut c).len(), MAX_AUTO_REPLIES);
	assert!(!c.too_many_auto_replies());
}

#[test]
fn a_local_close_refuses_new_sends_and_keeps_what_is_queued() {
	let mut c = connection(&config());
	let (driver, driver_waker) = waker();
	c.send_stream(1, body("before")).unwrap();
	c.park_driver(&driver_waker, false);
	c.request_close();
	assert_eq!(woken(&driver), 1);
	assert!(c.is_closing());
	let Err(Refused::Failed(error)) = c.send_stream(1, body("after")) else { panic!() };
	assert!(error.is_closed_locally());
	assert_eq!(transmit(&mut c)[0].body, "before");
}

#[test]
fn ids_of_sent_requests_are_unique_while_open() {
	let mut c = connection(&config());
	let mut open = Vec::new();
	for _ in 0..4 {
		let (key, id) = c.open_request(1, Bytes::new()).unwrap();
		assert!(open.iter().all(|&(_, other)| other != id));
		open.push((key, id));
		transmit(&mut c);
	}
	let Err(Refused::Failed(error)) = c.open_request(1, Bytes::new()) else { panic!() };
	assert_eq!(error.kind(), ErrorKind::TooManyRequests);
	let (key, id) = open.remove(1);
	c.drop_part(key, true);
	// A late response for the forgotten request is dropped, and the new request gets another id.
	c.recv(Message::response(id, 1, Bytes::new())).unwrap();
	let (_, new_id) = c.open_request(1, Bytes::new()).unwrap();
	assert_ne!(new_id, id);
}

#[test]
fn held_wakeups_wake_the_driver_once_when_released() {
	let mut c = connection(&config());
	let (driver, driver_waker) = waker();
	c.park_driver(&driver_waker, true);
	c.hold_wakeups();
	c.hold_wakeups();
	for _ in 0..3 {
		c.send_stream(1, Bytes::new()).unwrap();
	}
	c.release_wakeups();
	assert_eq!(woken(&driver), 0, "one hold is still taken");
	c.release_wakeups();
	assert_eq!(woken(&driver), 1);
	assert_eq!(transmit(&mut c).len(), 3);
	// Nothing queued while held: releasing wakes nobody.
	c.park_driver(&driver_waker, true);
	c.hold_wakeups();
	c.release_wakeups();
	assert_eq!(woken(&driver), 1);
	// Without a hold, each message queued while the driver sleeps wakes it, as before.
	c.send_stream(1, Bytes::new()).unwrap();
	assert_eq!(woken(&driver), 2);
}

#[test]
fn reading_ahead_takes_the_stream_messages_before_the_next_request_and_frees_their_budget() {
	let config = Config { max_buffered_incoming: 100_000, incoming_queue: 1000, request_queue: 10, ..config() };
	let mut c = connection(&config);
	let (_, waker) = waker();
	for i in 0..3u8 {
		c.recv(Message::stream(0, 1, Bytes::from(vec![i; 10]))).unwrap();
	}
	c.recv(Message::request(5, 2, body("ask"))).unwrap();
	c.recv(Message::stream(0, 1, body("after"))).unwrap();
	let before = c.buffered;
	let mut ahead = VecDeque::new();
	let Poll::Ready(Ok(Incoming::Stream(first))) = c.poll_recv_incoming_ahead(&waker, &mut ahead) else { panic!() };
	assert_eq!(&first.body[..], &[0; 10]);
	// The two behind it, not the request nor what follows it.
	let bodies: Vec<_> = ahead.drain(..).map(|message| message.body).collect();
	assert_eq!(bodies, [Bytes::from(vec![1; 10]), Bytes::from(vec![2; 10])]);
	// Their budget is given back as if taken one by one.
	assert_eq!(before - c.buffered, 3 * cost(10, config.max_buffered_incoming));
	assert!(matches!(c.poll_recv_incoming_ahead(&waker, &mut ahead), Poll::Ready(Ok(Incoming::Request { .. }))));
	assert!(ahead.is_empty(), "nothing read ahead behind a request");
	let Poll::Ready(Ok(Incoming::Stream(last))) = c.poll_recv_incoming_ahead(&waker, &mut ahead) else { panic!() };
	assert_eq!(&last.body[..], b"after");
	c.check_invariants().unwrap();
}

#[test]
fn reading_ahead_stops_at_its_byte_and_message_limits() {
	let config = Config { max_buffered_incoming: 10 << 20, incoming_queue: 1000, ..config() };
	let mut c = connection(&config);
	let (_, waker) = waker();
	let mut ahead = VecDeque::new();
	// Small messages: the message limit.
	for _ in 0..READ_AHEAD_MESSAGES + 10 {
		c.recv(Message::stream(0, 1, body("x"))).unwrap();
	}
	assert!(matches!(c.poll_recv_incoming_ahead(&waker, &mut ahead), Poll::Ready(Ok(Incoming::Stream(_)))));
	assert_eq!(ahead.len(), READ_AHEAD_MESSAGES);
	ahead.clear();
	while let Poll::Ready(Ok(_)) = c.poll_recv_incoming(&waker) {}
	// Large messages: the byte limit, but the first always comes.
	let large = READ_AHEAD_BYTES / 3;
	for _ in 0..5 {
		c.recv(Message::stream(0, 1, Bytes::from(vec![0; large]))).unwrap();
	}
	assert!(matches!(c.poll_recv_incoming_ahead(&waker, &mut ahead), Poll::Ready(Ok(Incoming::Stream(_)))));
	// The first (returned) and two more make 3 × a third of the limit; a fourth would pass it.
	assert_eq!(ahead.len(), 2);
	ahead.clear();
	// A message over the limit on its own still comes, with nothing ahead of it.
	c.recv(Message::stream(0, 1, Bytes::from(vec![0; READ_AHEAD_BYTES + 1]))).unwrap();
	while let Poll::Ready(Ok(Incoming::Stream(message))) = c.poll_recv_incoming_ahead(&waker, &mut ahead) {
		if message.body.len() > READ_AHEAD_BYTES {
			break;
		}
		ahead.clear();
	}
	assert!(ahead.is_empty());
	c.check_invariants().unwrap();
}
