// SPDX-License-Identifier: GPL-2.0
//! Device state: roles and disk states, with pure validators of requested transitions.
//!
//! Like DRBD's `drbd_state.c`: a change is either *requested* (by the user: promote,
//! demote, outdate, start a resync) and checked by [`is_valid_state`] and
//! [`is_valid_soft_transition`], or *imposed* by the environment (connection lost, disk
//! failed, resync finished) and only [`sanitize`]d. Both return the state to install;
//! refusals carry a [`Reason`].

/// Role of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Exports the device for writing; its writes are replicated.
    Primary,
    /// Receives replicated writes; the device cannot be opened for writing.
    Secondary,
}

/// Local (or peer) disk state, ordered from worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Disk {
    /// No backing device attached.
    Diskless,
    /// Data is not usable on its own (resync target, or never synced).
    Inconsistent,
    /// Consistent but known to be older than the peer's (fenced off).
    Outdated,
    /// Consistent and current.
    UpToDate,
}

/// Replication status of the connection, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repl {
    /// Not connected (standalone, connecting, outage, probation).
    Off,
    /// Connected and replicating.
    Established,
    /// Connected, copying out-of-sync regions to the peer.
    SyncSource,
    /// Connected, receiving out-of-sync regions from the peer.
    SyncTarget,
}

/// What we know of the peer while connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Peer's role.
    pub role: Role,
    /// Peer's disk state.
    pub disk: Disk,
}

/// The device state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Our role.
    pub role: Role,
    /// Our disk.
    pub disk: Disk,
    /// Replication status.
    pub repl: Repl,
    /// The peer, when connected (`repl != Off`).
    pub peer: Option<Peer>,
}

impl State {
    /// A secondary with no disk and no connection.
    pub const INITIAL: State = State { role: Role::Secondary, disk: Disk::Diskless, repl: Repl::Off, peer: None };

    /// Whether I/O can be served: our data is up to date, or a connected peer's is. A
    /// primary without data access must fail (or suspend) new writes: its local disk alone
    /// does not hold a usable image.
    pub fn has_data(&self) -> bool {
        self.disk == Disk::UpToDate || self.peer_up_to_date()
    }

    fn peer_up_to_date(&self) -> bool {
        self.repl != Repl::Off && self.peer.is_some_and(|p| p.disk == Disk::UpToDate)
    }
}

/// Facts from outside the state that a request depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The block device is open (demotion refused).
    pub in_use: bool,
    /// The user forces the request (`--force`: promote on non-up-to-date data).
    pub force: bool,
    /// Dual-primary allowed.
    pub allow_two_primaries: bool,
    /// The connection is being established (handshake or probation): role and disk
    /// changes wait until it settles (DRBD's `SS_IN_TRANSIENT_STATE`).
    pub transient: bool,
}

/// Why a requested transition was refused (DRBD's `SS_*` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The requested state equals the current one.
    NothingToDo,
    /// Both sides would be primary.
    TwoPrimaries,
    /// Demotion while the device is open.
    DeviceInUse,
    /// Primary needs up-to-date data, locally or at a connected peer (or `force`).
    NoUpToDateDisk,
    /// The operation needs a local disk.
    NoLocalDisk,
    /// The operation needs the peer's disk.
    NoRemoteDisk,
    /// The operation needs a connection.
    NeedConnection,
    /// A resync is already running.
    ResyncRunning,
    /// Only an attach can leave `Diskless`.
    IsDiskless,
    /// A disk below `Outdated` cannot be outdated.
    LowerThanOutdated,
    /// A primary cannot be outdated.
    PrimaryOutdated,
    /// Outdating while connected makes no sense (the peer would up-date us).
    ConnectedOutdates,
    /// Only a finished resync (or `force`) makes a disk up to date.
    NeedsResync,
    /// The connection is being established; retry once it settled.
    InTransientState,
}

impl Reason {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::NothingToDo => "nothing to do",
            Reason::TwoPrimaries => "peer is primary and dual-primary is not allowed",
            Reason::DeviceInUse => "device is held open",
            Reason::NoUpToDateDisk => "need access to up-to-date data",
            Reason::NoLocalDisk => "need a local disk",
            Reason::NoRemoteDisk => "need the peer's disk",
            Reason::NeedConnection => "need a connection",
            Reason::ResyncRunning => "a resync is running",
            Reason::IsDiskless => "device is diskless: attach first",
            Reason::LowerThanOutdated => "disk is below outdated",
            Reason::PrimaryOutdated => "cannot outdate a primary",
            Reason::ConnectedOutdates => "cannot outdate while connected",
            Reason::NeedsResync => "only a resync makes this disk up to date",
            Reason::InTransientState => "connection is being established, retry later",
        }
    }
}

