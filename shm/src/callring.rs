//! [`CallRing`]: a request/response channel in shared memory for latency-critical
//! small operations.
//!
//! Requests go through a bounded lock-free MPMC queue (Vyukov's design: one sequence
//! number per slot), so any number of client threads can submit concurrently. Each call
//! owns a response slot; the server writes the answer there and flips the slot's state.
//! Waiting is spin-then-futex on both sides, and a side only makes the `futex_wake`
//! syscall when the other side announced it is asleep: while both poll, a call costs no
//! system call at all.
//!
//! Of the threads serving one ring, at most one polls at a time; the others sleep on
//! the doorbell and a caller wakes one only when none polls (and a thread that takes
//! a request while more wait wakes one for them). On a two-core machine a second
//! poller would take the core the caller's copy needs. The poller keeps polling
//! longer while calls come in a run ([`RUN_SPIN`]) and yields the core now and then,
//! so a thread woken on it (the caller's copy helper) runs at once: waking a thread
//! on an idle core of a virtual machine costs tens of microseconds.
//!
//! The layout is read from a header the creator wrote; [`CallRing::attach`] validates
//! it against the region length, and every length and index read from shared memory is
//! checked before use, so a corrupt or hostile peer cannot make this side read or
//! write outside the region.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::thread::futex;

use crate::error::ShmError;
use crate::region::{Region, RegionOptions};

/// Changes with the meaning of the header words (version 2: counts of polling
/// and sleeping server threads), so peers of different builds refuse each other.
const MAGIC: u64 = 0x4d43_5249_4e47_0002;

/// How long the polling server thread polls after a call when calls come in a
/// run (the last two no further apart than this), before it sleeps.
pub const RUN_SPIN: Duration = Duration::from_micros(300);

/// Polling rounds (64 pauses each, about a microsecond) between yields of the core.
const ROUNDS_PER_YIELD: u32 = 4;
const LINE: usize = 64;
const HEADER_BYTES: usize = 4 * LINE;
const MAX_SLOT_SIZE: u32 = 1 << 20;
const MAX_SLOTS: u32 = 1 << 16;

const FREE: u32 = 0;
const PENDING: u32 = 1;
const READY: u32 = 2;
const SLEEPING: u32 = 3;
const ABANDONED: u32 = 4;

/// Shape of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingShape {
    /// Request slots (a power of two).
    pub slots: u32,
    /// Largest request in bytes.
    pub slot_size: u32,
    /// Response slots (concurrent calls).
    pub resp_slots: u32,
    /// Largest response in bytes.
    pub resp_size: u32,
}

impl Default for RingShape {
    fn default() -> Self {
        RingShape {
            slots: 256,
            slot_size: 4096,
            resp_slots: 256,
            resp_size: 4096,
        }
    }
}

impl RingShape {
    fn req_stride(&self) -> usize {
        (16 + self.slot_size as usize).next_multiple_of(LINE)
    }
    fn resp_stride(&self) -> usize {
        (8 + self.resp_size as usize).next_multiple_of(LINE)
    }
    fn resp_base(&self) -> usize {
        HEADER_BYTES + self.slots as usize * self.req_stride()
    }
    fn total(&self) -> usize {
        self.resp_base() + self.resp_slots as usize * self.resp_stride()
    }
    fn validate(&self) -> Result<(), ShmError> {
        if !self.slots.is_power_of_two() || self.slots > MAX_SLOTS {
            return Err(ShmError::BadHeader("slot count"));
        }
        if self.resp_slots == 0 || self.resp_slots > MAX_SLOTS {
            return Err(ShmError::BadHeader("response slot count"));
        }
        if self.slot_size == 0
            || self.slot_size > MAX_SLOT_SIZE
            || self.resp_size == 0
            || self.resp_size > MAX_SLOT_SIZE
        {
            return Err(ShmError::BadHeader("slot size"));
        }
        Ok(())
    }
}

/// A ring laid out in a shared region. Cheap to clone.
#[derive(Clone)]
pub struct CallRing {
    region: Arc<Region>,
    shape: RingShape,
}

