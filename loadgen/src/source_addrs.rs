//! `--source-ips`: the local addresses new connections are bound to, round-robin,
//! so a run (or a limits case) can come from many clients at once. Per-IP limits
//! can only be tested, and real traffic only imitated, this way.
//!
//! The grammar is a comma-separated list of items, each an address
//! (`127.0.0.5`), an inclusive range (`127.0.0.2-127.0.0.40`) or a CIDR block
//! (`127.0.0.0/28`, its usable hosts: without the network and broadcast addresses
//! in IPv4, as `ipnet` counts them). IPv4 or IPv6, one family per list: a server
//! is reached over one family, and a socket bound to the other cannot reach it.
//!
//! On Linux the whole of 127.0.0.0/8 answers on `lo`, so tests can use many
//! sources without configuring anything; elsewhere the addresses must be on an
//! interface of this host ([`SourceAddrs::check_local`] names one that is not).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::{IpAddrRange, IpNet, Ipv4AddrRange, Ipv6AddrRange};
use tokio::net::{TcpSocket, TcpStream};

/// Most addresses a list may hold: a /16 of IPv4, far more than any per-IP limit
/// test needs, and few enough that the per-source counts stay a small table.
pub const MAX_SOURCE_ADDRS: usize = 65_536;

/// Why a `--source-ips` list was refused; each names the item at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceAddrsError {
    #[error("the list of source addresses is empty")]
    Empty,
    #[error("an empty item in {list:?} (two commas, or one at an end)")]
    EmptyItem { list: String },
    #[error("{item:?} is not an address, a range (A-B) or a CIDR block (A/N)")]
    Malformed { item: String },
    #[error("{item:?}: the range runs backwards ({start} comes after {end})")]
    Reversed {
        item: String,
        start: IpAddr,
        end: IpAddr,
    },
    #[error("{item:?}: a range's two ends must both be IPv4 or both IPv6")]
    RangeFamilies { item: String },
    #[error("{item:?} cannot be a source address ({why})")]
    Unusable { item: String, why: &'static str },
    #[error("{item:?} holds no usable address")]
    NoHosts { item: String },
    #[error("{item:?} repeats {addr}, already in the list")]
    Duplicate { item: String, addr: IpAddr },
    #[error("{item:?} brings the list over {MAX_SOURCE_ADDRS} addresses")]
    TooMany { item: String },
    #[error("{item:?} is {this} but the list began with {first}: use one family, the server's")]
    MixedFamilies {
        item: String,
        this: &'static str,
        first: &'static str,
    },
    #[error(
        "{addr} is not an address of this host ({error}); use addresses of its interfaces (on Linux all of 127.0.0.0/8 is on lo)"
    )]
    NotLocal { addr: IpAddr, error: String },
    #[error(
        "{addr} is {this} but the server {server} is {other}: use addresses of the server's family"
    )]
    ServerFamily {
        addr: IpAddr,
        this: &'static str,
        server: SocketAddr,
        other: &'static str,
    },
    #[error("{addr} is a loopback address and cannot reach {server}, which is not one")]
    LoopbackToRemote { addr: IpAddr, server: SocketAddr },
}

/// The source addresses of a run and the cursor that deals them out. Clones share
/// the cursor, so every shard's connections together go round the list once
/// before any address is used twice.
#[derive(Debug, Clone)]
pub struct SourceAddrs {
    addrs: Arc<[IpAddr]>,
    cursor: Arc<AtomicUsize>,
}

