//! Connection states, their timeouts and the TCP and SCTP transition tables
//! (`ip_vs_proto_tcp.c`, `ip_vs_proto_udp.c`, `ip_vs_proto_sctp.c`).

/// TCP connection states in the kernel's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// No packet seen yet.
    None = 0,
    /// Established.
    Established = 1,
    /// SYN seen from the server.
    SynSent = 2,
    /// SYN seen from the client.
    SynRecv = 3,
    /// FIN seen.
    FinWait = 4,
    /// Both FINs seen.
    TimeWait = 5,
    /// Closed (RST, or a packet with no flags).
    Close = 6,
    /// Close wait.
    CloseWait = 7,
    /// Last ACK.
    LastAck = 8,
    /// Listen.
    Listen = 9,
    /// SYN+ACK (secure TCP).
    Synack = 10,
}

/// Number of TCP states.
pub const TCP_STATES: usize = 11;

const NAMES: [&str; TCP_STATES] = [
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
];

impl TcpState {
    /// From the kernel's number.
    pub fn from_u8(v: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match v {
            0 => None,
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait,
            5 => TimeWait,
            6 => Close,
            7 => CloseWait,
            8 => LastAck,
            9 => Listen,
            10 => Synack,
            _ => return Option::None,
        })
    }

    /// Name as `ipvsadm -L -c` prints it.
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

/// Which way a packet travels relative to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → real server.
    Input,
    /// Real server → client, seen by the director (NAT).
    Output,
}

/// The TCP flags that drive transitions: FIN, SYN, RST and ACK at their bits of the header's
/// flags byte (the others cleared). One byte: the parser stores it with one mask, and the
/// common case, a plain ACK, is one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// ACK alone.
    pub const ACK: TcpFlags = TcpFlags(0x10);

    /// The flags of a TCP header's flags byte (offset 13); the ones that drive no transition
    /// (PSH, URG, ECE, CWR) are dropped.
    #[inline(always)]
    pub const fn from_header_byte(b: u8) -> TcpFlags {
        TcpFlags(b & 0x17)
    }

    /// From the four flags.
    pub fn new(syn: bool, fin: bool, ack: bool, rst: bool) -> TcpFlags {
        let bit = |set: bool, f: TcpFlags| if set { f.0 } else { 0 };
        TcpFlags(
            bit(syn, Self::SYN) | bit(fin, Self::FIN) | bit(ack, Self::ACK) | bit(rst, Self::RST),
        )
    }

    /// Both sets of flags.
    pub const fn with(self, o: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | o.0)
    }

    /// SYN set.
    pub const fn syn(self) -> bool {
        self.0 & Self::SYN.0 != 0
    }

    /// FIN set.
    pub const fn fin(self) -> bool {
        self.0 & Self::FIN.0 != 0
    }

    /// ACK set.
    pub const fn ack(self) -> bool {
        self.0 & Self::ACK.0 != 0
    }

    /// RST set.
    pub const fn rst(self) -> bool {
        self.0 & Self::RST.0 != 0
    }
}

use TcpState::{
    Close as CL, CloseWait as CW, Established as ES, FinWait as FW, LastAck as LA, Listen as LI,
    SynRecv as SR, SynSent as SS, Synack as SA, TimeWait as TW,
};

type Row = [TcpState; TCP_STATES];

// Rows: SYN, FIN, ACK, RST. Columns: current state NO ES SS SR FW TW CL CW LA LI SA.
const INPUT: [Row; 4] = [
    [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR],
    [CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, TW],
    [ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES],
    [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, SR],
];
const OUTPUT: [Row; 4] = [
    [SS, ES, SS, SR, SS, SS, SS, SS, SS, LI, SR],
    [TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW],
    [ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES],
    [CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL],
];
const INPUT_ONLY: [Row; 4] = [
    [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR],
    [CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW],
    [ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES],
    [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL],
];

