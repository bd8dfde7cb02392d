//! ICMP errors about translated flows, both ways.
//!
//! An error quotes the header of the packet it is about, as that packet was
//! when the error was raised:
//! - towards the client (a backend's port unreachable, a router's
//!   fragmentation needed or time exceeded): the quote is a translated
//!   forward packet, (client or hairpin address):translated port →
//!   backend. Seen backwards it is the flow's reply key;
//! - from the client (its port unreachable for a reply it has no socket
//!   for): the quote is a reply as the client got it, ClusterSetIP → client.
//!   Seen backwards it is the flow's forward key.
//!
//! Either way the entry found holds the rewrite of the direction opposite to
//! the quote's, so the quote becomes that rewrite seen backwards, and an
//! outer address equal to the entry's key address becomes the entry's: the
//! error then names the flow as its receiver knows it, and the client's
//! socket learns its path MTU or its error. A router's address stays.
use mcs_common::{CtKey, CtValue};

use crate::{
    conntrack::{self, nat_tuple},
    nat::{self, RewriteFailed},
    parse::IcmpError,
    pkt::Pkt,
};

/// Translates `err` with the entry of direction `dir` that its quoted
/// header, seen backwards, is the key of. Returns that entry, or `None`
/// (nothing rewritten) when no tracked flow matches the quote.
#[inline(always)]
pub fn translate<C: Pkt>(ctx: &C, err: &IcmpError, dir: u8) -> Result<Option<CtValue>, RewriteFailed> {
    let Some((key, entry)) = find(err, dir) else {
        return Ok(None);
    };
    rewrite(ctx, err, &key, &entry)?;
    Ok(Some(entry))
}

/// The entry of direction `dir` whose key is `err`'s quote seen backwards,
/// with that key; `None` when no tracked flow matches.
#[inline(always)]
pub fn find(err: &IcmpError, dir: u8) -> Option<(CtKey, CtValue)> {
    let q = &err.quoted;
    let key = conntrack::key(&q.tuple.reversed(), q.proto, dir);
    conntrack::peek(&key).map(|entry| (key, entry))
}

/// Rewrites `err` with the entry `entry` at `key` that [`find`] returned.
#[inline(always)]
pub fn rewrite<C: Pkt>(ctx: &C, err: &IcmpError, key: &CtKey, entry: &CtValue) -> Result<(), RewriteFailed> {
    let quoted = nat_tuple(entry).reversed();
    let saddr = if err.saddr == key.saddr { entry.nat_saddr } else { err.saddr };
    let daddr = if err.daddr == key.daddr { entry.nat_daddr } else { err.daddr };
    nat::rewrite_icmp(ctx, err, &quoted, (saddr, daddr))
}
