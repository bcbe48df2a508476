//! Node's event loop: which server request an outgoing call belongs to, from Node's async ids.
//!
//! An event loop serves many requests on one thread, so the thread says nothing. Node numbers
//! every async resource from one counter and, at every moment, knows which resource's callback
//! runs (its execution id) and which resource caused that one (its trigger id); the capture reads
//! the three at each socket call of a Node main thread, and numbers the thread's socket reads.
//!
//! A call is the child of server request R, read on connection C, only when all of these hold:
//! - C's setup allocated the trigger id: the call runs in a callback of a resource made when C
//!   was accepted (its socket, its HTTP parser) or, over TLS, when its handshake ended (an HTTPS
//!   server's parser), and such resources work for C alone;
//! - the execution id was allocated after R's bytes were read: that resource was made while
//!   C's resources were working on R, since C's next request had not been read;
//! - no socket read came between R's read and the call: the call runs in the same loop turn, so
//!   a resource made during R and kept for later (a pooled client socket) cannot be taking a
//!   later request's call for R's;
//! - R's read held R's head alone, from its first byte (no other request's bytes in the turn).
//!
//! A resource of C's setup running in R's turn (its parser calling the handler) works for R for
//! the same reasons, so an execution id in C's setup counts as made for R too.
//!
//! A call on a client connection opened for it runs a turn later, when the connection is up: its
//! trigger is then the new socket, whose id says nothing by itself. The capture reports each TCP
//! socket object a main thread makes, with the ids of the callback making it; a socket made by
//! the rules above is R's, and the first request on the connection whose send has that socket as
//! its trigger is R's call. Only the first: Node's agent binds a new socket to the request it
//! was made for, while a later request on it (a pooled connection handed on from its own
//! callbacks) may run with the socket as its trigger for another request's sake.
//!
//! Calls made later still (after a timer, after a promise settles, after another call's
//! response) stay unlinked: the ids then no longer prove which request caused them.
//!
//! While ctxprop injects, the capture applies the same rule in the kernel as each write begins
//! (`node_send_enter` in capture.bpf.c), so the context on the wire is the request's; a read
//! holds a request alone there only when its head is whole and no byte passes its body.

use seam_abi::{async_id, Event, NodeAccept, NODE_SECURED};

use crate::idhash::IdMap;

/// Accepted connections whose first bytes have not been seen yet, per process: bounded so a
/// process that accepts and never reads cannot grow it.
const MAX_PENDING_ACCEPTS: usize = 4096;

/// Client sockets made for a request and not used yet: bounded so sockets that never connect
/// (or never send) cannot grow it.
const MAX_MADE_SOCKETS: usize = 4096;

/// Node's async ids at one socket call of a main thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeCall {
    pub exec: Option<u64>,
    pub trigger: Option<u64>,
    /// The last id allocated (0 when none yet).
    pub last_id: u64,
    pub read_seq: u32,
}

impl NodeCall {
    pub fn of(ev: &Event) -> Option<Self> {
        let a = &ev.async_ctx;
        (a.valid == 1).then(|| Self {
            exec: async_id(a.exec_id),
            trigger: async_id(a.trigger_id),
            last_id: async_id(a.last_id).unwrap_or(0),
            read_seq: a.read_seq,
        })
    }
}

/// The ids one callback of a connection's setup allocated: those in (before, after].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    before: u64,
    after: u64,
}

impl IdRange {
    pub fn of(acc: &NodeAccept) -> Option<Self> {
        let last_before = async_id(acc.before)?;
        // found in the connection's own callback: the counter then was its socket's id
        let before = last_before - u64::from(acc.learned == 1);
        let after = async_id(acc.after)?;
        (after > before).then_some(Self { before, after })
    }

    fn holds(&self, id: u64) -> bool {
        self.before < id && id <= self.after
    }
}

/// The ids a connection's setup allocated: in its accepted callback and, over TLS, in the
/// callback that ended its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupIds {
    accepted: IdRange,
    secured: Option<IdRange>,
}