// The secure table (`tcp_states_dos`, in force while `secure_tcp` is 2 or 3): a connection is
// established only once the server has answered (NAT), and a fresh SYN seen alone (DR, tunnel)
// lands in SYNACK, whose packets keep it there.
const INPUT_DOS: [Row; 4] = [
    [SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SA],
    [CL, CW, SS, TW, TW, TW, CL, CW, LA, LI, SA],
    [ES, ES, SS, SR, FW, TW, CL, CW, CL, LI, SA],
    [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL],
];
const OUTPUT_DOS: [Row; 4] = [
    [SS, ES, SS, SA, SS, SS, SS, SS, SS, LI, SA],
    [TW, FW, SS, TW, FW, TW, CL, TW, LA, LI, TW],
    [ES, ES, SS, ES, FW, TW, CL, CW, LA, ES, ES],
    [CL, CL, SS, CL, CL, TW, CL, CL, CL, CL, CL],
];
const INPUT_ONLY_DOS: [Row; 4] = [
    [SA, ES, ES, SR, SA, SA, SA, SA, SA, SA, SA],
    [CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW],
    [ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES],
    [CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL],
];

/// The next TCP state (`set_tcp_state`). `no_output` is the connection's NOOUTPUT flag (DR and
/// tunnel connections, or NAT before the first reply); `secure`: the secure table is in force
/// (`secure_tcp`, see [`crate::defence`]). Flag precedence RST, SYN, FIN, ACK; a packet with
/// none of them closes the connection.
pub fn tcp_next_state(
    cur: TcpState,
    dir: Direction,
    no_output: bool,
    f: TcpFlags,
    secure: bool,
) -> TcpState {
    let row = if f.rst() {
        3
    } else if f.syn() {
        0
    } else if f.fin() {
        1
    } else if f.ack() {
        2
    } else {
        return CL;
    };
    let table = match (dir, no_output, secure) {
        (Direction::Output, _, false) => &OUTPUT,
        (Direction::Input, true, false) => &INPUT_ONLY,
        (Direction::Input, false, false) => &INPUT,
        (Direction::Output, _, true) => &OUTPUT_DOS,
        (Direction::Input, true, true) => &INPUT_ONLY_DOS,
        (Direction::Input, false, true) => &INPUT_DOS,
    };
    table[row][cur as usize]
}

/// Whether a state counts in ActiveConn (`tcp_state_active_table` of `ip_vs_proto_tcp.c`,
/// mainline since 4.7's "ipvs: count pre-established TCP states as active"; v6.12 alike):
/// SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK. `set_tcp_state` moves a connection between
/// ActiveConn and InActConn whenever its state crosses this line.
pub fn tcp_state_active(s: TcpState) -> bool {
    matches!(s, ES | SS | SR | SA)
}

/// SCTP association states in the kernel's numbering (`IP_VS_SCTP_S_*`), as the real server
/// sees the association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SctpState {
    /// No packet seen yet.
    None = 0,
    /// The client's first INIT, no INIT ACK yet (short timeout for dropped INITs).
    Init1 = 1,
    /// A further INIT from the client.
    Init = 2,
    /// The server's INIT ACK sent, waiting for the COOKIE ECHO.
    CookieSent = 3,
    /// The client's COOKIE ECHO sent, waiting for the COOKIE ACK.
    CookieReplied = 4,
    /// The server sent INIT (an association set up by the server).
    CookieWait = 5,
    /// The client answered the server's INIT.
    Cookie = 6,
    /// The server's COOKIE ECHO sent.
    CookieEchoed = 7,
    /// Established.
    Established = 8,
    /// SHUTDOWN sent by the server.
    ShutdownSent = 9,
    /// SHUTDOWN sent by the client.
    ShutdownReceived = 10,
    /// SHUTDOWN ACK sent by the server.
    ShutdownAckSent = 11,
    /// The INIT was answered with ABORT (short timeout).
    Rejected = 12,
    /// Closed.
    Closed = 13,
}

/// Number of SCTP states.
pub const SCTP_STATES: usize = 14;

const SCTP_NAMES: [&str; SCTP_STATES] = [
    "NONE",
    "INIT1",
    "INIT",
    "C-SENT",
    "C-REPLIED",
    "C-WAIT",
    "COOKIE",
    "C-ECHOED",
    "ESTABLISHED",
    "S-SENT",
    "S-RECEIVED",
    "S-ACK-SENT",
    "REJECTED",
    "CLOSED",
];

