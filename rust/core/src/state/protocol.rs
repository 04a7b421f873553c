// SPDX-License-Identifier: GPL-2.0
//! Replication protocols A/B/C: when a mirrored write may be completed to the upper layer.
//!
//! One [`Request`] tracks one write, driven by named events ([`Event`], like DRBD's
//! `enum drbd_req_event`) through one transition function, [`Request::event`]. The
//! function is pure: it changes only the request and says, in an [`Outcome`], whether the
//! bio must be completed now (and with which [`Status`]) and whether the written range must
//! be marked out of sync in the fracture bitmap. The caller does both outside its lock.
//!
//! ```text
//!   local half:  Pending --LocalDone--> Done
//!                        \-LocalFailed-> Failed
//!   net half:    Pending --Sent--> Sent --AckReceived--> Received --AckDurable--> Durable
//!                   \          \              \-------------------------------/
//!                    \----------\--- NegAck / ConnectionLost ---> Failed
//! ```
//!
//! A write completes once its local half is finished and its net half has reached the level
//! the protocol asks for (A: `Sent`, B: `Received`, C: `Durable`) or has failed. The status is
//! `Ok` if either copy is good: the local write succeeded (unless the request was created
//! with [`Request::new_remote_only`] because the local disk is a sync target), or the peer
//! reached that level.
//! Whatever the protocol, the range is marked out of sync when the peer is known not to hold
//! the data durably (`NegAck`, or `ConnectionLost` before `AckDurable`), or when the local
//! write failed. A request may be freed ([`Request::is_finished`]) once it is completed and
//! both halves are final: under A and B it stays in the transfer log until `AckDurable`
//! (DRBD's barrier ack), so a later connection loss still marks its range.

/// Replication protocol of a connection (DRBD's `wire_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Asynchronous: complete when the local write is done and the data is sent.
    A,
    /// Semi-synchronous: complete when local is done and the peer has received the data.
    B,
    /// Synchronous: complete when local is done and the peer has the data on stable storage.
    C,
}

impl Protocol {
    /// Decodes a protocol number as carried on the wire and in sysfs (1 = A, 2 = B, 3 = C).
    pub fn from_u8(v: u8) -> Result<Self, Error> {
        match v {
            1 => Ok(Protocol::A),
            2 => Ok(Protocol::B),
            3 => Ok(Protocol::C),
            _ => Err(Error::UnknownProtocol),
        }
    }

    /// The number used on the wire and in sysfs (1 = A, 2 = B, 3 = C).
    pub fn as_u8(self) -> u8 {
        match self {
            Protocol::A => 1,
            Protocol::B => 2,
            Protocol::C => 3,
        }
    }

    /// The protocol's letter, for logs and sysfs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
        }
    }

    /// The net level at which a write counts as replicated under this protocol.
    fn required(self) -> Net {
        match self {
            Protocol::A => Net::Sent,
            Protocol::B => Net::Received,
            Protocol::C => Net::Durable,
        }
    }
}

/// Something that happened to a request (DRBD's `enum drbd_req_event`, reduced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The local backing-device write completed successfully.
    LocalDone,
    /// The local backing-device write failed.
    LocalFailed,
    /// The data was handed to the transport (protocol A's completion point).
    Sent,
    /// The peer acknowledged receipt of the data (protocol B's `P_RECV_ACK`).
    AckReceived,
    /// The peer acknowledged the data is on its stable storage (protocol C's `P_WRITE_ACK`;
    /// under A and B, the barrier/flush ack covering this write).
    AckDurable,
    /// The peer failed to write the data (`P_NEG_ACK`).
    NegAck,
    /// The connection broke before the peer made the data durable; also used for a write
    /// submitted while not connected (feed it first: it returns `mark_out_of_sync`).
    ConnectionLost,
}

/// Final status of a completed write, as given to the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// At least one copy (local, or the peer at the protocol's level) holds the data.
    Ok,
    /// Neither copy could be written: complete the bio with an I/O error.
    IoError,
}

