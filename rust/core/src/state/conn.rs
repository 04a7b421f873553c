// SPDX-License-Identifier: GPL-2.0
//! Connection state machine: connect, handshake, two-way heartbeats, outage and probation.
//!
//! ```text
//!                 on_connect          on_connected           on_handshake_ok
//!   Standalone ─────────────> Connecting ─────────> Handshake ───────────────> Connected
//!       ^                        ^   (retry)          │  │ (after an outage,           │
//!       │ on_disconnect          └── error ───────────┘  │  probation_ms > 0)          │
//!       │ (from any state)                               v                             │
//!       │                     Outage <──── miss/error ─ Probation ── probation_ms ────>│
//!       │                       │  ^                      ^          without a miss    │
//!       │                       │  └────── timeout/error ─┼────────────────────────────┘
//!       │                       └── on_connected ─> Handshake (then Probation)
//! ```
//!
//! Heartbeats run in both directions: each side sends `Ping` every `ping_interval_ms`
//! ([`Actions::send_ping`]) and answers the peer's pings ([`Actions::send_pong`]); each side
//! independently declares an outage when nothing was received from the peer for
//! `timeout_ms`, or its own ping stayed unanswered for `timeout_ms`. After an outage the
//! link must carry heartbeats for `probation_ms` with no miss (a ping unanswered for a whole
//! `ping_interval_ms`) before it is trusted again ([`Actions::resume`]): only then does the
//! driver replay the outage queue or start the resync.
//!
//! The machine is sans-IO: every method takes `now_ms` (any monotonic millisecond clock)
//! and returns [`Actions`] for the caller to carry out; nothing here sleeps or reads a clock.

/// Connection states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not configured to connect; no socket. Initial state.
    Standalone,
    /// Trying to establish the first connection (no replication yet).
    Connecting,
    /// A socket is up; features and generation UUIDs are being exchanged.
    Handshake,
    /// Replicating; heartbeats checked both ways.
    Connected,
    /// The link was lost while replicating: writes are queued (outage queue) or marked in
    /// the fracture bitmap; reconnection attempts are made every `connect_retry_ms`.
    Outage,
    /// Reconnected after an outage; the link must carry heartbeats with no miss for
    /// `probation_ms` before replication resumes.
    Probation,
}

impl State {
    /// Name for logs and sysfs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Standalone => "standalone",
            State::Connecting => "connecting",
            State::Handshake => "handshake",
            State::Connected => "connected",
            State::Outage => "outage",
            State::Probation => "probation",
        }
    }

    /// Whether a socket is up in this state (pings and pongs are exchanged).
    pub fn has_link(self) -> bool {
        matches!(self, State::Handshake | State::Connected | State::Probation)
    }
}

/// Tunables (per device, written through sysfs: call [`Config::validate`] first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Heartbeat period, each direction: 100..=60000 ms.
    pub ping_interval_ms: u32,
    /// Outage when nothing was heard for this long: > `ping_interval_ms`, <= 600000 ms.
    pub timeout_ms: u32,
    /// Heartbeats needed without a miss after an outage before resuming: 0..=600000 ms
    /// (0 = resume right after the handshake).
    pub probation_ms: u32,
    /// Delay between reconnection attempts: 100..=600000 ms.
    pub connect_retry_ms: u32,
    /// How long an outage may last before queued writes fall back to the bitmap
    /// ([`Actions::give_up_queue`]): 0 = no limit, else `timeout_ms`..=86400000 ms.
    pub outage_max_ms: u32,
}

impl Config {
    /// Defaults: ping every 1 s, timeout 5 s, probation 3 s, retry every 1 s, queue kept
    /// for at most 60 s of outage.
    pub const DEFAULT: Config = Config {
        ping_interval_ms: 1000,
        timeout_ms: 5000,
        probation_ms: 3000,
        connect_retry_ms: 1000,
        outage_max_ms: 60_000,
    };