impl SctpState {
    /// From the kernel's number.
    pub fn from_u8(v: u8) -> Option<SctpState> {
        use SctpState::*;
        const ALL: [SctpState; SCTP_STATES] = [
            None,
            Init1,
            Init,
            CookieSent,
            CookieReplied,
            CookieWait,
            Cookie,
            CookieEchoed,
            Established,
            ShutdownSent,
            ShutdownReceived,
            ShutdownAckSent,
            Rejected,
            Closed,
        ];
        ALL.get(usize::from(v)).copied()
    }

    /// Name as `ipvsadm -L -c` prints it (`sctp_state_name_table`).
    pub fn name(self) -> &'static str {
        SCTP_NAMES[self as usize]
    }
}

/// What a packet's chunks are to the SCTP state machine (`ipvs_sctp_event_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SctpEvent {
    /// DATA, SACK, HEARTBEAT (ACK), ECNE, CWR and every chunk type the kernel does not name.
    Data = 0,
    /// INIT.
    Init = 1,
    /// INIT ACK.
    InitAck = 2,
    /// COOKIE ECHO.
    CookieEcho = 3,
    /// COOKIE ACK.
    CookieAck = 4,
    /// SHUTDOWN.
    Shutdown = 5,
    /// SHUTDOWN ACK.
    ShutdownAck = 6,
    /// SHUTDOWN COMPLETE.
    ShutdownComplete = 7,
    /// ERROR.
    Error = 8,
    /// ABORT.
    Abort = 9,
}

/// SCTP chunk types (RFC 9260, section 3.2) the state machine and the scheduler look at.
pub mod chunk {
    /// DATA.
    pub const DATA: u8 = 0;
    /// INIT.
    pub const INIT: u8 = 1;
    /// INIT ACK.
    pub const INIT_ACK: u8 = 2;
    /// ABORT.
    pub const ABORT: u8 = 6;
    /// SHUTDOWN.
    pub const SHUTDOWN: u8 = 7;
    /// SHUTDOWN ACK.
    pub const SHUTDOWN_ACK: u8 = 8;
    /// ERROR.
    pub const ERROR: u8 = 9;
    /// COOKIE ECHO.
    pub const COOKIE_ECHO: u8 = 10;
    /// COOKIE ACK.
    pub const COOKIE_ACK: u8 = 11;
    /// SHUTDOWN COMPLETE.
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

impl SctpEvent {
    /// The event of a chunk type (`sctp_events`): the named control chunks, else DATA.
    pub fn of_chunk(t: u8) -> SctpEvent {
        match t {
            chunk::INIT => SctpEvent::Init,
            chunk::INIT_ACK => SctpEvent::InitAck,
            chunk::ABORT => SctpEvent::Abort,
            chunk::SHUTDOWN => SctpEvent::Shutdown,
            chunk::SHUTDOWN_ACK => SctpEvent::ShutdownAck,
            chunk::ERROR => SctpEvent::Error,
            chunk::COOKIE_ECHO => SctpEvent::CookieEcho,
            chunk::COOKIE_ACK => SctpEvent::CookieAck,
            chunk::SHUTDOWN_COMPLETE => SctpEvent::ShutdownComplete,
            _ => SctpEvent::Data,
        }
    }
}

/// The chunks of an SCTP packet that matter: the first chunk's type (the scheduler's test) and
/// the packet's event (`set_sctp_state`: the first chunk's, except that an ABORT bundled right
/// after a COOKIE ECHO or COOKIE ACK makes it ABORT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpChunks {
    /// Type of the first chunk.
    pub first: u8,
    /// The state machine's event.
    pub event: SctpEvent,
}

type SctpRow = [SctpState; SCTP_STATES];

use SctpState::{
    Closed as sCL, Cookie as sCO, CookieEchoed as sCE, CookieReplied as sCR, CookieSent as sCS,
    CookieWait as sCW, Established as sES, Init as sIN, Init1 as sI1, Rejected as sRJ,
    ShutdownAckSent as sSA, ShutdownReceived as sSR, ShutdownSent as sSS,
};

