//! The readiness loop: one thread owns every connection that is waiting (idle between
//! requests, parked on a long-poll, or draining before close), watches their sockets with
//! epoll/kqueue, enforces their deadlines, and hands a connection to a worker only when it
//! has something to do. Ten thousand waiting connections cost one thread and about a
//! kilobyte each.

use super::conn::{self, After, Conn, Gate, Pending, Serving, Ticket};
use super::handler::Handler;
use super::message::{Limits, Response};
use super::park::{Park, Subscriber, Wake};
use super::pool::Pool;
use super::readiness::{self, Readiness, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long a new connection may stay silent before a descriptor shortage may close it as
/// idle: its first request is taken to be in flight until then.
const SILENT_NEW: Duration = Duration::from_secs(2);

/// Something for the loop to take over.
pub(super) enum Msg {
    /// A connection waiting for its next (or first) request.
    Idle(Conn),
    /// A connection whose request is parked.
    Park(Conn, Park, Pending),
    /// A half-closed connection to drain, then close.
    Drain(TcpStream, Ticket),
    /// Out of descriptors: close the longest-idle keep-alive connection; answer whether one
    /// was closed.
    Evict(mpsc::Sender<bool>),
}

/// How other threads reach the loop.
pub(super) struct LoopHandle {
    tx: mpsc::Sender<Msg>,
    waker: Waker,
    wake_pending: Arc<AtomicBool>,
    /// Given to every notifier a request parks on; wakes the loop to look at parked requests.
    pub(super) subscriber: Arc<Subscriber>,
}

impl LoopHandle {
    /// Hands `msg` to the loop; false once the loop is gone (server stopping).
    pub(super) fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.waker.wake();
        }
        true
    }

    /// Asks the loop to close its longest-idle keep-alive connection.
    pub(super) fn evict_idle(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Evict(tx)) && rx.recv_timeout(Duration::from_secs(1)).unwrap_or(false)
    }

    /// Wakes the loop without a message (e.g. to notice a stop).
    pub(super) fn wake(&self) {
        self.waker.wake();
    }
}

/// Counts of waiting connections, for figures and tests.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) idle: AtomicUsize,
    pub(super) parked: AtomicUsize,
}

/// Everything the accept thread, the loop and the workers share.
pub(super) struct Shared {
    pub(super) limits: Limits,
    pub(super) handler: Arc<dyn Handler>,
    pub(super) gate: Gate,
    pub(super) pool: Pool,
    pub(super) handle: LoopHandle,
    pub(super) open: Arc<AtomicUsize>,
    pub(super) counts: Counts,
    pub(super) stop: AtomicBool,
}

impl Shared {
    fn serving(&self) -> Serving<'_> {
        Serving {
            limits: &self.limits,
            handler: &*self.handler,
            gate: &self.gate,
        }
    }

    fn route(&self, after: After) {
        // A failed send drops the connection: the server is stopping.
        let _ = match after {
            After::Idle(conn) => self.handle.send(Msg::Idle(conn)),
            After::Park(conn, park, pending) => self.handle.send(Msg::Park(conn, park, pending)),
            After::Drain(tcp, ticket) => self.handle.send(Msg::Drain(tcp, ticket)),
            After::Close => true,
        };
    }

    /// Serves a readable connection on a worker.
    fn dispatch_serve(self: &Arc<Self>, conn: Conn) {
        let shared = self.clone();
        self.pool.submit(move || {
            let after = conn::serve(conn, &shared.serving(), None::<(Response, Pending)>);
            shared.route(after);
        });
    }

    /// Resumes a parked request on a worker.
    fn dispatch_resume(self: &Arc<Self>, conn: Conn, park: Park, wake: Wake, pending: Pending) {
        let shared = self.clone();
        self.pool.submit(move || {
            let after = conn::resume(conn, park, wake, pending, &shared.serving());
            shared.route(after);
        });
    }
}