/// What the caller must do after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `Some` exactly once per request: complete the upper-layer bio with this status.
    pub complete: Option<Status>,
    /// Set at most once per request: mark the write's range out of sync in the bitmap.
    pub mark_out_of_sync: bool,
}

/// Why an event was refused (the request is left unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A protocol number other than 1, 2 or 3.
    UnknownProtocol,
    /// `LocalDone`/`LocalFailed` for a request whose local half already finished.
    LocalAlreadyFinished,
    /// An ack or `NegAck` after the net half failed (stale packet from a dead connection).
    NetAlreadyFailed,
    /// A `NegAck` after the peer already acknowledged the data.
    NegAckAfterAck,
}

impl Error {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::UnknownProtocol => "unknown replication protocol (expected 1=A, 2=B, 3=C)",
            Error::LocalAlreadyFinished => "local completion reported twice",
            Error::NetAlreadyFailed => "peer ack for a request whose connection was lost",
            Error::NegAckAfterAck => "negative ack after a positive ack",
        }
    }
}

/// Progress of the local (backing device) half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// Submitted, not completed.
    Pending,
    /// Completed successfully.
    Done,
    /// Completed with an error.
    Failed,
}

/// Progress of the network half; ordered, `Failed` aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Net {
    /// Queued for sending.
    Pending,
    /// Handed to the transport.
    Sent,
    /// The peer has received it.
    Received,
    /// The peer has it on stable storage.
    Durable,
    /// The peer will not have it (negative ack or connection lost).
    Failed,
}

/// Completion tracker for one mirrored write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    proto: Protocol,
    /// Whether a successful local write makes a good copy (false on a sync target).
    local_counts: bool,
    local: Local,
    net: Net,
    completed: bool,
    marked: bool,
}

impl Request {
    /// A new write under `proto`, with both halves pending.
    pub const fn new(proto: Protocol) -> Self {
        Request { proto, local_counts: true, local: Local::Pending, net: Net::Pending, completed: false, marked: false }
    }

    /// A new write on a primary whose local disk is not up to date (a sync target): the
    /// local write still happens, but only the peer's copy counts, so the write completes
    /// `Ok` only once the peer reached the protocol's level, and `IoError` if the
    /// connection is lost first.
    pub const fn new_remote_only(proto: Protocol) -> Self {
        Request { local_counts: false, ..Request::new(proto) }
    }

    /// The protocol this request was created with.
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// Local half progress.
    pub fn local(&self) -> Local {
        self.local
    }

    /// Network half progress.
    pub fn net(&self) -> Net {
        self.net
    }

    /// Whether the upper layer has been told (an `Outcome` carried `complete: Some`).
    pub fn is_completed(&self) -> bool {
        self.completed
    }

    /// Whether the request may be freed: completed, local final, and the net half either
    /// durable at the peer or failed (its range then already reported for marking).
    pub fn is_finished(&self) -> bool {
        self.completed
            && self.local != Local::Pending
            && matches!(self.net, Net::Durable | Net::Failed)
    }