    /// Checks every range; the first violated rule is returned.
    pub fn validate(&self) -> Result<(), Error> {
        if !(100..=60_000).contains(&self.ping_interval_ms) {
            return Err(Error::PingIntervalRange);
        }
        if self.timeout_ms <= self.ping_interval_ms {
            return Err(Error::TimeoutNotAboveInterval);
        }
        if self.timeout_ms > 600_000 {
            return Err(Error::TimeoutRange);
        }
        if self.probation_ms > 600_000 {
            return Err(Error::ProbationRange);
        }
        if !(100..=600_000).contains(&self.connect_retry_ms) {
            return Err(Error::RetryRange);
        }
        if self.outage_max_ms != 0
            && (self.outage_max_ms < self.timeout_ms || self.outage_max_ms > 86_400_000)
        {
            return Err(Error::OutageMaxRange);
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a configuration or an event was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `ping_interval_ms` outside 100..=60000.
    PingIntervalRange,
    /// `timeout_ms` not greater than `ping_interval_ms`.
    TimeoutNotAboveInterval,
    /// `timeout_ms` above 600000.
    TimeoutRange,
    /// `probation_ms` above 600000.
    ProbationRange,
    /// `connect_retry_ms` outside 100..=600000.
    RetryRange,
    /// `outage_max_ms` neither 0 nor within `timeout_ms`..=86400000.
    OutageMaxRange,
    /// `on_connect` while not standalone.
    AlreadyConnecting,
    /// `on_disconnect` while standalone.
    AlreadyStandalone,
    /// A transport event that does not fit the state (e.g. stale socket callback).
    InvalidEvent,
    /// A ping/pong/packet while no link is up (stale socket): ignore it.
    NoLink,
    /// A configuration change refused while a link is up (`EBUSY`).
    Busy,
}

impl Error {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::PingIntervalRange => "ping interval must be 100..=60000 ms",
            Error::TimeoutNotAboveInterval => "timeout must be greater than the ping interval",
            Error::TimeoutRange => "timeout must be at most 600000 ms",
            Error::ProbationRange => "probation must be at most 600000 ms",
            Error::RetryRange => "connect retry must be 100..=600000 ms",
            Error::OutageMaxRange => "outage max must be 0 or timeout..=86400000 ms",
            Error::AlreadyConnecting => "already connecting or connected",
            Error::AlreadyStandalone => "already standalone",
            Error::InvalidEvent => "event does not fit the connection state",
            Error::NoLink => "packet while no link is up",
            Error::Busy => "cannot change this while connected",
        }
    }
}

/// What the caller must do after a transition. Several flags may be set at once; carry
/// them out in field order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// The state changed to this one (log it, update sysfs).
    pub new_state: Option<State>,
    /// Tear down the current socket.
    pub close: bool,
    /// Replication just stopped because the link was lost: start queueing writes in the
    /// outage queue (a primary also starts a new current UUID).
    pub outage_begin: bool,
    /// The outage lasted longer than `outage_max_ms` (or the user disconnected): drop the
    /// outage queue into the fracture bitmap. Reported once per outage.
    pub give_up_queue: bool,
    /// Start a connection attempt (connect/accept).
    pub connect: bool,
    /// Send our features and generation UUIDs.
    pub send_handshake: bool,
    /// Send a heartbeat ping.
    pub send_ping: bool,
    /// Answer the peer's ping.
    pub send_pong: bool,
    /// The link is trusted: run the sync handshake result (replay the outage queue or
    /// start the resync) and resume replicating.
    pub resume: bool,
}

/// One connection's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    cfg: Config,
    state: State,
    /// Entered `state` at this time.
    since_ms: u64,
    last_rx_ms: u64,
    last_ping_ms: u64,
    ping_sent_ms: Option<u64>,
    last_connect_ms: u64,
    /// Start of the current outage, if replication stopped and has not resumed.
    outage_since_ms: Option<u64>,
    gave_up: bool,
    /// States entered since the last [`Conn::take_journal`], oldest first (for events).
    journal: Journal,
}

/// The states a [`Conn`] entered since its journal was last taken, oldest first; at most
/// [`Journal::CAPACITY`], older ones counted as `dropped` (the caller reports the loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Journal {
    states: [State; Journal::CAPACITY],
    len: u8,
    /// States entered but not kept (the journal was full).
    pub dropped: u32,
}

impl Journal {
    /// Most states kept between two takes.
    pub const CAPACITY: usize = 8;

    const EMPTY: Journal = Journal { states: [State::Standalone; Journal::CAPACITY], len: 0, dropped: 0 };

