#![no_main]
//! Fuzzes the lines framing: see common.rs.

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check(echod::Framing::Lines, data));