/// Applies the implications of a new state (hard facts); the result is what to install.
pub fn sanitize(mut ns: State) -> State {
    if ns.repl == Repl::Off {
        ns.peer = None;
    }
    if ns.disk == Disk::Diskless && matches!(ns.repl, Repl::SyncSource | Repl::SyncTarget) {
        ns.repl = Repl::Established;
    }
    match ns.repl {
        Repl::SyncTarget => ns.disk = Disk::Inconsistent,
        Repl::SyncSource => {
            if let Some(p) = ns.peer.as_mut() {
                p.disk = Disk::Inconsistent;
            }
        }
        _ => {}
    }
    ns
}

/// Checks a state on its own (DRBD's `is_valid_state`).
pub fn is_valid_state(ns: &State, ctx: &Context) -> Result<(), Reason> {
    if ns.role == Role::Primary
        && !ctx.allow_two_primaries
        && ns.repl != Repl::Off
        && ns.peer.is_some_and(|p| p.role == Role::Primary)
    {
        return Err(Reason::TwoPrimaries);
    }
    if ns.role == Role::Primary && ns.disk == Disk::Outdated {
        return Err(Reason::PrimaryOutdated);
    }
    if ns.role == Role::Primary && ns.disk < Disk::UpToDate && !ns.peer_up_to_date() {
        let forced = ctx.force && ns.disk != Disk::Diskless;
        if !forced {
            return Err(Reason::NoUpToDateDisk);
        }
    }
    if ns.repl != Repl::Off && ns.peer.is_none() {
        return Err(Reason::NeedConnection);
    }
    if matches!(ns.repl, Repl::SyncSource | Repl::SyncTarget) {
        if ns.disk == Disk::Diskless {
            return Err(Reason::NoLocalDisk);
        }
        if ns.peer.is_some_and(|p| p.disk == Disk::Diskless) {
            return Err(Reason::NoRemoteDisk);
        }
    }
    if ns.repl == Repl::SyncSource && ns.disk != Disk::UpToDate {
        return Err(Reason::NoUpToDateDisk);
    }
    if ns.repl == Repl::SyncTarget && ns.peer.is_none_or(|p| p.disk != Disk::UpToDate) {
        return Err(Reason::NoUpToDateDisk);
    }
    Ok(())
}

/// Checks a user-requested change (DRBD's `is_valid_soft_transition`).
pub fn is_valid_soft_transition(os: &State, ns: &State, ctx: &Context) -> Result<(), Reason> {
    if os == ns {
        return Err(Reason::NothingToDo);
    }
    if ctx.transient && (os.role != ns.role || os.disk != ns.disk) {
        return Err(Reason::InTransientState);
    }
    if os.role == Role::Primary && ns.role == Role::Secondary && ctx.in_use {
        return Err(Reason::DeviceInUse);
    }
    if os.disk == Disk::Diskless && ns.disk > Disk::Diskless {
        return Err(Reason::IsDiskless);
    }
    if ns.disk == Disk::Outdated && os.disk < Disk::Outdated {
        return Err(Reason::LowerThanOutdated);
    }
    if ns.disk == Disk::Outdated && os.disk != Disk::Outdated && ns.repl != Repl::Off {
        return Err(Reason::ConnectedOutdates);
    }
    if ns.disk == Disk::UpToDate && os.disk < Disk::UpToDate && !ctx.force {
        return Err(Reason::NeedsResync);
    }
    let syncing = |r: Repl| matches!(r, Repl::SyncSource | Repl::SyncTarget);
    if syncing(ns.repl) && os.repl == Repl::Off {
        return Err(Reason::NeedConnection);
    }
    if syncing(ns.repl) && syncing(os.repl) && ns.repl != os.repl {
        return Err(Reason::ResyncRunning);
    }
    Ok(())
}

/// A user request: sanitizes `ns`, validates it against `os`, and returns what to install.
/// A forced promotion on non-up-to-date data declares that data up to date.
pub fn request(os: &State, ns: State, ctx: &Context) -> Result<State, Reason> {
    let mut ns = sanitize(ns);
    if ctx.force
        && ns.role == Role::Primary
        && os.role == Role::Secondary
        && matches!(ns.disk, Disk::Inconsistent | Disk::Outdated)
        && !ns.peer_up_to_date()
    {
        ns.disk = Disk::UpToDate;
    }
    is_valid_soft_transition(os, &ns, ctx)?;
    is_valid_state(&ns, ctx)?;
    Ok(ns)
}

/// Promotes to primary (a convenience over [`request`]).
pub fn promote(os: &State, ctx: &Context) -> Result<State, Reason> {
    request(os, State { role: Role::Primary, ..*os }, ctx)
}

