//! `flowagent bgp routes`: a Unix socket on which the running agent answers
//! "what do you know" questions in plain text.
//!
//! Protocol: the client writes one line, `routes` or `routes ADDRESS` or
//! `routes PREFIX`, and reads text until the agent closes the connection.
//! `routes` lists the sessions and table sizes; with an address it shows the
//! best route and the networks-file entry covering it; with a prefix, the
//! best routes inside it (at most [`MAX_ROUTES`]). The text is rendered by
//! the pure [`render`] while holding the RIB read lock (bounded by
//! `MAX_ROUTES`), never across an `.await`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use log::{debug, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
};
use tokio_util::sync::CancellationToken;

use super::{SessionStatus, Status};
use crate::rib::{PathAttrs, RibHandle, RibView};

/// Default socket path, shared by the agent and `flowagent bgp routes`.
pub const DEFAULT_SOCKET: &str = "/run/flowagent-bgp.sock";
/// Most routes listed for a prefix query.
pub const MAX_ROUTES: usize = 1000;

/// The text answer to one query line.
pub fn render(
    sessions: &BTreeMap<IpAddr, SessionStatus>,
    view: &RibView<'_>,
    query: &str,
) -> String {
    let mut out = String::new();
    let mut words = query.split_whitespace();
    if words.next() != Some("routes") {
        return "error: expected `routes [ADDRESS|PREFIX]`\n".into();
    }
    let arg = words.next();
    let (v4, v6) = view.bgp_len();
    if arg.is_none() {
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:<12} {:>9} {:>9} {:>6}  {:<20} last error",
            "neighbor", "AS", "state", "paths", "updates", "taw", "since"
        );
        for (n, s) in sessions {
            let since = humantime::format_rfc3339_seconds(s.since).to_string();
            let _ = writeln!(
                out,
                "{:<40} {:>10} {:<12} {:>9} {:>9} {:>6}  {:<20} {}",
                n.to_string(),
                s.asn,
                s.state,
                s.paths,
                s.updates,
                s.treated_as_withdraw,
                since,
                s.last_error.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            out,
            "best routes: {v4} IPv4, {v6} IPv6; networks file: {} prefixes",
            view.networks_len()
        );
        return out;
    }
    let arg = arg.unwrap_or_default();
    if let Ok(addr) = arg.parse::<IpAddr>() {
        match view.bgp(addr) {
            Some((p, a)) => route_line(&mut out, &p, a),
            None => {
                let _ = writeln!(out, "{addr}: no BGP route");
            }
        }
        if let Some((p, e)) = view.network(addr) {
            let _ = writeln!(
                out,
                "{p} networks file: as {} peer_as {}",
                e.asn, e.peer_asn
            );
        }
        return out;
    }
    let Ok(prefix) = arg.parse::<IpNet>() else {
        return format!("error: {arg:?} is neither an address nor a prefix\n");
    };
    let routes = view.bgp_covered(&prefix);
    for (p, a) in routes.iter().take(MAX_ROUTES) {
        route_line(&mut out, p, a);
    }
    if routes.len() > MAX_ROUTES {
        let _ = writeln!(out, "... {} more", routes.len() - MAX_ROUTES);
    }
    if routes.is_empty() {
        let _ = writeln!(out, "{prefix}: no BGP route inside");
    }
    out
}

fn route_line(out: &mut String, prefix: &IpNet, a: &PathAttrs) {
    let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    let comms: Vec<String> = a
        .communities
        .iter()
        .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
        .chain(
            a.large_communities
                .iter()
                .map(|[x, y, z]| format!("{x}:{y}:{z}")),
        )
        .collect();
    let _ = writeln!(
        out,
        "{prefix} via {} from {} path [{}] origin {} local_pref {} med {} communities [{}]",
        a.next_hop.map_or("-".to_string(), |n| n.to_string()),
        a.neighbor.map_or("-".to_string(), |n| n.to_string()),
        a.as_path_string().replace('_', " "),
        a.origin.code(),
        opt(a.local_pref),
        opt(a.med),
        comms.join(" ")
    );
}

/// Serves queries on `path` until `cancel`; a failure to bind is logged, not fatal.
pub async fn serve(path: PathBuf, status: Status, rib: RibHandle, cancel: CancellationToken) {
    // A stale socket of an earlier run would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!("`bgp routes` socket {} unavailable: {e}", path.display());
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!("control accept: {e}");
                    continue;
                }
            },
        };
        let (status, rib) = (status.clone(), rib.clone());
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            // A query line is short; a client cannot make the agent buffer more.
            let mut rd = BufReader::new(tokio::io::AsyncReadExt::take(rd, 256));
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_line(&mut line))
                    .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let text = render(&status.snapshot(), &rib.read(), line.trim());
            let _ = wr.write_all(text.as_bytes()).await;
            let _ = wr.shutdown().await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// The client side: sends `query`, returns the answer (blocking).
pub fn query(path: &Path, query: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(query.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::rib::{AsSegment, Rib, RibUpdate, networks};

    fn status_row(asn: u32, state: &'static str) -> SessionStatus {
        SessionStatus {
            asn,
            state,
            since: SystemTime::UNIX_EPOCH,
            updates: 3,
            treated_as_withdraw: 1,
            paths: 2,
            last_error: None,
        }
    }

    fn rib() -> RibHandle {
        let h = RibHandle::new(networks::parse("10.0.0.0/8,64496,64511\n", "t").unwrap());
        let mut rib = Rib::new(h.clone(), 100);
        rib.apply(RibUpdate {
            announced: vec![
                ("10.0.5.0/24".parse().unwrap(), 0),
                ("10.0.0.0/16".parse().unwrap(), 0),
            ],
            attrs: PathAttrs {
                as_path: vec![AsSegment::Sequence(vec![65001, 65010])],
                next_hop: Some("192.0.2.1".parse().unwrap()),
                local_pref: Some(100),
                communities: vec![(65001 << 16) | 100],
                ..PathAttrs::default()
            },
            ..RibUpdate::new("127.0.0.1".parse().unwrap())
        })
        .unwrap();
        h
    }

    #[test]
    fn renders_sessions_addresses_and_prefixes() {
        let h = rib();
        let sessions = BTreeMap::from([(
            "127.0.0.1".parse().unwrap(),
            status_row(65001, "established"),
        )]);
        let text = render(&sessions, &h.read(), "routes");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("127.0.0.1 "), "{text}");
        assert!(lines[1].contains(" 65001 established "), "{text}");
        assert!(lines[1].contains("1970-01-01T00:00:00Z -"), "{text}");
        assert_eq!(
            lines[2],
            "best routes: 2 IPv4, 0 IPv6; networks file: 1 prefixes"
        );

        let line = "10.0.5.0/24 via 192.0.2.1 from 127.0.0.1 path [65001 65010] origin i local_pref 100 med - communities [65001:100]";
        assert_eq!(
            render(&sessions, &h.read(), "routes 10.0.5.7"),
            format!("{line}\n10.0.0.0/8 networks file: as 64496 peer_as 64511\n")
        );
        let text = render(&sessions, &h.read(), "routes 10.0.0.0/8");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(line));
        assert_eq!(
            render(&sessions, &h.read(), "routes 11.0.0.1"),
            "11.0.0.1: no BGP route\n"
        );
        assert_eq!(
            render(&sessions, &h.read(), "routes x"),
            "error: \"x\" is neither an address nor a prefix\n"
        );
        assert_eq!(
            render(&sessions, &h.read(), "show"),
            "error: expected `routes [ADDRESS|PREFIX]`\n"
        );
    }
}