impl CallRing {
    /// Creates a ring in a fresh memfd region (pass `region().fd()` to the peer).
    pub fn create(shape: RingShape) -> Result<CallRing, ShmError> {
        shape.validate()?;
        let region = Arc::new(Region::anonymous(
            "mooncake-callring",
            shape.total() as u64,
            &RegionOptions::default().with_prefault(true),
        )?);
        let mut header = [0u8; 24];
        header[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        header[8..12].copy_from_slice(&shape.slots.to_le_bytes());
        header[12..16].copy_from_slice(&shape.slot_size.to_le_bytes());
        header[16..20].copy_from_slice(&shape.resp_slots.to_le_bytes());
        header[20..24].copy_from_slice(&shape.resp_size.to_le_bytes());
        region.write(0, &header)?;
        let ring = CallRing { region, shape };
        for i in 0..shape.slots {
            ring.req_seq(i).store(u64::from(i), Ordering::Relaxed);
        }
        Ok(ring)
    }

    /// Attaches to a ring created by a peer, validating its header.
    pub fn attach(region: Arc<Region>) -> Result<CallRing, ShmError> {
        if region.len() < HEADER_BYTES {
            return Err(ShmError::BadHeader("region smaller than the header"));
        }
        let mut header = [0u8; 24];
        region.read(0, &mut header)?;
        let word =
            |r: std::ops::Range<usize>| u32::from_le_bytes(header[r].try_into().expect("4 bytes"));
        if u64::from_le_bytes(header[0..8].try_into().expect("8 bytes")) != MAGIC {
            return Err(ShmError::BadHeader("magic"));
        }
        let shape = RingShape {
            slots: word(8..12),
            slot_size: word(12..16),
            resp_slots: word(16..20),
            resp_size: word(20..24),
        };
        shape.validate()?;
        if shape.total() > region.len() {
            return Err(ShmError::BadHeader("layout larger than the region"));
        }
        Ok(CallRing { region, shape })
    }

    /// The shared region (its fd goes to the peer).
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// The ring's shape.
    pub fn shape(&self) -> RingShape {
        self.shape
    }

    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.region.len());
        // SAFETY: in bounds and 8-byte aligned (checked above; the mapping is page
        // aligned); the memory lives as long as `self.region`, which `&self` borrows;
        // every process touches these words only through atomics.
        unsafe { &*(self.region.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.region.len());
        // SAFETY: as for `atomic_u64`, with 4-byte alignment.
        unsafe { &*(self.region.as_ptr().add(offset) as *const AtomicU32) }
    }

    fn req_tail(&self) -> &AtomicU64 {
        self.atomic_u64(LINE)
    }
    fn req_head(&self) -> &AtomicU64 {
        self.atomic_u64(2 * LINE)
    }
    /// How many server threads sleep on the doorbell.
    fn servers_sleeping(&self) -> &AtomicU32 {
        self.atomic_u32(3 * LINE)
    }
    fn doorbell(&self) -> &AtomicU32 {
        self.atomic_u32(3 * LINE + 4)
    }
    /// How many server threads poll for requests (at most one, unless the peer
    /// wrote here: then the worst is a late answer for that peer's own calls,
    /// as sleeping threads look again every 100 ms).
    fn servers_polling(&self) -> &AtomicU32 {
        self.atomic_u32(3 * LINE + 8)
    }
    /// Whether a request waits in the queue.
    fn has_request(&self) -> bool {
        let mask = u64::from(self.shape.slots - 1);
        let pos = self.req_head().load(Ordering::Relaxed);
        let seq = self.req_seq((pos & mask) as u32).load(Ordering::Acquire);
        seq == pos + 1
    }
    /// Wakes one sleeping server thread when none polls and some sleep.
    fn wake_a_server(&self) {
        if self.servers_polling().load(Ordering::Relaxed) == 0
            && self.servers_sleeping().load(Ordering::Relaxed) > 0
        {
            self.doorbell().fetch_add(1, Ordering::Release);
            futex_wake(self.doorbell(), 1);
        }
    }
    fn req_slot(&self, i: u32) -> usize {
        HEADER_BYTES + i as usize * self.shape.req_stride()
    }
    fn req_seq(&self, i: u32) -> &AtomicU64 {
        self.atomic_u64(self.req_slot(i))
    }
    fn resp_slot(&self, i: u32) -> usize {
        self.shape.resp_base() + i as usize * self.shape.resp_stride()
    }
    fn resp_state(&self, i: u32) -> &AtomicU32 {
        self.atomic_u32(self.resp_slot(i))
    }