impl SetupIds {
    fn holds(&self, id: u64) -> bool {
        self.accepted.holds(id) || self.secured.is_some_and(|r| r.holds(id))
    }
}

/// Which callback of a connection's setup an accept record describes.
pub fn is_secured(acc: &NodeAccept) -> bool {
    acc.phase == NODE_SECURED
}

/// The last server request a Node main thread read, when its read held that request alone and
/// its connection's setup is known.
#[derive(Clone, Copy, Debug)]
struct Turn {
    read_seq: u32,
    /// The last async id allocated when the request had been read.
    read_at_id: u64,
    conn: u64,
    seq: u64,
    setup: SetupIds,
}

#[derive(Debug, Default)]
pub struct NodeLoops {
    /// conn_id → the accepting process and the setup ids of the connection, until its first bytes.
    accepts: IdMap<u64, (u32, SetupIds)>,
    turns: IdMap<u32, Turn>,
    /// (pid, async id of a TCP socket object) → the server request (connection, seq) it was
    /// made for.
    made_sockets: IdMap<(u32, u64), (u64, u64)>,
}

impl NodeLoops {
    /// Process `pid` set up connection `conn` it accepted, allocating `ids`.
    pub fn accepted(&mut self, pid: u32, conn: u64, ids: IdRange) {
        if self.accepts.len() >= MAX_PENDING_ACCEPTS {
            self.accepts.clear();
        }
        let setup = SetupIds {
            accepted: ids,
            secured: None,
        };
        self.accepts.insert(conn, (pid, setup));
    }

    /// The end of accepted connection `conn`'s TLS handshake allocated `ids`.
    pub fn secured(&mut self, conn: u64, ids: IdRange) {
        if let Some((_, setup)) = self.accepts.get_mut(&conn) {
            setup.secured = Some(ids);
        }
    }

    /// The setup of accepted connection `conn`, taken by its first bytes.
    pub fn take_setup(&mut self, conn: u64) -> Option<SetupIds> {
        if self.accepts.is_empty() {
            return None;
        }
        self.accepts.remove(&conn).map(|(_, setup)| setup)
    }

    /// A server request `seq` on `conn` (whose setup ids are `setup`, when known) started in a
    /// read that held it alone. Without a setup nothing can link to it, and nothing is kept: the
    /// read itself moved the thread's read count past any earlier request's.
    pub fn request_read(
        &mut self,
        pid: u32,
        call: &NodeCall,
        conn: u64,
        seq: u64,
        setup: Option<SetupIds>,
    ) {
        let Some(setup) = setup else {
            return;
        };
        self.turns.insert(
            pid,
            Turn {
                read_seq: call.read_seq,
                read_at_id: call.last_id,
                conn,
                seq,
                setup,
            },
        );
    }

    /// The server request (connection, seq) a call belongs to, by the rules in this module's
    /// comment.
    pub fn parent(&self, pid: u32, call: &NodeCall) -> Option<(u64, u64)> {
        let turn = self.turns.get(&pid)?;
        let exec = call.exec?;
        let made_for_request = exec > turn.read_at_id || turn.setup.holds(exec);
        let same_turn = turn.read_seq == call.read_seq && made_for_request;
        (same_turn && turn.setup.holds(call.trigger?)).then_some((turn.conn, turn.seq))
    }

    /// A main thread is making a TCP socket object (its id is the next one) in the callback
    /// `call` describes: when that callback works for a request, the socket is that request's.
    pub fn socket_made(&mut self, pid: u32, call: &NodeCall) {
        let Some(request) = self.parent(pid, call).filter(|_| call.last_id > 0) else {
            return;
        };
        if self.made_sockets.len() >= MAX_MADE_SOCKETS {
            self.made_sockets.clear();
        }
        self.made_sockets.insert((pid, call.last_id + 1), request);
    }

    /// The server request the first request on a client connection belongs to: the one its
    /// socket was made for, when the send runs in that socket's callback. Taken once.
    pub fn first_call_parent(&mut self, pid: u32, call: &NodeCall) -> Option<(u64, u64)> {
        if self.made_sockets.is_empty() {
            return None;
        }
        self.made_sockets.remove(&(pid, call.trigger?))
    }