    /// The single transition function: applies `ev` and says what the caller must do.
    ///
    /// Acks imply `Sent` (an ack may be processed before the sender's own notification);
    /// a lower ack after a higher one and `Sent` after an ack or failure are no-ops.
    pub fn event(&mut self, ev: Event) -> Result<Outcome, Error> {
        let mut out = Outcome::default();
        match ev {
            Event::LocalDone | Event::LocalFailed => {
                if self.local != Local::Pending {
                    return Err(Error::LocalAlreadyFinished);
                }
                if ev == Event::LocalDone {
                    self.local = Local::Done;
                } else {
                    self.local = Local::Failed;
                    out.mark_out_of_sync = self.mark();
                }
            }
            Event::Sent | Event::AckReceived | Event::AckDurable => {
                let level = match ev {
                    Event::Sent => Net::Sent,
                    Event::AckReceived => Net::Received,
                    _ => Net::Durable,
                };
                if self.net == Net::Failed {
                    if ev == Event::Sent {
                        return Ok(out);
                    }
                    return Err(Error::NetAlreadyFailed);
                }
                if level > self.net {
                    self.net = level;
                }
            }
            Event::NegAck | Event::ConnectionLost => {
                match self.net {
                    Net::Failed => {
                        if ev == Event::NegAck {
                            return Err(Error::NetAlreadyFailed);
                        }
                        return Ok(out);
                    }
                    // Already durable: nothing is lost, the request just leaves the log.
                    Net::Durable => {
                        if ev == Event::NegAck {
                            return Err(Error::NegAckAfterAck);
                        }
                        return Ok(out);
                    }
                    Net::Received if ev == Event::NegAck => return Err(Error::NegAckAfterAck),
                    _ => {}
                }
                // Not (known) durable at the peer: resync must cover this range later,
                // even if the write was already completed under protocol A or B.
                self.net = Net::Failed;
                out.mark_out_of_sync = self.mark();
            }
        }
        out.complete = self.try_complete();
        Ok(out)
    }

    fn mark(&mut self) -> bool {
        let first = !self.marked;
        self.marked = true;
        first
    }