// Rows: the events in `SctpEvent` order. Columns: current state NO I1 IN CS CR CW CO CE ES SS SR
// SA RJ CL. v6.12 `ip_vs_proto_sctp.c`, `sctp_states`.
#[rustfmt::skip]
const SCTP_INPUT: [SctpRow; 10] = [
    [sES, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sI1, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sIN, sIN],
    [sCW, sCW, sCW, sCS, sCR, sCO, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCR, sIN, sIN, sCR, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sES, sI1, sIN, sCS, sCR, sCW, sCO, sES, sES, sSS, sSR, sSA, sRJ, sCL],
    [sSR, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sSR, sSS, sSR, sSA, sRJ, sCL],
    [sCL, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sES, sCL, sSR, sCL, sRJ, sCL],
    [sCL, sCL, sCL, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sCL, sRJ, sCL],
    [sCL, sI1, sIN, sCS, sCR, sCW, sCO, sCL, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCL, sCL, sCL, sCL, sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
];
#[rustfmt::skip]
const SCTP_OUTPUT: [SctpRow; 10] = [
    [sES, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCW, sCW, sCW, sCW, sCW, sCW, sCW, sCW, sES, sCW, sCW, sCW, sCW, sCW],
    [sCS, sCS, sCS, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCE, sCE, sCE, sCE, sCE, sCE, sCE, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sES, sES, sES, sES, sES, sES, sES, sES, sES, sSS, sSR, sSA, sRJ, sCL],
    [sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSR, sSA, sRJ, sCL],
    [sSA, sSA, sSA, sSA, sSA, sCW, sCO, sCE, sES, sSA, sSA, sSA, sRJ, sCL],
    [sCL, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCL, sCL, sCL, sCL, sCL, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
];
#[rustfmt::skip]
const SCTP_INPUT_ONLY: [SctpRow; 10] = [
    [sES, sI1, sIN, sCS, sCR, sES, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sI1, sIN, sIN, sIN, sIN, sIN, sCO, sCE, sES, sSS, sSR, sSA, sIN, sIN],
    [sCE, sCE, sCE, sCE, sCE, sCE, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sES, sES, sES, sES, sES, sES, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sES, sI1, sIN, sES, sES, sCW, sES, sES, sES, sSS, sSR, sSA, sRJ, sCL],
    [sSR, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sSR, sSS, sSR, sSA, sRJ, sCL],
    [sCL, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sCL, sCL, sSR, sCL, sRJ, sCL],
    [sCL, sCL, sCL, sCL, sCL, sCW, sCO, sCE, sES, sSS, sCL, sCL, sRJ, sCL],
    [sCL, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL],
    [sCL, sCL, sCL, sCL, sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL],
];

/// The next SCTP state (`set_sctp_state`); `no_output` as for [`tcp_next_state`].
pub fn sctp_next_state(cur: SctpState, dir: Direction, no_output: bool, e: SctpEvent) -> SctpState {
    let table = match (dir, no_output) {
        (Direction::Output, _) => &SCTP_OUTPUT,
        (Direction::Input, true) => &SCTP_INPUT_ONLY,
        (Direction::Input, false) => &SCTP_INPUT,
    };
    table[e as usize][cur as usize]
}

/// Whether an SCTP state counts in ActiveConn: ESTABLISHED only (`set_sctp_state`).
pub fn sctp_state_active(s: SctpState) -> bool {
    s == sES
}

/// A connection state's name in `-L -c` for its protocol.
pub fn state_name(proto: u8, state: u8) -> &'static str {
    if proto == 132 {
        SctpState::from_u8(state).map_or("ERR!", SctpState::name)
    } else {
        TcpState::from_u8(state).map_or("ERR!", TcpState::name)
    }
}

/// Per-state timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Indexed by [`TcpState`].
    pub tcp: [u32; TCP_STATES],
    /// The single UDP state.
    pub udp: u32,
    /// Indexed by [`SctpState`] (`sctp_timeouts`; `--set` changes none of them).
    pub sctp: [u32; SCTP_STATES],
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp: [2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120],
            udp: 300,
            // NONE 2 s, INIT1 and REJECTED 4 s, ESTABLISHED 15 min, every other state the
            // maximum RTO plus a second (61 s).
            sctp: [2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61],
        }
    }
}