/// Builds the loop's channel and waker; `start` then runs it on its own thread.
pub(super) fn channel(
) -> std::io::Result<(LoopHandle, Readiness, mpsc::Receiver<Msg>, Arc<AtomicBool>)> {
    let (readiness, waker) = Readiness::new()?;
    let (tx, rx) = mpsc::channel();
    let notified = Arc::new(AtomicBool::new(false));
    let subscriber: Arc<Subscriber> = {
        let (notified, waker) = (notified.clone(), waker.clone());
        Arc::new(move || {
            notified.store(true, Ordering::SeqCst);
            waker.wake();
        })
    };
    let handle = LoopHandle {
        tx,
        waker,
        wake_pending: Arc::new(AtomicBool::new(false)),
        subscriber,
    };
    Ok((handle, readiness, rx, notified))
}

enum Entry {
    Idle {
        conn: Conn,
        since: Instant,
    },
    Parked {
        conn: Conn,
        park: Park,
        pending: Pending,
    },
    Drain {
        tcp: TcpStream,
        _ticket: Ticket,
        read: usize,
    },
}

impl Entry {
    fn socket(&self) -> &TcpStream {
        match self {
            Entry::Idle { conn, .. } | Entry::Parked { conn, .. } => conn.stream.tcp(),
            Entry::Drain { tcp, .. } => tcp,
        }
    }
}

#[derive(Default)]
struct Slot {
    generation: u64,
    entry: Option<Entry>,
}

