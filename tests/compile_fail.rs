//! Mistakes in `interface!` declarations fail the build with messages in the declaration's
//! terms: duplicate ids (naming both declarations), a missing `;`, a parameter list instead of
//! one type, a misspelled update block. Each case in `tests/ui/` is compiled on its own and its
//! errors compared with the `.stderr` file beside it (`TRYBUILD=overwrite` writes them anew).

#![cfg(feature = "json")]

#[test]
fn interface_mistakes_are_compile_errors() {
	trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
