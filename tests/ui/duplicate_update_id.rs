// Two responder updates of one service with the same id.
peerwire::interface! {
	pub mod arm (format = peerwire::typed::Json) {
		service 1 move_to(f64) -> f64 {
			responder_updates {
				1 progress(u8),
				1 arrived(()),
			}
		}
	}
}

fn main() {}