    fn push(&mut self, st: State) {
        let n = usize::from(self.len);
        if n < Self::CAPACITY {
            self.states[n] = st;
            self.len += 1;
        } else {
            // Keep the newest: the last state is what the caller must end up reporting.
            self.states.copy_within(1.., 0);
            self.states[Self::CAPACITY - 1] = st;
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// The states, oldest first.
    pub fn states(&self) -> &[State] {
        &self.states[..usize::from(self.len)]
    }
}

impl Conn {
    /// A standalone connection with a validated `cfg`.
    pub fn new(cfg: Config) -> Result<Self, Error> {
        cfg.validate()?;
        Ok(Conn {
            cfg,
            state: State::Standalone,
            since_ms: 0,
            last_rx_ms: 0,
            last_ping_ms: 0,
            ping_sent_ms: None,
            last_connect_ms: 0,
            outage_since_ms: None,
            gave_up: false,
            journal: Journal::EMPTY,
        })
    }

    /// The states entered since the last call (and empties the journal).
    pub fn take_journal(&mut self) -> Journal {
        core::mem::replace(&mut self.journal, Journal::EMPTY)
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Current configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether replication has stopped since an outage and not resumed yet (writes must go
    /// to the outage queue or the bitmap).
    pub fn in_outage(&self) -> bool {
        self.outage_since_ms.is_some()
    }

    /// Replaces the configuration (sysfs write). Refused with [`Error::Busy`] while a link
    /// is up, so timers never change under a running heartbeat.
    pub fn set_config(&mut self, cfg: Config) -> Result<(), Error> {
        cfg.validate()?;
        if self.state.has_link() {
            return Err(Error::Busy);
        }
        self.cfg = cfg;
        Ok(())
    }

    fn enter(&mut self, st: State, now_ms: u64, act: &mut Actions) {
        if st != self.state {
            act.new_state = Some(st);
            self.journal.push(st);
        }
        self.state = st;
        self.since_ms = now_ms;
        if st.has_link() {
            self.last_rx_ms = now_ms;
            self.last_ping_ms = now_ms;
            self.ping_sent_ms = None;
        }
    }

    /// User asked to connect (`rmirrorctl connect`): start trying.
    pub fn on_connect(&mut self, now_ms: u64) -> Result<Actions, Error> {
        if self.state != State::Standalone {
            return Err(Error::AlreadyConnecting);
        }
        let mut act = Actions { connect: true, ..Actions::default() };
        self.last_connect_ms = now_ms;
        self.enter(State::Connecting, now_ms, &mut act);
        Ok(act)
    }

    /// User asked to disconnect: close everything; queued writes fall back to the bitmap.
    pub fn on_disconnect(&mut self, now_ms: u64) -> Result<Actions, Error> {
        if self.state == State::Standalone {
            return Err(Error::AlreadyStandalone);
        }
        let mut act = Actions { close: self.state.has_link(), ..Actions::default() };
        if self.state == State::Connected {
            act.outage_begin = true;
        }
        if self.state == State::Connected || self.outage_since_ms.is_some() {
            act.give_up_queue = !self.gave_up;
        }
        self.outage_since_ms = None;
        self.gave_up = false;
        self.enter(State::Standalone, now_ms, &mut act);
        Ok(act)
    }

    /// The transport established a socket.
    pub fn on_connected(&mut self, now_ms: u64) -> Result<Actions, Error> {
        if !matches!(self.state, State::Connecting | State::Outage) {
            return Err(Error::InvalidEvent);
        }
        let mut act = Actions { send_handshake: true, ..Actions::default() };
        self.enter(State::Handshake, now_ms, &mut act);
        Ok(act)
    }

    /// The handshake (features, UUIDs) succeeded. After an outage with `probation_ms > 0`
    /// this enters probation; otherwise replication resumes at once.
    pub fn on_handshake_ok(&mut self, now_ms: u64) -> Result<Actions, Error> {
        if self.state != State::Handshake {
            return Err(Error::InvalidEvent);
        }
        let mut act = Actions::default();
        if self.outage_since_ms.is_some() && self.cfg.probation_ms > 0 {
            self.enter(State::Probation, now_ms, &mut act);
        } else {
            self.resume(now_ms, &mut act);
        }
        Ok(act)
    }

    fn resume(&mut self, now_ms: u64, act: &mut Actions) {
        act.resume = true;
        self.outage_since_ms = None;
        self.gave_up = false;
        self.enter(State::Connected, now_ms, act);
    }

    /// The peer's ping arrived: answer it.
    pub fn on_ping(&mut self, now_ms: u64) -> Result<Actions, Error> {
        self.on_traffic(now_ms)?;
        Ok(Actions { send_pong: true, ..Actions::default() })
    }

    /// The answer to our ping arrived.
    pub fn on_pong(&mut self, now_ms: u64) -> Result<Actions, Error> {
        self.on_traffic(now_ms)?;
        self.ping_sent_ms = None;
        Ok(Actions::default())
    }

    /// Any other packet arrived from the peer (data, acks): it proves the link is alive.
    pub fn on_traffic(&mut self, now_ms: u64) -> Result<(), Error> {
        if !self.state.has_link() {
            return Err(Error::NoLink);
        }
        if now_ms > self.last_rx_ms {
            self.last_rx_ms = now_ms;
        }
        Ok(())
    }

    /// The socket failed (send/receive error, protocol error, handshake refused).
    pub fn on_error(&mut self, now_ms: u64) -> Result<Actions, Error> {
        let mut act = Actions::default();
        match self.state {
            State::Standalone => return Err(Error::InvalidEvent),
            // A failed attempt: the retry timer runs from the attempt.
            State::Connecting | State::Outage => {}
            State::Handshake | State::Connected | State::Probation => self.lose(now_ms, &mut act),
        }
        Ok(act)
    }

    fn lose(&mut self, now_ms: u64, act: &mut Actions) {
        act.close = true;
        let next = if self.state == State::Connected {
            act.outage_begin = true;
            self.outage_since_ms = Some(now_ms);
            State::Outage
        } else if self.outage_since_ms.is_some() {
            State::Outage
        } else {
            State::Connecting
        };
        // Reconnect right away once; later attempts wait connect_retry_ms.
        act.connect = true;
        self.last_connect_ms = now_ms;
        self.enter(next, now_ms, act);
    }

    /// Timer: call at least every `ping_interval_ms / 2` (or at [`Conn::next_deadline`]).
    pub fn on_tick(&mut self, now_ms: u64) -> Actions {
        let mut act = Actions::default();
        let cfg = self.cfg;
        match self.state {
            State::Standalone => {}
            State::Connecting | State::Outage => {
                if now_ms.saturating_sub(self.last_connect_ms) >= u64::from(cfg.connect_retry_ms) {
                    act.connect = true;
                    self.last_connect_ms = now_ms;
                }
            }
            State::Handshake => {
                if now_ms.saturating_sub(self.since_ms) >= u64::from(cfg.timeout_ms) {
                    self.lose(now_ms, &mut act);
                }
            }
            State::Connected | State::Probation => {
                let silent = now_ms.saturating_sub(self.last_rx_ms) >= u64::from(cfg.timeout_ms);
                let unanswered = self.ping_sent_ms.map_or(0, |t| now_ms.saturating_sub(t));
                let limit = if self.state == State::Probation {
                    cfg.ping_interval_ms
                } else {
                    cfg.timeout_ms
                };
                if silent || unanswered >= u64::from(limit) {
                    self.lose(now_ms, &mut act);
                } else if self.state == State::Probation
                    && now_ms.saturating_sub(self.since_ms) >= u64::from(cfg.probation_ms)
                {
                    self.resume(now_ms, &mut act);
                } else if self.ping_sent_ms.is_none()
                    && now_ms.saturating_sub(self.last_ping_ms) >= u64::from(cfg.ping_interval_ms)
                {
                    act.send_ping = true;
                    self.ping_sent_ms = Some(now_ms);
                    self.last_ping_ms = now_ms;
                }
            }
        }
        if let Some(t) = self.outage_since_ms {
            if cfg.outage_max_ms != 0
                && !self.gave_up
                && now_ms.saturating_sub(t) >= u64::from(cfg.outage_max_ms)
            {
                self.gave_up = true;
                act.give_up_queue = true;
            }
        }
        act
    }

    /// The latest time the caller should call [`Conn::on_tick`] next, if a timer matters.
    pub fn next_deadline(&self) -> Option<u64> {
        let cfg = self.cfg;
        let at = |t: u64, d: u32| t.saturating_add(u64::from(d));
        let mut next = match self.state {
            State::Standalone => None,
            State::Connecting | State::Outage => Some(at(self.last_connect_ms, cfg.connect_retry_ms)),
            State::Handshake => Some(at(self.since_ms, cfg.timeout_ms)),
            State::Connected | State::Probation => {
                let mut d = at(self.last_rx_ms, cfg.timeout_ms);
                match self.ping_sent_ms {
                    Some(t) => {
                        let limit = if self.state == State::Probation {
                            cfg.ping_interval_ms
                        } else {
                            cfg.timeout_ms
                        };
                        d = d.min(at(t, limit));
                    }
                    None => d = d.min(at(self.last_ping_ms, cfg.ping_interval_ms)),
                }
                if self.state == State::Probation {
                    d = d.min(at(self.since_ms, cfg.probation_ms));
                }
                Some(d)
            }
        };
        if let (Some(t), false, true) = (self.outage_since_ms, self.gave_up, cfg.outage_max_ms != 0) {
            let g = at(t, cfg.outage_max_ms);
            next = Some(next.map_or(g, |n| n.min(g)));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keeps_every_state_entered_and_the_newest_when_full() {
        let mut c = Conn::new(Config::DEFAULT).unwrap();
        assert_eq!(c.take_journal().states(), &[]);
        c.on_connect(0).unwrap();
        c.on_connected(1).unwrap();
        c.on_handshake_ok(2).unwrap();
        let j = c.take_journal();
        assert_eq!(j.states(), &[State::Connecting, State::Handshake, State::Connected]);
        assert_eq!(j.dropped, 0);
        assert_eq!(c.take_journal().states(), &[]);
        // A flapping link between two takes: the newest states are kept, the rest counted.
        for i in 0..10 {
            c.on_error(10 + i).unwrap();
            c.on_connected(10 + i).unwrap();
        }
        let j = c.take_journal();
        assert_eq!(j.states().len(), Journal::CAPACITY);
        assert_eq!(j.dropped, 12);
        assert_eq!(j.states().last(), Some(&c.state()));
    }

    fn cfg() -> Config {
        Config {
            ping_interval_ms: 100,
            timeout_ms: 500,
            probation_ms: 1000,
            connect_retry_ms: 200,
            outage_max_ms: 5000,
        }
    }

    fn connected(now: u64) -> Conn {
        let mut c = Conn::new(cfg()).unwrap();
        assert!(c.on_connect(now).unwrap().connect);
        assert!(c.on_connected(now).unwrap().send_handshake);
        let a = c.on_handshake_ok(now).unwrap();
        assert!(a.resume, "first connection needs no probation");
        assert_eq!(c.state(), State::Connected);
        c
    }

    #[test]
    fn validate_ranges() {
        assert_eq!(Config::DEFAULT.validate(), Ok(()));
        let mut c = cfg();
        c.ping_interval_ms = 99;
        assert_eq!(c.validate(), Err(Error::PingIntervalRange));
        c.ping_interval_ms = 60_001;
        assert_eq!(c.validate(), Err(Error::PingIntervalRange));
        let mut c = cfg();
        c.timeout_ms = c.ping_interval_ms;
        assert_eq!(c.validate(), Err(Error::TimeoutNotAboveInterval));
        let mut c = cfg();
        c.probation_ms = 600_001;
        assert_eq!(c.validate(), Err(Error::ProbationRange));
        let mut c = cfg();
        c.probation_ms = 0;
        c.outage_max_ms = 0;
        assert_eq!(c.validate(), Ok(()));
        c.outage_max_ms = 10;
        assert_eq!(c.validate(), Err(Error::OutageMaxRange));
        let mut conn = connected(0);
        assert_eq!(conn.set_config(cfg()), Err(Error::Busy));
        assert!(!Error::Busy.as_str().is_empty());
    }

    #[test]
    fn pings_and_pongs_keep_link() {
        let mut c = connected(0);
        let mut pings = 0;
        for now in (0..10_000u64).step_by(10) {
            let a = c.on_tick(now);
            if a.send_ping {
                pings += 1;
                c.on_pong(now + 5).unwrap();
            }
            if now % 100 == 50 {
                assert!(c.on_ping(now).unwrap().send_pong);
            }
            assert_eq!(a.new_state, None);
        }
        assert!((90..=101).contains(&pings), "{pings}");
    }

    #[test]
    fn silence_declares_outage_then_probation() {
        let mut c = connected(0);
        let mut now = 0;
        let mut outage_at = None;
        while now < 2000 {
            let a = c.on_tick(now);
            if a.new_state == Some(State::Outage) {
                assert!(a.close && a.outage_begin && a.connect);
                outage_at = Some(now);
                break;
            }
            now += 10;
        }
        assert_eq!(outage_at, Some(500));
        assert!(c.in_outage());
        // Retry timer.
        assert!(!c.on_tick(now + 100).connect);
        assert!(c.on_tick(now + 200).connect);
        assert_eq!(c.on_ping(now), Err(Error::NoLink));
        now += 300;
        c.on_connected(now).unwrap();
        let a = c.on_handshake_ok(now).unwrap();
        assert_eq!(a.new_state, Some(State::Probation));
        assert!(!a.resume);
        // Healthy heartbeats for probation_ms.
        let start = now;
        loop {
            now += 10;
            let a = c.on_tick(now);
            if a.send_ping {
                c.on_pong(now + 1).unwrap();
            }
            if a.resume {
                assert_eq!(a.new_state, Some(State::Connected));
                break;
            }
            assert!(now - start <= 1000);
        }
        assert_eq!(now - start, 1000);
        assert!(!c.in_outage());
    }

    #[test]
    fn miss_during_probation_restarts_outage() {
        let mut c = connected(0);
        c.on_error(10).unwrap();
        c.on_connected(20).unwrap();
        c.on_handshake_ok(20).unwrap();
        let a = c.on_tick(120);
        assert!(a.send_ping);
        // No pong within one interval -> miss.
        let a = c.on_tick(219);
        assert_eq!(a.new_state, None);
        let a = c.on_tick(220);
        assert_eq!(a.new_state, Some(State::Outage));
        assert!(a.close && !a.outage_begin, "outage already running");
        assert!(c.in_outage());
    }

    #[test]
    fn unanswered_ping_while_connected() {
        let mut c = connected(0);
        assert!(c.on_tick(100).send_ping);
        // The peer keeps sending data but never answers our ping.
        for t in (110..600).step_by(10) {
            c.on_traffic(t).unwrap();
            let a = c.on_tick(t);
            assert!(!a.send_ping, "one outstanding ping at a time");
            assert_eq!(a.new_state, None, "at {t}");
        }
        assert_eq!(c.on_tick(600).new_state, Some(State::Outage));
    }

    #[test]
    fn outage_max_gives_up_queue_once() {
        let mut c = connected(0);
        c.on_error(0).unwrap();
        let mut gave = 0;
        for t in (0..20_000).step_by(100) {
            gave += c.on_tick(t).give_up_queue as u32;
        }
        assert_eq!(gave, 1);
        let a = c.on_disconnect(20_000).unwrap();
        assert!(!a.give_up_queue, "already given up");
        assert_eq!(c.state(), State::Standalone);
        assert_eq!(c.on_disconnect(1), Err(Error::AlreadyStandalone));
    }

    #[test]
    fn handshake_timeout_and_initial_failures() {
        let mut c = Conn::new(cfg()).unwrap();
        c.on_connect(0).unwrap();
        assert_eq!(c.on_connect(0), Err(Error::AlreadyConnecting));
        assert_eq!(c.on_handshake_ok(0), Err(Error::InvalidEvent));
        c.on_connected(0).unwrap();
        let a = c.on_tick(500);
        assert_eq!(a.new_state, Some(State::Connecting), "never connected: no outage");
        assert!(!a.outage_begin);
        assert_eq!(c.next_deadline(), Some(700));
    }

    #[test]
    fn deadline_is_sufficient() {
        // Ticking only at next_deadline() gives the same transitions as ticking every ms.
        let mut a = connected(0);
        let mut b = a;
        let mut events_a = [0u32; 3];
        let mut events_b = [0u32; 3];
        for now in 0..3000u64 {
            let x = a.on_tick(now);
            events_a[0] += x.send_ping as u32;
            events_a[1] += x.new_state.is_some() as u32;
            events_a[2] += x.connect as u32;
            if b.next_deadline().is_some_and(|d| d <= now) {
                let y = b.on_tick(now);
                events_b[0] += y.send_ping as u32;
                events_b[1] += y.new_state.is_some() as u32;
                events_b[2] += y.connect as u32;
            }
        }
        assert_eq!(events_a, events_b);
        assert_eq!(a, b);
    }
}