impl Timeouts {
    /// `--set tcp tcpfin udp`; 0 leaves a value unchanged.
    pub fn set(&mut self, tcp: u32, tcpfin: u32, udp: u32) {
        if tcp != 0 {
            self.tcp[ES as usize] = tcp;
        }
        if tcpfin != 0 {
            self.tcp[FW as usize] = tcpfin;
        }
        if udp != 0 {
            self.udp = udp;
        }
    }

    /// What `--timeout` shows: (tcp, tcpfin, udp).
    pub fn shown(&self) -> (u32, u32, u32) {
        (self.tcp[ES as usize], self.tcp[FW as usize], self.udp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::None as NO;

    /// The data path's shortcut (datapath::transition) relies on it.
    #[test]
    fn ack_keeps_established() {
        for dir in [Direction::Input, Direction::Output] {
            for no_output in [false, true] {
                for secure in [false, true] {
                    assert_eq!(
                        tcp_next_state(ES, dir, no_output, TcpFlags::ACK, secure),
                        ES
                    );
                }
            }
        }
    }

    const SYN: TcpFlags = TcpFlags::SYN;
    const ACK: TcpFlags = TcpFlags::ACK;
    const FIN: TcpFlags = TcpFlags::FIN.with(TcpFlags::ACK);
    const SYNACK: TcpFlags = TcpFlags::SYN.with(TcpFlags::ACK);

    #[test]
    fn flags_from_the_header_byte() {
        // PSH|ACK is a plain ACK to the state machine; CWR, ECE, URG are dropped too.
        assert_eq!(TcpFlags::from_header_byte(0x18), TcpFlags::ACK);
        assert_eq!(
            TcpFlags::from_header_byte(0xff),
            TcpFlags::new(true, true, true, true)
        );
        let f = TcpFlags::from_header_byte(0x12);
        assert!(f.syn() && f.ack() && !f.fin() && !f.rst());
        assert_eq!(f, SYNACK);
        assert_eq!(TcpFlags::new(false, true, true, false), FIN);
    }

    #[test]
    fn nat_handshake_and_close() {
        let mut s = NO;
        s = tcp_next_state(s, Direction::Input, true, SYN, false);
        assert_eq!(s, SR);
        s = tcp_next_state(s, Direction::Output, true, SYNACK, false); // SYN wins over ACK
        assert_eq!(s, SR);
        s = tcp_next_state(s, Direction::Input, false, ACK, false);
        assert_eq!(s, ES);
        s = tcp_next_state(s, Direction::Input, false, FIN, false);
        assert_eq!(s, CW);
        s = tcp_next_state(s, Direction::Output, false, FIN, false);
        assert_eq!(s, TW);
    }

    #[test]
    fn dr_input_only_fin_goes_fin_wait() {
        let s = tcp_next_state(ES, Direction::Input, true, FIN, false);
        assert_eq!(s, FW);
        assert_eq!(
            tcp_next_state(ES, Direction::Input, true, TcpFlags::default(), false),
            CL
        );
        let rst = TcpFlags::RST;
        assert_eq!(tcp_next_state(SA, Direction::Input, true, rst, false), CL);
        assert_eq!(tcp_next_state(SA, Direction::Input, false, rst, false), SR);
    }

    /// The secure table differs from the normal one exactly where the reference (§4.2) says.
    #[test]
    fn the_secure_table_differs_where_the_kernel_s_does() {
        use Direction::{Input, Output};
        let flags = [SYN, FIN, ACK, TcpFlags::RST];
        let mut diffs = Vec::new();
        for (dir, no_output) in [(Input, false), (Output, false), (Input, true)] {
            for (row, &f) in flags.iter().enumerate() {
                for cur in 0..TCP_STATES as u8 {
                    let cur = TcpState::from_u8(cur).unwrap();
                    let (a, b) = (
                        tcp_next_state(cur, dir, no_output, f, false),
                        tcp_next_state(cur, dir, no_output, f, true),
                    );
                    if a != b {
                        diffs.push((dir, no_output, row, cur, b));
                    }
                }
            }
        }
        let mut want = vec![
            (Input, false, 0, SA, SA),
            (Input, false, 1, SA, SA),
            (Input, false, 2, SR, SR),
            (Input, false, 2, SA, SA),
            (Input, false, 3, SA, CL),
            (Output, false, 0, SR, SA),
            (Output, false, 0, SA, SA),
        ];
        for cur in [NO, FW, TW, CL, CW, LA, LI, SA] {
            want.push((Input, true, 0, cur, SA));
        }
        assert_eq!(diffs.len(), want.len(), "{diffs:?}");
        for w in want {
            assert!(diffs.contains(&w), "{w:?} missing from {diffs:?}");
        }
        // A DR SYN lands in SYNACK, and its ACK establishes it.
        let s = tcp_next_state(NO, Input, true, SYN, true);
        assert_eq!(s, SA);
        assert_eq!(tcp_next_state(s, Input, true, ACK, true), ES);
        // NAT: the client's ACK alone does not establish, the server's answer does.
        let s = tcp_next_state(NO, Input, true, SYN, true);
        assert_eq!(tcp_next_state(SR, Input, false, ACK, true), SR);
        assert_eq!(tcp_next_state(SR, Output, true, SYNACK, true), SA);
        assert_eq!(s, SA);
    }

    /// Rows of mainline's `sctp_states` (v6.12), spot-checked: an association set up by the
    /// client seen both ways (NAT) and input only (DR), the server-initiated set-up, REJECTED.
    #[test]
    fn sctp_transitions_follow_the_kernel() {
        use Direction::{Input, Output};
        use SctpEvent as E;
        use SctpState as S;
        let run = |steps: &[(Direction, bool, E, S)]| {
            let mut s = S::None;
            for (n, &(dir, no_output, e, want)) in steps.iter().enumerate() {
                s = sctp_next_state(s, dir, no_output, e);
                assert_eq!(s, want, "step {n}");
            }
        };
        run(&[
            (Input, true, E::Init, S::Init1),
            (Input, true, E::Init, S::Init),
            (Output, true, E::InitAck, S::CookieSent),
            (Input, false, E::CookieEcho, S::CookieReplied),
            (Output, false, E::CookieAck, S::Established),
            (Output, false, E::Shutdown, S::ShutdownSent),
            (Input, false, E::ShutdownAck, S::Closed),
        ]);
        run(&[
            (Input, true, E::Init, S::Init1),
            (Input, true, E::CookieEcho, S::Established),
            (Input, true, E::Data, S::Established),
            (Input, true, E::Shutdown, S::ShutdownReceived),
            (Input, true, E::ShutdownComplete, S::Closed),
            (Input, true, E::Init, S::Init),
        ]);
        run(&[
            (Output, false, E::Init, S::CookieWait),
            (Input, false, E::InitAck, S::Cookie),
            (Output, false, E::CookieEcho, S::CookieEchoed),
            (Input, false, E::CookieAck, S::Established),
        ]);
        run(&[
            (Input, true, E::Init, S::Init1),
            (Output, false, E::Abort, S::Rejected),
            (Input, false, E::Init, S::Init),
        ]);
        assert!(sctp_state_active(S::Established));
        assert!(!sctp_state_active(S::CookieReplied) && !sctp_state_active(S::Init1));
        let names: Vec<_> = (0..SCTP_STATES as u8)
            .map(|n| SctpState::from_u8(n).unwrap().name())
            .collect();
        assert_eq!(
            names.join(" "),
            "NONE INIT1 INIT C-SENT C-REPLIED C-WAIT COOKIE C-ECHOED \
            ESTABLISHED S-SENT S-RECEIVED S-ACK-SENT REJECTED CLOSED"
        );
        assert_eq!(SctpState::from_u8(14), None);
        assert_eq!(state_name(132, 14), "ERR!");
        assert_eq!(Timeouts::default().sctp[S::Established as usize], 900);
        assert_eq!(Timeouts::default().sctp[S::Init1 as usize], 4);
    }

    #[test]
    fn set_timeouts() {
        let mut t = Timeouts::default();
        assert_eq!(t.shown(), (900, 120, 300));
        t.set(0, 30, 0);
        assert_eq!(t.shown(), (900, 30, 300));
    }
}
