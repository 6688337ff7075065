//! The UDP load: datagrams carrying sequence numbers, each reply matched
//! and checked byte for byte, each unanswered one counted lost.

use std::{
    io,
    rc::Rc,
    time::{Duration, Instant},
};

use super::{
    tally::{Tally, PATTERN_SPAN},
    Plan,
};
use crate::client::rng;

/// Bytes of a UDP bench datagram before its pattern bytes: the sequence number.
pub const UDP_HEADER: usize = 8;

/// One UDP socket's load: up to K datagrams in flight, each carrying its
/// sequence number; a reply is matched by it and checked byte for byte; a
/// datagram unanswered for the loss timeout is counted lost.
pub struct UdpDriver {
    socket: tokio::net::UdpSocket,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
    size: usize,
    pipeline: usize,
    loss_timeout: Duration,
    salt: u64,
    next_seq: u64,
    in_flight: std::collections::VecDeque<(u64, Instant)>,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// No reply has come back yet (time to first echo).
    first_pending: bool,
}

impl UdpDriver {
    pub fn new(
        socket: tokio::net::UdpSocket,
        plan: &Plan,
        pattern: Rc<Vec<u8>>,
        tally: Rc<Tally>,
        index: usize,
    ) -> UdpDriver {
        UdpDriver {
            socket,
            pattern,
            tally,
            size: plan.size,
            pipeline: plan.pipeline,
            loss_timeout: plan.loss_timeout,
            salt: rng::seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            next_seq: 0,
            in_flight: std::collections::VecDeque::with_capacity(plan.pipeline),
            out: Vec::with_capacity(plan.size),
            buf: vec![0; crate::addr::UDP_RECEIVE_BUFFER],
            first_pending: true,
        }
    }

    /// The datagram for `seq`: its number, then pattern bytes that depend on it.
    fn datagram(&self, seq: u64, into: &mut Vec<u8>) {
        let mut state = (seq ^ self.salt) | 1;
        let offset = (rng::next(&mut state) % PATTERN_SPAN as u64) as usize;
        into.clear();
        into.extend_from_slice(&seq.to_be_bytes());
        into.extend_from_slice(&self.pattern[offset..offset + self.size - UDP_HEADER]);
    }

    pub async fn run(mut self) {
        let _open = super::tally::Open::new(&self.tally);
        if let Err(error) = self.drive().await {
            self.tally.error(error);
        }
    }

    async fn drive(&mut self) -> Result<(), String> {
        let failed = |error: io::Error| format!("udp socket failed: {error}");
        let mut expected = Vec::with_capacity(self.size);
        loop {
            let mut blocked = false;
            while self.in_flight.len() < self.pipeline {
                let mut out = std::mem::take(&mut self.out);
                self.datagram(self.next_seq, &mut out);
                let now = Instant::now();
                let sent = self.socket.try_send(&out);
                self.out = out;
                match sent {
                    Ok(_) => {
                        self.in_flight.push_back((self.next_seq, now));
                        self.next_seq += 1;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(error) => return Err(failed(error)),
                }
            }
            let oldest = self
                .in_flight
                .front()
                .map(|&(_, sent)| sent + self.loss_timeout);
            tokio::select! {
                received = self.socket.recv(&mut self.buf) => {
                    let len = received.map_err(failed)?;
                    let now = Instant::now();
                    let Some(seq) = self.buf.get(..UDP_HEADER).map(|b| u64::from_be_bytes(b.try_into().unwrap())) else {
                        self.tally.mismatches.set(self.tally.mismatches.get() + 1);
                        continue;
                    };
                    // A reply to a datagram already counted lost is ignored.
                    let Some(position) = self.in_flight.iter().position(|&(s, _)| s == seq) else { continue };
                    let (_, sent_at) = self.in_flight.remove(position).expect("position is in range");
                    self.datagram(seq, &mut expected);
                    if self.buf[..len] != expected[..] {
                        self.tally.mismatches.set(self.tally.mismatches.get() + 1);
                    }
                    if std::mem::take(&mut self.first_pending) {
                        self.tally.first_echo(sent_at, now);
                    }
                    self.tally.completed(sent_at, now);
                }
                () = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now).into()), if oldest.is_some() => {
                    let now = Instant::now();
                    while self.in_flight.front().is_some_and(|&(_, sent)| sent + self.loss_timeout <= now) {
                        self.in_flight.pop_front();
                        self.tally.lost.set(self.tally.lost.get() + 1);
                    }
                }
                ready = self.socket.writable(), if blocked => { ready.map_err(failed)?; }
            }
        }
    }
}