/// Demotes to secondary.
pub fn demote(os: &State, ctx: &Context) -> Result<State, Reason> {
    request(os, State { role: Role::Secondary, ..*os }, ctx)
}

/// Marks our data outdated (fencing: a disconnected secondary that knows it is behind).
pub fn outdate(os: &State, ctx: &Context) -> Result<State, Reason> {
    request(os, State { disk: Disk::Outdated, ..*os }, ctx)
}

/// An imposed change (connection lost, disk failed, resync done): sanitized only.
pub fn force_state(ns: State) -> State {
    sanitize(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Context = Context { in_use: false, force: false, allow_two_primaries: false, transient: false };

    fn st(role: Role, disk: Disk) -> State {
        State { role, disk, repl: Repl::Off, peer: None }
    }

    #[test]
    fn promote_rules() {
        let s = st(Role::Secondary, Disk::UpToDate);
        assert_eq!(promote(&s, &NONE).unwrap().role, Role::Primary);
        let s = st(Role::Secondary, Disk::Inconsistent);
        assert_eq!(promote(&s, &NONE), Err(Reason::NoUpToDateDisk));
        let forced = promote(&s, &Context { force: true, ..NONE }).unwrap();
        assert_eq!((forced.role, forced.disk), (Role::Primary, Disk::UpToDate));
        let d = st(Role::Secondary, Disk::Diskless);
        assert_eq!(promote(&d, &Context { force: true, ..NONE }), Err(Reason::NoUpToDateDisk));
        // Inconsistent but connected to an up-to-date peer: allowed (reads go to the peer).
        let c = State {
            repl: Repl::Established,
            peer: Some(Peer { role: Role::Secondary, disk: Disk::UpToDate }),
            ..s
        };
        assert!(promote(&c, &NONE).is_ok());
        assert!(c.has_data() && !s.has_data());
        let two = State { peer: Some(Peer { role: Role::Primary, disk: Disk::UpToDate }), ..c };
        assert_eq!(promote(&two, &NONE), Err(Reason::TwoPrimaries));
        assert!(promote(&two, &Context { allow_two_primaries: true, ..NONE }).is_ok());
        let up = st(Role::Secondary, Disk::UpToDate);
        assert_eq!(promote(&up, &Context { transient: true, ..NONE }), Err(Reason::InTransientState));
    }

    #[test]
    fn demote_and_outdate() {
        let p = st(Role::Primary, Disk::UpToDate);
        assert_eq!(demote(&p, &Context { in_use: true, ..NONE }), Err(Reason::DeviceInUse));
        let s = demote(&p, &NONE).unwrap();
        assert_eq!(outdate(&p, &NONE), Err(Reason::PrimaryOutdated));
        assert_eq!(outdate(&s, &NONE).unwrap().disk, Disk::Outdated);
        let i = st(Role::Secondary, Disk::Inconsistent);
        assert_eq!(outdate(&i, &NONE), Err(Reason::LowerThanOutdated));
        let conn = State {
            repl: Repl::Established,
            peer: Some(Peer { role: Role::Primary, disk: Disk::UpToDate }),
            ..s
        };
        assert_eq!(outdate(&conn, &NONE), Err(Reason::ConnectedOutdates));
        assert_eq!(demote(&s, &NONE), Err(Reason::NothingToDo));
    }

    #[test]
    fn resync_and_sanitize() {
        let s = State {
            role: Role::Secondary,
            disk: Disk::Outdated,
            repl: Repl::Established,
            peer: Some(Peer { role: Role::Primary, disk: Disk::UpToDate }),
        };
        let t = request(&s, State { repl: Repl::SyncTarget, ..s }, &NONE).unwrap();
        assert_eq!(t.disk, Disk::Inconsistent);
        assert_eq!(request(&t, State { repl: Repl::SyncSource, ..t }, &NONE), Err(Reason::ResyncRunning));
        let up = State { disk: Disk::UpToDate, repl: Repl::Established, ..t };
        assert_eq!(request(&t, up, &NONE), Err(Reason::NeedsResync));
        // The resync finishing is imposed, not requested.
        assert_eq!(force_state(up).disk, Disk::UpToDate);
        let off = force_state(State { repl: Repl::Off, ..t });
        assert_eq!(off.peer, None);
        let lonely = st(Role::Secondary, Disk::UpToDate);
        assert_eq!(
            request(&lonely, State { repl: Repl::SyncSource, ..lonely }, &NONE),
            Err(Reason::NeedConnection)
        );
        assert_eq!(
            request(&State::INITIAL, State { disk: Disk::Inconsistent, ..State::INITIAL }, &NONE),
            Err(Reason::IsDiskless)
        );
        assert!(!Reason::NeedsResync.as_str().is_empty());
    }
}
