#![no_main]
//! Fuzzes the raw framing: see common.rs.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check(echod::Framing::Raw, data));