impl SourceAddrs {
    /// Parses a `--source-ips` list (see the module documentation).
    pub fn parse(spec: &str) -> Result<SourceAddrs, SourceAddrsError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(SourceAddrsError::Empty);
        }
        let mut list = AddrList::default();
        for raw in spec.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                return Err(SourceAddrsError::EmptyItem { list: spec.into() });
            }
            list.extend(item, parse_item(item)?)?;
        }
        Ok(SourceAddrs {
            addrs: list.addrs.into(),
            cursor: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Every address, in the order of the list.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// Binds a socket to each address in turn: the first this host does not own
    /// (`EADDRNOTAVAIL`) is named, before a run rather than as a run of failed
    /// connections.
    pub fn check_local(&self) -> Result<(), SourceAddrsError> {
        for &addr in self.addrs.iter() {
            check_bindable(addr).map_err(|e| SourceAddrsError::NotLocal {
                addr,
                error: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Whether connections from these addresses can reach `server` at all: the
    /// same family, and no loopback source for a server off this host.
    pub fn check_reaches(&self, server: SocketAddr) -> Result<(), SourceAddrsError> {
        let first = self.addrs[0];
        if first.is_ipv4() != server.is_ipv4() {
            return Err(SourceAddrsError::ServerFamily {
                addr: first,
                this: family(first),
                server,
                other: family(server.ip()),
            });
        }
        if let Some(&addr) = self.addrs.iter().find(|a| a.is_loopback())
            && !server.ip().is_loopback()
        {
            return Err(SourceAddrsError::LoopbackToRemote { addr, server });
        }
        Ok(())
    }

    /// The address for the next connection, whichever shard opens it.
    pub fn next(&self) -> IpAddr {
        // Relaxed: the cursor only has to hand out distinct turns; fetch_add wraps
        // at usize::MAX, where the round-robin merely restarts at some address.
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.addrs[turn % self.addrs.len()]
    }
}

/// The addresses parsed so far, with what later items are checked against.
#[derive(Default)]
struct AddrList {
    addrs: Vec<IpAddr>,
    seen: std::collections::HashSet<IpAddr>,
}

impl AddrList {
    /// Adds one item's addresses, refusing a second family, a repeat and a list
    /// over [`MAX_SOURCE_ADDRS`]; never enumerates more than that many.
    fn extend(&mut self, item: &str, range: IpAddrRange) -> Result<(), SourceAddrsError> {
        let mut any = false;
        for addr in range {
            any = true;
            if let Some(first) = self.addrs.first()
                && first.is_ipv4() != addr.is_ipv4()
            {
                return Err(SourceAddrsError::MixedFamilies {
                    item: item.into(),
                    this: family(addr),
                    first: family(*first),
                });
            }
            if self.addrs.len() == MAX_SOURCE_ADDRS {
                return Err(SourceAddrsError::TooMany { item: item.into() });
            }
            if !self.seen.insert(addr) {
                return Err(SourceAddrsError::Duplicate {
                    item: item.into(),
                    addr,
                });
            }
            self.addrs.push(addr);
        }
        if !any {
            return Err(SourceAddrsError::NoHosts { item: item.into() });
        }
        Ok(())
    }
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// One item of the list as the addresses it stands for (not yet enumerated).
fn parse_item(item: &str) -> Result<IpAddrRange, SourceAddrsError> {
    let malformed = || SourceAddrsError::Malformed { item: item.into() };
    if item.contains('/') {
        let net: IpNet = item.parse().map_err(|_| malformed())?;
        check_usable(item, net.network())?;
        return Ok(net.hosts());
    }
    if let Some((a, b)) = item.split_once('-') {
        let start: IpAddr = a.trim().parse().map_err(|_| malformed())?;
        let end: IpAddr = b.trim().parse().map_err(|_| malformed())?;
        check_usable(item, start)?;
        check_usable(item, end)?;
        return range(item, start, end);
    }
    let addr: IpAddr = item.parse().map_err(|_| malformed())?;
    check_usable(item, addr)?;
    range(item, addr, addr)
}

/// The inclusive range `start..=end`, both of one family, in order.
fn range(item: &str, start: IpAddr, end: IpAddr) -> Result<IpAddrRange, SourceAddrsError> {
    if start > end && start.is_ipv4() == end.is_ipv4() {
        return Err(SourceAddrsError::Reversed {
            item: item.into(),
            start,
            end,
        });
    }
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => Ok(Ipv4AddrRange::new(s, e).into()),
        (IpAddr::V6(s), IpAddr::V6(e)) => Ok(Ipv6AddrRange::new(s, e).into()),
        _ => Err(SourceAddrsError::RangeFamilies { item: item.into() }),
    }
}

/// A socket cannot be bound to these as a sender: refused here rather than as an
/// obscure error from the kernel mid-run.
fn check_usable(item: &str, a: IpAddr) -> Result<(), SourceAddrsError> {
    let why = if a.is_unspecified() {
        "it means any address"
    } else if a.is_multicast() {
        "it is a multicast address"
    } else if matches!(a, IpAddr::V4(v4) if v4.is_broadcast()) {
        "it is the broadcast address"
    } else {
        return Ok(());
    };
    Err(SourceAddrsError::Unusable {
        item: item.into(),
        why,
    })
}

/// A socket for `addr`'s family, bound to `source` (any port) when there is one.
fn socket_from(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    Ok(socket)
}

/// Asks Linux to choose the port at connect time instead of at bind time
/// (`IP_BIND_ADDRESS_NO_PORT`). A port chosen at bind must be unique for the
/// source address alone, so a long run would run out of ports (and trip over its
/// own TIME_WAITs) after some 28,000 connections per address; chosen at connect it
/// need only be unique per destination, as for an unbound socket. Best effort:
/// without it the bind still works, with the smaller port space.
fn defer_port_choice(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor, and a pointer to a c_int that lives
        // through the call with its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Connects to `addr` from `source` (bound to `source:0`), or from whatever
/// address the kernel picks when `source` is `None`.
pub async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(_) => socket_from(source, addr)?.connect(addr).await,
    }
}

/// Binds a socket to `source:0` and drops it: tells whether this host owns the
/// address (`EADDRNOTAVAIL` when it does not).
pub fn check_bindable(source: IpAddr) -> io::Result<()> {
    let family_of = SocketAddr::new(source, 0);
    socket_from(Some(source), family_of).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(spec: &str) -> Vec<String> {
        SourceAddrs::parse(spec)
            .unwrap_or_else(|e| panic!("{spec:?}: {e}"))
            .addrs()
            .iter()
            .map(IpAddr::to_string)
            .collect()
    }

    fn error(spec: &str) -> SourceAddrsError {
        match SourceAddrs::parse(spec) {
            Ok(a) => panic!("{spec:?} parsed as {:?}", a.addrs()),
            Err(e) => e,
        }
    }

    #[test]
    fn the_grammar_accepts_addresses_ranges_and_cidr_blocks() {
        let rows: &[(&str, &[&str])] = &[
            ("127.0.0.5", &["127.0.0.5"]),
            (" 127.0.0.5 ", &["127.0.0.5"]),
            (
                "127.0.0.2-127.0.0.4",
                &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
            ),
            ("127.0.0.2 - 127.0.0.3", &["127.0.0.2", "127.0.0.3"]),
            ("127.0.0.7-127.0.0.7", &["127.0.0.7"]),
            ("127.0.0.255-127.0.1.0", &["127.0.0.255", "127.0.1.0"]),
            // A /30 has two hosts: not the network address nor the broadcast.
            ("127.0.0.0/30", &["127.0.0.1", "127.0.0.2"]),
            ("127.0.0.9/32", &["127.0.0.9"]),
            ("127.0.0.8/31", &["127.0.0.8", "127.0.0.9"]),
            (
                "127.0.0.2,127.0.0.10-127.0.0.11, 127.0.0.20/31",
                &[
                    "127.0.0.2",
                    "127.0.0.10",
                    "127.0.0.11",
                    "127.0.0.20",
                    "127.0.0.21",
                ],
            ),
            ("::1", &["::1"]),
            ("fd00::1-fd00::3", &["fd00::1", "fd00::2", "fd00::3"]),
            ("fd00::/127", &["fd00::", "fd00::1"]),
        ];
        for (spec, want) in rows {
            assert_eq!(ips(spec), *want, "{spec:?}");
        }
    }

    #[test]
    fn a_cidr_block_counts_its_hosts() {
        assert_eq!(ips("127.0.0.0/28").len(), 14);
        assert_eq!(ips("127.0.0.0/16").len(), 65_534);
        assert_eq!(ips("fd00::/112").len(), 65_536);
    }

    #[test]
    fn bad_lists_are_refused_naming_the_item() {
        use SourceAddrsError as E;
        let s = String::from;
        let rows: &[(&str, E)] = &[
            ("", E::Empty),
            ("  ", E::Empty),
            (
                "127.0.0.2,,127.0.0.3",
                E::EmptyItem {
                    list: s("127.0.0.2,,127.0.0.3"),
                },
            ),
            (
                "127.0.0.2,",
                E::EmptyItem {
                    list: s("127.0.0.2,"),
                },
            ),
            (
                "localhost",
                E::Malformed {
                    item: s("localhost"),
                },
            ),
            (
                "127.0.0.300",
                E::Malformed {
                    item: s("127.0.0.300"),
                },
            ),
            (
                "127.0.0.2-",
                E::Malformed {
                    item: s("127.0.0.2-"),
                },
            ),
            (
                "127.0.0.0/33",
                E::Malformed {
                    item: s("127.0.0.0/33"),
                },
            ),
            (
                "127.0.0.0/x",
                E::Malformed {
                    item: s("127.0.0.0/x"),
                },
            ),
            (
                "127.0.0.9-127.0.0.2",
                E::Reversed {
                    item: s("127.0.0.9-127.0.0.2"),
                    start: "127.0.0.9".parse().unwrap(),
                    end: "127.0.0.2".parse().unwrap(),
                },
            ),
            (
                "127.0.0.2-::1",
                E::RangeFamilies {
                    item: s("127.0.0.2-::1"),
                },
            ),
            (
                "0.0.0.0",
                E::Unusable {
                    item: s("0.0.0.0"),
                    why: "it means any address",
                },
            ),
            (
                "224.0.0.1",
                E::Unusable {
                    item: s("224.0.0.1"),
                    why: "it is a multicast address",
                },
            ),
            (
                "255.255.255.255",
                E::Unusable {
                    item: s("255.255.255.255"),
                    why: "it is the broadcast address",
                },
            ),
            (
                "127.0.0.2-127.0.0.4,127.0.0.3",
                E::Duplicate {
                    item: s("127.0.0.3"),
                    addr: "127.0.0.3".parse().unwrap(),
                },
            ),
            (
                "127.0.0.2,::1",
                E::MixedFamilies {
                    item: s("::1"),
                    this: "IPv6",
                    first: "IPv4",
                },
            ),
            (
                "127.0.0.0/15",
                E::TooMany {
                    item: s("127.0.0.0/15"),
                },
            ),
            (
                "fd00::/64",
                E::TooMany {
                    item: s("fd00::/64"),
                },
            ),
            (
                "127.0.0.0/16,127.1.0.1-127.1.0.3",
                E::TooMany {
                    item: s("127.1.0.1-127.1.0.3"),
                },
            ),
        ];
        for (spec, want) in rows {
            assert_eq!(&error(spec), want, "{spec:?}");
        }
    }

    #[test]
    fn errors_read_as_sentences_naming_the_item() {
        let e = error("127.0.0.9-127.0.0.2").to_string();
        assert_eq!(
            e,
            "\"127.0.0.9-127.0.0.2\": the range runs backwards (127.0.0.9 comes after 127.0.0.2)"
        );
        let e = error("127.0.0.2,::1").to_string();
        assert!(
            e.contains("\"::1\" is IPv6 but the list began with IPv4"),
            "{e}"
        );
    }

    #[test]
    fn next_goes_round_the_list_and_clones_share_the_cursor() {
        let a = SourceAddrs::parse("127.0.0.2-127.0.0.4").unwrap();
        let b = a.clone();
        let got: Vec<String> = (0..7)
            .map(|i| if i % 2 == 0 { a.next() } else { b.next() }.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.2"
            ]
        );
    }

    #[test]
    fn concurrent_callers_share_the_turns_evenly() {
        let a = SourceAddrs::parse("127.0.0.2-127.0.0.5").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || (0..1000).map(|_| a.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut counts = std::collections::HashMap::new();
        for t in threads {
            for ip in t.join().unwrap() {
                *counts.entry(ip).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c == 1000), "{counts:?}");
    }

    #[test]
    fn sources_that_cannot_reach_the_server_are_named() {
        let v6: SocketAddr = "[::1]:25".parse().unwrap();
        let remote: SocketAddr = "192.0.2.10:25".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let a = SourceAddrs::parse("127.0.0.2-127.0.0.3").unwrap();
        let e = a.check_reaches(v6).unwrap_err().to_string();
        assert_eq!(
            e,
            "127.0.0.2 is IPv4 but the server [::1]:25 is IPv6: use addresses of the server's family"
        );
        let e = a.check_reaches(remote).unwrap_err().to_string();
        assert_eq!(
            e,
            "127.0.0.2 is a loopback address and cannot reach 192.0.2.10:25, which is not one"
        );
        a.check_reaches(local).unwrap();
    }

    #[test]
    fn an_address_this_host_does_not_own_is_named() {
        // TEST-NET-1 (RFC 5737) is never assigned to a host.
        let e = check_bindable("192.0.2.1".parse().unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{e}");
        check_bindable("127.0.0.3".parse().unwrap()).unwrap();
        let list = SourceAddrs::parse("127.0.0.2,192.0.2.1,192.0.2.2").unwrap();
        match list.check_local() {
            Err(SourceAddrsError::NotLocal { addr, .. }) => {
                assert_eq!(addr.to_string(), "192.0.2.1")
            }
            other => panic!("{other:?}"),
        }
        SourceAddrs::parse("127.0.0.0/24")
            .unwrap()
            .check_local()
            .unwrap();
    }

    #[tokio::test]
    async fn connect_from_binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        for source in ["127.0.0.2", "127.0.0.3"] {
            let ip: IpAddr = source.parse().unwrap();
            let client = connect_from(Some(ip), server).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), ip);
            assert_eq!(client.local_addr().unwrap().ip(), ip);
        }
        let _client = connect_from(None, server).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert!(peer.ip().is_loopback());
    }

    #[tokio::test]
    async fn connect_from_binds_an_ipv6_source_too() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback on this host: the IPv6 case is not run");
            return;
        };
        let server = listener.local_addr().unwrap();
        let ip: IpAddr = "::1".parse().unwrap();
        let sources = SourceAddrs::parse("::1").unwrap();
        sources.check_local().unwrap();
        sources.check_reaches(server).unwrap();
        let client = connect_from(Some(sources.next()), server).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!((peer.ip(), client.local_addr().unwrap().ip()), (ip, ip));
    }
}