/// The loop's state, owned by its thread.
pub(super) struct Loop {
    shared: Arc<Shared>,
    readiness: Readiness,
    rx: mpsc::Receiver<Msg>,
    notified: Arc<AtomicBool>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Loop {
    pub(super) fn new(
        shared: Arc<Shared>,
        readiness: Readiness,
        rx: mpsc::Receiver<Msg>,
        notified: Arc<AtomicBool>,
    ) -> Loop {
        Loop {
            shared,
            readiness,
            rx,
            notified,
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    fn insert(&mut self, entry: Entry, deadline: Instant) {
        let token = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            self.slots.len() - 1
        });
        if let Err(e) = self.readiness.watch(entry.socket(), token) {
            log::warn!("cannot watch a connection, closing it: {e}");
            self.free.push(token);
            return;
        }
        self.count(&entry, true);
        let slot = &mut self.slots[token];
        slot.generation += 1;
        slot.entry = Some(entry);
        self.deadlines
            .push(Reverse((deadline, token, slot.generation)));
    }

    fn remove(&mut self, token: usize) -> Option<Entry> {
        let entry = self.slots.get_mut(token)?.entry.take()?;
        self.readiness.unwatch(entry.socket(), token);
        self.free.push(token);
        self.count(&entry, false);
        Some(entry)
    }

    fn count(&self, entry: &Entry, added: bool) {
        let counter = match entry {
            Entry::Idle { .. } => &self.shared.counts.idle,
            Entry::Parked { .. } => &self.shared.counts.parked,
            Entry::Drain { .. } => return,
        };
        if added {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn take(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Idle(conn) => {
                let deadline = now + self.shared.limits.idle_timeout;
                self.insert(Entry::Idle { conn, since: now }, deadline);
            }
            Msg::Park(conn, park, pending) => {
                park.notifier.subscribe(&self.shared.handle.subscriber);
                if park.changed() {
                    self.shared
                        .dispatch_resume(conn, park, Wake::Changed, pending);
                } else {
                    let deadline = park.deadline;
                    self.insert(
                        Entry::Parked {
                            conn,
                            park,
                            pending,
                        },
                        deadline,
                    );
                }
            }
            Msg::Drain(tcp, ticket) => {
                let entry = Entry::Drain {
                    tcp,
                    _ticket: ticket,
                    read: 0,
                };
                self.insert(entry, now + conn::DRAIN_TIME);
            }
            Msg::Evict(reply) => {
                // Idle means between requests: answered (or silent since it connected for
                // longer than SILENT_NEW), with no unread bytes held and none waiting on its
                // socket. A new connection whose first request may be in flight never is.
                let now = Instant::now();
                let oldest = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(token, slot)| match &slot.entry {
                        Some(Entry::Idle { conn, since })
                            if (conn.answered_at.is_some()
                                || now.saturating_duration_since(*since) >= SILENT_NEW)
                                && conn.buf.is_empty()
                                && readiness::peer_closed(conn.stream.tcp()) != Some(false) =>
                        {
                            Some((*since, token))
                        }
                        _ => None,
                    })
                    .min();
                if let Some((_, token)) = oldest {
                    if let Some(Entry::Idle { mut conn, .. }) = self.remove(token) {
                        use super::transport::Transport;
                        conn.stream.close();
                    }
                }
                let _ = reply.send(oldest.is_some());
            }
        }
    }

    fn ready(&mut self, token: usize) {
        let Some(entry) = self.slots.get_mut(token).and_then(|s| s.entry.as_mut()) else {
            return;
        };
        match entry {
            Entry::Idle { .. } => {
                if let Some(Entry::Idle { conn, .. }) = self.remove(token) {
                    self.shared.dispatch_serve(conn);
                }
            }
            Entry::Parked { conn, .. } => {
                // Bytes pipelined behind a long-poll wait for its answer; a close ends it.
                if readiness::peer_closed(conn.stream.tcp()) == Some(true) {
                    self.remove(token);
                }
            }
            Entry::Drain { tcp, read, .. } => {
                if conn::drain(tcp, read) {
                    self.remove(token);
                }
            }
        }
    }

    fn wake_parked(&mut self) {
        let changed: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(token, slot)| match &slot.entry {
                Some(Entry::Parked { park, .. }) if park.changed() => Some(token),
                _ => None,
            })
            .collect();
        for token in changed {
            if let Some(Entry::Parked {
                conn,
                park,
                pending,
            }) = self.remove(token)
            {
                self.shared
                    .dispatch_resume(conn, park, Wake::Changed, pending);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, token, generation))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if self.slots[token].generation != generation {
                continue;
            }
            match self.remove(token) {
                Some(Entry::Idle { mut conn, .. }) => {
                    use super::transport::Transport;
                    conn.stream.close();
                }
                Some(Entry::Parked {
                    conn,
                    park,
                    pending,
                }) => {
                    self.shared
                        .dispatch_resume(conn, park, Wake::Deadline, pending);
                }
                Some(Entry::Drain { .. }) | None => {}
            }
        }
    }

    /// Runs until the server stops.
    pub(super) fn run(mut self) {
        let mut ready = Vec::with_capacity(1024);
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let timeout = self
                .deadlines
                .peek()
                .map(|Reverse((d, _, _))| d.saturating_duration_since(Instant::now()));
            ready.clear();
            if let Err(e) = self.readiness.wait(&mut ready, timeout) {
                log::error!("connection loop cannot wait for sockets: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            self.shared
                .handle
                .wake_pending
                .store(false, Ordering::SeqCst);
            while let Ok(msg) = self.rx.try_recv() {
                self.take(msg);
            }
            for &token in &ready {
                self.ready(token);
            }
            if self.notified.swap(false, Ordering::SeqCst) {
                self.wake_parked();
            }
            self.expire(Instant::now());
            // Stale deadline entries of reused slots would otherwise pile up.
            if self.deadlines.len() > 4 * self.slots.len() + 1024 {
                self.compact_deadlines();
            }
        }
    }

    fn compact_deadlines(&mut self) {
        let slots = &self.slots;
        let live: Vec<_> = self
            .deadlines
            .drain()
            .filter(|Reverse((_, token, generation))| {
                slots[*token].generation == *generation && slots[*token].entry.is_some()
            })
            .collect();
        self.deadlines = live.into();
    }
}
