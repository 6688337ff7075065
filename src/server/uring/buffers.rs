//! The ring of provided buffers a thread's receives pick from
//! (`IORING_REGISTER_PBUF_RING`, Linux 5.19): the kernel takes a buffer
//! when data arrives, not when the receive is armed, so a connection
//! waiting for input holds no memory.

use std::{
    io,
    ptr::NonNull,
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::{types::BufRingEntry, IoUring};

/// Bytes per buffer: one page, so a small message does not pin much.
pub const BUF_SIZE: usize = 4096;
/// Buffers per thread (8 MiB, touched only as they are used).
const BUF_COUNT: u16 = 2048;

pub struct Buffers {
    /// `BUF_COUNT` ring entries, page-aligned (mmap), shared with the kernel.
    ring: NonNull<BufRingEntry>,
    ring_len: usize,
    memory: Box<[u8]>,
    /// Our tail; published to the kernel by [`publish`](Self::publish).
    tail: u16,
    published: u16,
}

impl Buffers {
    /// The buffer group every receive names.
    pub const GROUP: u16 = 0;

    pub fn new() -> io::Result<Buffers> {
        let ring_len = std::mem::size_of::<BufRingEntry>() * usize::from(BUF_COUNT);
        // SAFETY: an anonymous private mapping; checked for failure below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = NonNull::new(ring.cast::<BufRingEntry>()).expect("mmap returned null");
        let mut buffers = Buffers {
            ring,
            ring_len,
            memory: vec![0u8; BUF_SIZE * usize::from(BUF_COUNT)].into_boxed_slice(),
            tail: 0,
            published: 0,
        };
        for bid in 0..BUF_COUNT {
            buffers.give_back(bid);
        }
        Ok(buffers)
    }

    /// Registers the ring with `uring` and hands it every buffer.
    pub fn register(&self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory stays mapped (and the buffers allocated)
        // as long as `self`, which the thread's `Ring` keeps next to the
        // io_uring it is registered with.
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                BUF_COUNT,
                Self::GROUP,
                0,
            )?;
        }
        self.store_tail();
        Ok(())
    }

    /// The bytes of buffer `bid`.
    pub fn get(&self, bid: u16) -> &[u8] {
        let start = usize::from(bid) * BUF_SIZE;
        &self.memory[start..start + BUF_SIZE]
    }

    /// Puts buffer `bid` back in the ring (visible to the kernel at the
    /// next [`publish`](Self::publish)).
    pub fn give_back(&mut self, bid: u16) {
        debug_assert!(bid < BUF_COUNT);
        let index = usize::from(self.tail & (BUF_COUNT - 1));
        let addr = self.memory.as_ptr() as u64 + (usize::from(bid) * BUF_SIZE) as u64;
        // SAFETY: `index` < BUF_COUNT entries of the mapping; the kernel
        // reads only entries before the published tail, and this one is
        // after it.
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    pub fn publish(&mut self) {
        if self.published != self.tail {
            self.store_tail();
            self.published = self.tail;
        }
    }

    fn store_tail(&self) {
        // SAFETY: the tail field overlays the first entry's last 16 bits,
        // inside the mapping; the kernel reads it with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the io_uring it was registered
        // with is dropped first (field order in `Ring`).
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_len);
        }
    }
}