    pub fn process_exited(&mut self, pid: u32) {
        self.turns.remove(&pid);
        self.made_sockets.retain(|(p, _), _| *p != pid);
        self.accepts.retain(|_, (owner, _)| *owner != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(exec: u64, trigger: u64, last_id: u64, read_seq: u32) -> NodeCall {
        NodeCall {
            exec: Some(exec),
            trigger: Some(trigger),
            last_id,
            read_seq,
        }
    }

    fn range(before: u64, after: u64) -> Option<IdRange> {
        IdRange::of(&NodeAccept {
            before: (before as f64).to_bits(),
            after: (after as f64).to_bits(),
            ..NodeAccept::default()
        })
    }

    fn setup(before: u64, after: u64) -> Option<SetupIds> {
        range(before, after).map(|accepted| SetupIds {
            accepted,
            secured: None,
        })
    }

    /// Connection 7 was set up with ids 15 and 16 (its socket, its parser) — or with `setup` —;
    /// its request 3 was read when the counter stood at 70, as the thread's fifth socket read.
    fn loops_with(setup: Option<SetupIds>) -> NodeLoops {
        let mut n = NodeLoops::default();
        n.request_read(1, &call(0, 0, 70, 5), 7, 3, setup);
        n
    }

    fn loops() -> NodeLoops {
        loops_with(setup(14, 16))
    }

    #[test]
    fn a_call_in_the_requests_turn_from_its_connections_parser_is_its_child() {
        // a tick made by the handler (parser 16's callback) sends in the same turn
        let got = loops().parent(1, &call(77, 16, 78, 5));
        assert_eq!(got, Some((7, 3)));
    }

    #[test]
    fn a_call_after_another_socket_read_is_not_linked() {
        let got = loops().parent(1, &call(77, 16, 78, 6));
        assert_eq!(got, None);
    }

    #[test]
    fn a_resource_made_before_the_request_was_read_is_not_linked() {
        // a timer set while an earlier request ran fires now: its id predates this read
        let got = loops().parent(1, &call(60, 16, 78, 5));
        assert_eq!(got, None);
    }

    #[test]
    fn the_connections_parser_running_in_the_requests_turn_works_for_it() {
        // the handler itself (parser 16, called from socket 15's read) makes the call
        assert_eq!(loops().parent(1, &call(16, 15, 78, 5)), Some((7, 3)));
        // the parser running in a later turn (after another read) is not proof
        assert_eq!(loops().parent(1, &call(16, 15, 78, 6)), None);
    }

    #[test]
    fn the_first_request_on_a_socket_made_for_a_request_is_its_child() {
        let mut n = loops();
        // the handler makes socket 79 (the counter stands at 78)
        n.socket_made(1, &call(16, 15, 78, 5));
        // a turn later, the connect callback (id 81, triggered by the socket) sends the request
        let first = call(81, 79, 83, 9);
        assert_eq!(n.parent(1, &first), None, "not the request's turn any more");
        assert_eq!(n.first_call_parent(1, &first), Some((7, 3)));
        assert_eq!(n.first_call_parent(1, &first), None, "taken once");
    }

    #[test]
    fn a_socket_made_outside_a_requests_turn_is_nobodys() {
        let mut n = loops();
        // made by a timer set before the request was read, in the request's turn
        n.socket_made(1, &call(60, 40, 78, 5));
        // made by the connection's parser after another socket read
        n.socket_made(1, &call(16, 15, 78, 6));
        // made in another process
        n.socket_made(2, &call(16, 15, 78, 5));
        for pid in [1, 2] {
            assert_eq!(
                n.first_call_parent(pid, &call(81, 79, 83, 9)),
                None,
                "pid {pid}"
            );
        }
        // and a process's sockets go with it
        n.socket_made(1, &call(16, 15, 78, 5));
        n.process_exited(1);
        assert_eq!(n.first_call_parent(1, &call(81, 79, 83, 9)), None);
    }

    /// An HTTPS connection: accepted with ids 15-16 (socket, TLS wrap); its handshake ended in
    /// the wrap's callback, which made parser 40 while other connections were being served.
    fn tls_loops(secured: bool) -> NodeLoops {
        let mut n = NodeLoops::default();
        n.accepted(1, 7, range(14, 16).expect("range"));
        if secured {
            n.secured(7, range(39, 41).expect("range"));
        }
        let setup = n.take_setup(7);
        n.request_read(1, &call(0, 0, 70, 5), 7, 3, setup);
        n
    }

    #[test]
    fn an_https_parser_made_at_the_handshakes_end_works_for_its_connection() {
        // the handler runs in parser 40's callback, triggered by the TLS wrap 16
        assert_eq!(
            tls_loops(true).parent(1, &call(40, 16, 78, 5)),
            Some((7, 3))
        );
        // without the handshake's ids the parser predates the request: nothing proves it
        assert_eq!(tls_loops(false).parent(1, &call(40, 16, 78, 5)), None);
        // ids made between the two callbacks (other connections' work) are not the setup's
        assert_eq!(tls_loops(true).parent(1, &call(30, 16, 78, 5)), None);
        assert_eq!(tls_loops(true).parent(1, &call(40, 30, 78, 5)), None);
    }

    #[test]
    fn a_handshake_of_a_connection_not_pending_changes_nothing() {
        let mut n = NodeLoops::default();
        n.secured(7, range(39, 41).expect("range"));
        assert_eq!(n.take_setup(7), None);
        n.accepted(1, 7, range(14, 16).expect("range"));
        assert_eq!(n.take_setup(7), setup(14, 16));
        n.secured(7, range(39, 41).expect("range"));
        assert_eq!(n.take_setup(7), None, "taken by its first bytes already");
    }

    #[test]
    fn a_trigger_outside_the_connections_setup_is_not_linked() {
        // a client socket's callback (socket 19): only the socket's own record can place it
        for trigger in [14, 17, 19] {
            let got = loops().parent(1, &call(77, trigger, 78, 5));
            assert_eq!(got, None, "trigger {trigger}");
        }
    }

    #[test]
    fn unknown_ids_or_setups_never_link() {
        let n = loops();
        let no_exec = NodeCall {
            exec: None,
            ..call(77, 16, 78, 5)
        };
        assert_eq!(n.parent(1, &no_exec), None);
        assert_eq!(loops_with(None).parent(1, &call(77, 16, 78, 5)), None);
        assert_eq!(n.parent(2, &call(77, 16, 78, 5)), None);
        assert_eq!(setup(16, 16), None, "an empty setup holds nothing");
    }

    #[test]
    fn a_setup_found_in_its_own_callback_holds_its_socket() {
        let learned = |learned| {
            IdRange::of(&NodeAccept {
                before: 15f64.to_bits(),
                after: 17f64.to_bits(),
                learned,
                phase: 0,
            })
        };
        assert_eq!(learned(1), range(14, 17));
        assert_eq!(learned(0), range(15, 17));
        let unknown_before = NodeAccept {
            after: 17f64.to_bits(),
            ..NodeAccept::default()
        };
        assert_eq!(
            IdRange::of(&unknown_before),
            None,
            "no lower bound, no setup"
        );
    }

    #[test]
    fn accepts_are_taken_once_and_forgotten_with_their_process() {
        let mut n = loops();
        let ids = range(14, 16).expect("range");
        n.accepted(1, 9, ids);
        n.accepted(2, 10, ids);
        assert_eq!(n.take_setup(9), setup(14, 16));
        assert_eq!(n.take_setup(9), None);
        n.process_exited(2);
        assert_eq!(n.take_setup(10), None);
        assert_eq!(n.parent(1, &call(77, 16, 78, 5)), Some((7, 3)));
        n.process_exited(1);
        assert_eq!(n.parent(1, &call(77, 16, 78, 5)), None);
    }
}