    /// The calling side.
    pub fn client(&self) -> CallRingClient {
        CallRingClient {
            ring: self.clone(),
            spin: Duration::from_micros(50),
            next_slot: AtomicU32::new(0),
        }
    }

    /// The serving side.
    pub fn server(&self) -> CallRingServer {
        CallRingServer {
            ring: self.clone(),
            spin: Duration::from_micros(50),
            last_request: None,
            in_a_run: false,
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = rustix::thread::futex::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // Shared (not private) futex: the word lives in memory mapped by two processes.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

fn futex_wake(word: &AtomicU32, threads: u32) {
    let _ = futex::wake(word, futex::Flags::empty(), threads);
}

/// Calls through a [`CallRing`]; usable from many threads at once.
pub struct CallRingClient {
    ring: CallRing,
    spin: Duration,
    next_slot: AtomicU32,
}

impl CallRingClient {
    /// How long to poll before sleeping on a futex.
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    fn take_resp_slot(&self) -> Option<u32> {
        let n = self.ring.shape.resp_slots;
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| (start.wrapping_add(i)) % n).find(|&i| {
            self.ring
                .resp_state(i)
                .compare_exchange(FREE, PENDING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }

    fn enqueue(&self, request: &[u8], resp: u32, deadline: Instant) -> Result<(), ShmError> {
        let ring = &self.ring;
        let mask = u64::from(ring.shape.slots - 1);
        let pos = loop {
            let pos = ring.req_tail().load(Ordering::Relaxed);
            let slot = (pos & mask) as u32;
            let seq = ring.req_seq(slot).load(Ordering::Acquire);
            let diff = seq as i64 - pos as i64;
            if diff == 0 {
                if ring
                    .req_tail()
                    .compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    break pos;
                }
            } else if diff < 0 {
                if Instant::now() > deadline {
                    return Err(ShmError::Full);
                }
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        };
        let slot = (pos & mask) as u32;
        let base = ring.req_slot(slot) as u64;
        let mut meta = [0u8; 8];
        meta[0..4].copy_from_slice(&(request.len() as u32).to_le_bytes());
        meta[4..8].copy_from_slice(&resp.to_le_bytes());
        ring.region.write(base + 8, &meta)?;
        ring.region.write(base + 16, request)?;
        ring.req_seq(slot).store(pos + 1, Ordering::Release);
        // Pairs with the server's fences between announcing it stopped polling (or
        // sleeps) and re-checking the queue: either it sees this request or this
        // side sees that no thread polls.
        fence(Ordering::SeqCst);
        ring.wake_a_server();
        Ok(())
    }

    /// Sends `request` and waits for the answer.
    pub fn call(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, ShmError> {
        self.call_while(request, timeout, &|| true)
    }

    /// Like [`call`](Self::call), but gives up early (with [`ShmError::Closed`]) once
    /// `alive` turns false — checked at least every 100 ms while waiting — so a dead
    /// server does not hold the caller until the timeout.
    pub fn call_while(
        &self,
        request: &[u8],
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<Vec<u8>, ShmError> {
        self.call_spinning(request, timeout, alive, self.spin, &|| true)
    }

    /// [`call_while`](Self::call_while), polling for the answer for `spin`
    /// (instead of the client's own) before sleeping, and only while
    /// `keep_spinning` says so (checked every few microseconds).
    pub fn call_spinning(
        &self,
        request: &[u8],
        timeout: Duration,
        alive: &dyn Fn() -> bool,
        spin: Duration,
        keep_spinning: &dyn Fn() -> bool,
    ) -> Result<Vec<u8>, ShmError> {
        let max = self.ring.shape.slot_size as usize;
        if request.len() > max {
            return Err(ShmError::TooLarge {
                len: request.len(),
                max,
            });
        }
        let deadline = Instant::now() + timeout;
        let resp = loop {
            if let Some(slot) = self.take_resp_slot() {
                break slot;
            }
            if Instant::now() > deadline {
                return Err(ShmError::Full);
            }
            std::thread::yield_now();
        };
        if let Err(e) = self.enqueue(request, resp, deadline) {
            self.ring.resp_state(resp).store(FREE, Ordering::Release);
            return Err(e);
        }
        let state = self.ring.resp_state(resp);
        let spin_until = Instant::now() + spin;
        let mut spins = 0u32;
        loop {
            if state.load(Ordering::Acquire) == READY {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                let now = Instant::now();
                if now >= spin_until || !keep_spinning() {
                    let gone = now >= deadline || !alive();
                    if gone {
                        // Give the slot to the server to free when (if) it answers.
                        if state
                            .compare_exchange(
                                PENDING,
                                ABANDONED,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                            || state
                                .compare_exchange(
                                    SLEEPING,
                                    ABANDONED,
                                    Ordering::AcqRel,
                                    Ordering::Acquire,
                                )
                                .is_ok()
                        {
                            return Err(if now >= deadline {
                                ShmError::Timeout
                            } else {
                                ShmError::Closed
                            });
                        }
                        continue;
                    }
                    let _ = state.compare_exchange(
                        PENDING,
                        SLEEPING,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    futex_wait(
                        state,
                        SLEEPING,
                        (deadline - now).min(Duration::from_millis(100)),
                    );
                }
            }
            std::hint::spin_loop();
        }
        let base = self.ring.resp_slot(resp) as u64;
        let mut len = [0u8; 4];
        self.ring.region.read(base + 4, &mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        let result = if len > self.ring.shape.resp_size as usize {
            Err(ShmError::BadHeader("response length"))
        } else {
            let mut out = vec![0u8; len];
            self.ring.region.read(base + 8, &mut out).map(|_| out)
        };
        state.store(FREE, Ordering::Release);
        result
    }
}

/// A request taken from the ring; answer it with [`CallRingServer::reply`].
#[derive(Debug)]
pub struct Request {
    /// Request bytes.
    pub data: Vec<u8>,
    /// Response slot to answer in.
    pub slot: u32,
}

/// Serves a [`CallRing`]; one per serving thread.
pub struct CallRingServer {
    ring: CallRing,
    spin: Duration,
    /// When this thread last took a request.
    last_request: Option<Instant>,
    /// Whether its last two requests came within [`RUN_SPIN`] of each other.
    in_a_run: bool,
}

impl CallRingServer {
    /// How long to poll before sleeping on a futex.
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Takes one request if there is one. `Err` means the peer wrote a corrupt slot; the
    /// request is dropped.
    pub fn try_recv(&self) -> Result<Option<Request>, ShmError> {
        let ring = &self.ring;
        let mask = u64::from(ring.shape.slots - 1);
        for _ in 0..1024 {
            let pos = ring.req_head().load(Ordering::Relaxed);
            let slot = (pos & mask) as u32;
            let seq = ring.req_seq(slot).load(Ordering::Acquire);
            let diff = seq as i64 - (pos + 1) as i64;
            if diff < 0 {
                return Ok(None);
            }
            if diff > 0 {
                std::hint::spin_loop();
                continue;
            }
            if ring
                .req_head()
                .compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let base = ring.req_slot(slot) as u64;
            let mut meta = [0u8; 8];
            ring.region.read(base + 8, &mut meta)?;
            let len = u32::from_le_bytes(meta[0..4].try_into().expect("4 bytes")) as usize;
            let resp = u32::from_le_bytes(meta[4..8].try_into().expect("4 bytes"));
            let result = if len > ring.shape.slot_size as usize || resp >= ring.shape.resp_slots {
                Err(ShmError::BadHeader("request slot"))
            } else {
                let mut data = vec![0u8; len];
                ring.region
                    .read(base + 16, &mut data)
                    .map(|_| Some(Request { data, slot: resp }))
            };
            ring.req_seq(slot).store(pos + mask + 1, Ordering::Release);
            return result;
        }
        Ok(None)
    }

    /// Waits up to `timeout` for a request: polls for the spin time (longer in a
    /// run of calls) when no other thread of this ring polls, then sleeps on the
    /// doorbell futex.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Request>, ShmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv()? {
                return Ok(Some(self.took(r)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let polling = self.ring.servers_polling();
            if polling
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let spin = if self.in_a_run { RUN_SPIN } else { self.spin };
                let got = self.poll(deadline.min(now + spin));
                polling.fetch_sub(1, Ordering::AcqRel);
                if let Some(r) = got? {
                    return Ok(Some(self.took(r)));
                }
                // Pairs with the caller's fence: a request it queued without a wake
                // (it saw this thread polling) is seen by the re-check below.
                fence(Ordering::SeqCst);
            }
            let bell = self.ring.doorbell().load(Ordering::Acquire);
            self.ring.servers_sleeping().fetch_add(1, Ordering::AcqRel);
            fence(Ordering::SeqCst);
            let got = match self.try_recv() {
                Ok(None) => {
                    futex_wait(
                        self.ring.doorbell(),
                        bell,
                        (deadline - now).min(Duration::from_millis(100)),
                    );
                    Ok(None)
                }
                other => other,
            };
            self.ring.servers_sleeping().fetch_sub(1, Ordering::AcqRel);
            if let Some(r) = got? {
                return Ok(Some(self.took(r)));
            }
        }
    }

    /// Polls until `until`, yielding the core now and then.
    fn poll(&self, until: Instant) -> Result<Option<Request>, ShmError> {
        let mut rounds = 0u32;
        loop {
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(ROUNDS_PER_YIELD) {
                std::thread::yield_now();
            }
            // A look at the queue every 8 pauses (~150 ns here): 64 pauses
            // without one put about a microsecond of waiting on every call.
            for i in 0..64 {
                if i % 8 == 7 && self.ring.has_request() {
                    break;
                }
                std::hint::spin_loop();
            }
        }
    }

    /// Notes a request taken: this thread is busy with it, so one that sleeps
    /// takes the next if one already waits.
    fn took(&mut self, request: Request) -> Request {
        let now = Instant::now();
        self.in_a_run = self
            .last_request
            .is_some_and(|last| now.duration_since(last) <= RUN_SPIN);
        self.last_request = Some(now);
        fence(Ordering::SeqCst);
        if self.ring.has_request() {
            self.ring.wake_a_server();
        }
        request
    }

    /// Answers a request.
    pub fn reply(&self, slot: u32, response: &[u8]) -> Result<(), ShmError> {
        let ring = &self.ring;
        if slot >= ring.shape.resp_slots {
            return Err(ShmError::BadHeader("response slot"));
        }
        let max = ring.shape.resp_size as usize;
        if response.len() > max {
            return Err(ShmError::TooLarge {
                len: response.len(),
                max,
            });
        }
        let base = ring.resp_slot(slot) as u64;
        ring.region
            .write(base + 4, &(response.len() as u32).to_le_bytes())?;
        ring.region.write(base + 8, response)?;
        let state = ring.resp_state(slot);
        match state.swap(READY, Ordering::AcqRel) {
            SLEEPING => futex_wake(state, 1),
            ABANDONED => state.store(FREE, Ordering::Release),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(shape: RingShape) -> (CallRing, CallRing) {
        let server = CallRing::create(shape).unwrap();
        // The client maps the same fd a second time, as another process would.
        let fd = server.region().fd().try_clone_to_owned().unwrap();
        let len = server.region().len() as u64;
        let region = Region::from_fd(fd, 0, len, &RegionOptions::default()).unwrap();
        (server, CallRing::attach(Arc::new(region)).unwrap())
    }

    /// Calls `msg` and checks the echo server's answer: the bytes reversed.
    fn assert_echoed(client: &CallRingClient, msg: String) {
        let got = client
            .call(msg.as_bytes(), Duration::from_secs(10))
            .unwrap();
        let mut expect = msg.into_bytes();
        expect.reverse();
        assert_eq!(got, expect);
    }

    fn echo_server(
        ring: CallRing,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<u64> {
        std::thread::spawn(move || {
            let mut server = ring.server();
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(req) = server.recv(Duration::from_millis(20)).unwrap() {
                    let mut out = req.data.clone();
                    out.reverse();
                    server.reply(req.slot, &out).unwrap();
                    served += 1;
                }
            }
            served
        })
    }

    #[test]
    fn calls_from_many_threads_get_their_own_answers() {
        let (server_side, client_side) = pair(RingShape {
            slots: 8,
            resp_slots: 16,
            ..Default::default()
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = echo_server(server_side, stop.clone());
        let client = Arc::new(client_side.client());
        std::thread::scope(|s| {
            for t in 0..6u32 {
                let client = client.clone();
                s.spawn(move || {
                    for i in 0..2000u32 {
                        assert_echoed(
                            &client,
                            format!("{t}:{i}:{}", "x".repeat((i % 100) as usize)),
                        );
                    }
                });
            }
        });
        stop.store(true, Ordering::Relaxed);
        assert_eq!(server.join().unwrap(), 12_000);
    }

    /// Two threads serve one ring, as the real client's do: while one is busy
    /// with a slow call, the other (polling or asleep) answers the next call. The
    /// slow call waits for the quick one, so a quick call stuck behind it would
    /// never come back.
    #[test]
    fn a_second_server_thread_answers_while_one_is_busy() {
        use std::sync::atomic::AtomicBool;
        let (server_side, client_side) = pair(RingShape::default());
        let stop = Arc::new(AtomicBool::new(false));
        let slow_taken = Arc::new(AtomicBool::new(false));
        let quick_done = Arc::new(AtomicBool::new(false));
        let servers: Vec<_> = (0..2)
            .map(|_| {
                let mut server = server_side.server();
                let (stop, slow_taken, quick_done) =
                    (stop.clone(), slow_taken.clone(), quick_done.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(req) = server.recv(Duration::from_millis(20)).unwrap() else {
                            continue;
                        };
                        let answer: &[u8] = if req.data == b"slow" {
                            slow_taken.store(true, Ordering::Release);
                            let until = Instant::now() + Duration::from_secs(10);
                            while !quick_done.load(Ordering::Acquire) && Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            if quick_done.load(Ordering::Acquire) {
                                b"slow-ok"
                            } else {
                                b"slow-gave-up"
                            }
                        } else {
                            b"quick-ok"
                        };
                        server.reply(req.slot, answer).unwrap();
                    }
                })
            })
            .collect();
        let client = Arc::new(client_side.client());
        for round in 0..20 {
            slow_taken.store(false, Ordering::Relaxed);
            quick_done.store(false, Ordering::Relaxed);
            // Now and then let both threads fall asleep first.
            if round % 2 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let slow = {
                let client = client.clone();
                std::thread::spawn(move || client.call(b"slow", Duration::from_secs(20)))
            };
            while !slow_taken.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            if round % 3 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let quick = client.call(b"quick", Duration::from_secs(5));
            quick_done.store(true, Ordering::Release);
            assert_eq!(quick.unwrap(), b"quick-ok", "round {round}");
            assert_eq!(slow.join().unwrap().unwrap(), b"slow-ok", "round {round}");
        }
        stop.store(true, Ordering::Relaxed);
        for s in servers {
            s.join().unwrap();
        }
    }

    /// Many callers, two serving threads, calls now in a burst and now after a
    /// pause (the threads sleep between): every call is answered, with its own
    /// answer.
    #[test]
    fn two_server_threads_answer_every_call() {
        let (server_side, client_side) = pair(RingShape {
            resp_slots: 16,
            ..Default::default()
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let servers = [
            echo_server(server_side.clone(), stop.clone()),
            echo_server(server_side, stop.clone()),
        ];
        let client = Arc::new(client_side.client());
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let client = client.clone();
                s.spawn(move || {
                    for i in 0..300u32 {
                        if i % 50 == 0 {
                            std::thread::sleep(Duration::from_millis(1 + u64::from(t)));
                        }
                        assert_echoed(&client, format!("{t}:{i}"));
                    }
                });
            }
        });
        stop.store(true, Ordering::Relaxed);
        let served: u64 = servers.into_iter().map(|s| s.join().unwrap()).sum();
        assert_eq!(served, 1200);
    }

    /// The counts of polling and sleeping server threads live in memory the
    /// peer can write. A peer that claims a thread polls (so its callers never
    /// wake one) or sets the counts to garbage only slows its own calls: the
    /// servers look at the queue again at least every 100 ms and answer.
    #[test]
    fn garbage_in_the_server_counts_delays_calls_but_loses_none() {
        let (server_side, client_side) = pair(RingShape::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let servers = [
            echo_server(server_side.clone(), stop.clone()),
            echo_server(server_side.clone(), stop.clone()),
        ];
        let client = client_side.client();
        for (polling, sleeping) in [(u32::MAX, 0), (1, 0), (0, u32::MAX), (7, 7)] {
            std::thread::sleep(Duration::from_millis(30)); // let the servers sleep
            client_side
                .servers_polling()
                .store(polling, Ordering::Relaxed);
            client_side
                .servers_sleeping()
                .store(sleeping, Ordering::Relaxed);
            for i in 0..5 {
                assert_echoed(&client, format!("{polling}:{sleeping}:{i}"));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let served: u64 = servers.into_iter().map(|s| s.join().unwrap()).sum();
        assert_eq!(served, 20);
    }

    #[test]
    fn sleeping_server_is_woken_and_timeouts_free_the_slot() {
        let (server_side, client_side) = pair(RingShape {
            resp_slots: 1,
            ..Default::default()
        });
        let client = client_side.client();
        // No server yet: the call times out and gives its slot back for later.
        assert!(matches!(
            client.call(b"lost", Duration::from_millis(50)),
            Err(ShmError::Timeout)
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = echo_server(server_side, stop.clone());
        std::thread::sleep(Duration::from_millis(100)); // let it fall asleep on the futex
        assert_eq!(client.call(b"abc", Duration::from_secs(5)).unwrap(), b"cba");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            server.join().unwrap(),
            2,
            "the abandoned request was still served"
        );
        assert!(matches!(
            client.call(&vec![0u8; 5000], Duration::from_secs(1)),
            Err(ShmError::TooLarge { .. })
        ));
    }

    #[test]
    fn corrupt_headers_are_refused() {
        let r = Arc::new(Region::anonymous("t", 8192, &RegionOptions::default()).unwrap());
        assert!(matches!(
            CallRing::attach(r.clone()),
            Err(ShmError::BadHeader("magic"))
        ));
        let mut header = [0u8; 24];
        header[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        header[8..12].copy_from_slice(&1024u32.to_le_bytes());
        header[12..16].copy_from_slice(&4096u32.to_le_bytes());
        header[16..20].copy_from_slice(&1u32.to_le_bytes());
        header[20..24].copy_from_slice(&64u32.to_le_bytes());
        r.write(0, &header).unwrap();
        assert!(
            matches!(CallRing::attach(r.clone()), Err(ShmError::BadHeader(_))),
            "layout beyond the region"
        );
        // A request slot claiming a huge length is dropped, not read out of bounds.
        let (server_side, client_side) = pair(RingShape {
            slots: 2,
            slot_size: 64,
            resp_slots: 2,
            resp_size: 64,
        });
        let client = client_side.client();
        let t = std::thread::spawn(move || client.call(b"hello", Duration::from_millis(200)));
        std::thread::sleep(Duration::from_millis(50));
        let base = server_side.req_slot(0) as u64;
        server_side
            .region()
            .write(base + 8, &u32::MAX.to_le_bytes())
            .unwrap();
        assert!(server_side.server().try_recv().is_err());
        assert!(t.join().unwrap().is_err());
    }
}