    fn try_complete(&mut self) -> Option<Status> {
        if self.completed || self.local == Local::Pending {
            return None;
        }
        let net_ok = self.net != Net::Failed && self.net >= self.proto.required();
        let net_final = self.net == Net::Failed || net_ok;
        if !net_final {
            return None;
        }
        self.completed = true;
        if (self.local == Local::Done && self.local_counts) || net_ok {
            Some(Status::Ok)
        } else {
            Some(Status::IoError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(proto: Protocol, evs: &[Event]) -> (Request, Option<(usize, Status)>, usize) {
        let mut r = Request::new(proto);
        let mut done = None;
        let mut marks = 0;
        for (i, e) in evs.iter().enumerate() {
            let o = r.event(*e).unwrap();
            if let Some(s) = o.complete {
                assert!(done.is_none(), "completed twice");
                done = Some((i, s));
            }
            marks += o.mark_out_of_sync as usize;
        }
        (r, done, marks)
    }

    use Event::*;

    #[test]
    fn protocol_c_waits_for_durable() {
        let (r, done, marks) = run(Protocol::C, &[LocalDone, Sent, AckReceived, AckDurable]);
        assert_eq!(done, Some((3, Status::Ok)));
        assert_eq!(marks, 0);
        assert!(r.is_finished());
    }

    #[test]
    fn protocol_b_completes_on_receive_and_stays_in_log() {
        let (r, done, _) = run(Protocol::B, &[Sent, LocalDone, AckReceived]);
        assert_eq!(done, Some((2, Status::Ok)));
        assert!(!r.is_finished());
        let mut r = r;
        let o = r.event(ConnectionLost).unwrap();
        assert_eq!(o, Outcome { complete: None, mark_out_of_sync: true });
        assert!(r.is_finished());
    }

    #[test]
    fn protocol_a_completes_on_sent() {
        let (_, done, _) = run(Protocol::A, &[LocalDone, Sent]);
        assert_eq!(done, Some((1, Status::Ok)));
        let (_, done, _) = run(Protocol::A, &[Sent, LocalDone]);
        assert_eq!(done, Some((1, Status::Ok)));
    }

    #[test]
    fn ack_implies_sent() {
        let (r, done, _) = run(Protocol::C, &[AckDurable, LocalDone]);
        assert_eq!(done, Some((1, Status::Ok)));
        assert!(r.is_finished());
    }

    #[test]
    fn connection_lost_completes_ok_if_local_ok() {
        let (_, done, marks) = run(Protocol::C, &[Sent, ConnectionLost, LocalDone]);
        assert_eq!(done, Some((2, Status::Ok)));
        assert_eq!(marks, 1);
    }

    #[test]
    fn both_fail_is_io_error() {
        let (_, done, marks) = run(Protocol::C, &[LocalFailed, NegAck]);
        assert_eq!(done, Some((1, Status::IoError)));
        assert_eq!(marks, 1, "marked once only");
    }

    #[test]
    fn local_failure_peer_durable_is_ok_and_marked() {
        let (_, done, marks) = run(Protocol::C, &[Sent, LocalFailed, AckDurable]);
        assert_eq!(done, Some((2, Status::Ok)));
        assert_eq!(marks, 1);
    }

    #[test]
    fn remote_only_needs_the_peer() {
        let mut r = Request::new_remote_only(Protocol::C);
        r.event(Sent).unwrap();
        r.event(LocalDone).unwrap();
        let o = r.event(ConnectionLost).unwrap();
        assert_eq!(o, Outcome { complete: Some(Status::IoError), mark_out_of_sync: true });
        let (_, done, _) = {
            let mut r = Request::new_remote_only(Protocol::C);
            let a = r.event(LocalDone).unwrap();
            let b = r.event(AckDurable).unwrap();
            (r, a.complete.or(b.complete), 0)
        };
        assert_eq!(done, Some(Status::Ok));
    }

    #[test]
    fn local_failure_protocol_a_sent_counts() {
        let (_, done, _) = run(Protocol::A, &[LocalFailed, Sent]);
        assert_eq!(done, Some((1, Status::Ok)));
    }

    #[test]
    fn refused_events_leave_state() {
        let mut r = Request::new(Protocol::C);
        r.event(LocalDone).unwrap();
        assert_eq!(r.event(LocalFailed), Err(Error::LocalAlreadyFinished));
        r.event(ConnectionLost).unwrap();
        assert_eq!(r.event(AckDurable), Err(Error::NetAlreadyFailed));
        assert_eq!(r.event(NegAck), Err(Error::NetAlreadyFailed));
        assert_eq!(r.event(Sent), Ok(Outcome::default()));
        assert_eq!(r.event(ConnectionLost), Ok(Outcome::default()));
        let mut r = Request::new(Protocol::B);
        r.event(AckReceived).unwrap();
        assert_eq!(r.event(NegAck), Err(Error::NegAckAfterAck));
        assert_eq!(Protocol::from_u8(4), Err(Error::UnknownProtocol));
        assert_eq!(Protocol::from_u8(3).map(Protocol::as_u8), Ok(3));
    }

    /// Exhaustive: every sequence of up to 6 events, under every protocol, completes at
    /// most once, marks at most once, and never completes C before durable-or-failed.
    #[test]
    fn exhaustive_invariants() {
        const EVS: [Event; 7] =
            [LocalDone, LocalFailed, Sent, AckReceived, AckDurable, NegAck, ConnectionLost];
        for proto in [Protocol::A, Protocol::B, Protocol::C] {
            let mut n = 0u32;
            while n < 7u32.pow(6) {
                let mut r = Request::new(proto);
                let mut k = n;
                let mut completions = 0;
                let mut marks = 0;
                for _ in 0..6 {
                    let ev = EVS[(k % 7) as usize];
                    k /= 7;
                    let before = r;
                    match r.event(ev) {
                        Ok(o) => {
                            if let Some(s) = o.complete {
                                completions += 1;
                                assert!(r.local() != Local::Pending);
                                if proto == Protocol::C && s == Status::Ok {
                                    assert!(
                                        r.net() == Net::Durable || r.local() == Local::Done
                                    );
                                }
                                if proto == Protocol::C && r.net() != Net::Failed {
                                    assert_eq!(r.net(), Net::Durable);
                                }
                            }
                            marks += o.mark_out_of_sync as u32;
                        }
                        Err(_) => assert_eq!(before, r),
                    }
                }
                assert!(completions <= 1 && marks <= 1);
                if r.local() != Local::Pending && r.net() == Net::Failed {
                    assert!(r.is_completed());
                }
                n += 1;
            }
        }
    }
}
