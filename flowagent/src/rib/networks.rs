//! The networks file: static prefix → AS data for agents without BGP, or to
//! fill the gaps BGP leaves (pmacct's `networks_file`).
//!
//! One entry per line, `prefix,asn[,peer_asn]`, e.g. `192.0.2.0/24,64496,64511`.
//! Blank lines and lines starting with `#` are ignored; host bits of the
//! prefix are cleared. Any other line is an error naming its line number:
//! a half-read file would silently mislabel traffic.

use std::{fs, path::Path};

use ipnet::IpNet;

use super::{Error, lpm::Lpm};

/// One networks-file entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkEntry {
    /// Origin AS of the prefix (`as_src`/`as_dst`).
    pub asn: u32,
    /// Neighbour AS toward the prefix (`peer_as_src`/`peer_as_dst`), 0 if not given.
    pub peer_asn: u32,
}

/// Parses networks-file text; `source` names the file in errors.
pub fn parse(text: &str, source: &str) -> Result<Lpm<NetworkEntry>, Error> {
    let mut table = Lpm::default();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| Error::Networks {
            file: source.to_owned(),
            line: index + 1,
            reason: reason.to_owned(),
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !(2..=3).contains(&fields.len()) {
            return Err(bad("expected prefix,asn[,peer_asn]"));
        }
        let prefix: IpNet = fields[0]
            .parse()
            .map_err(|_| bad(&format!("bad prefix {:?}", fields[0])))?;
        let asn: u32 = fields[1]
            .parse()
            .map_err(|_| bad(&format!("bad AS number {:?}", fields[1])))?;
        let peer_asn: u32 = match fields.get(2) {
            Some(f) => f
                .parse()
                .map_err(|_| bad(&format!("bad peer AS number {f:?}")))?,
            None => 0,
        };
        table.insert(prefix, NetworkEntry { asn, peer_asn });
    }
    Ok(table)
}

/// Reads and parses a networks file.
pub fn load(path: &Path) -> Result<Lpm<NetworkEntry>, Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::ReadNetworks {
        file: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_comments_and_host_bits() {
        let t = parse(
            "# comment\n\n10.0.0.0/8,64496\n10.1.2.3/16, 64497 ,64511\n2001:db8::/32,64498,1\n",
            "nets",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        let (p, e) = t.lookup("10.1.9.9".parse().unwrap()).unwrap();
        assert_eq!(
            (p.to_string(), *e),
            (
                "10.1.0.0/16".into(),
                NetworkEntry {
                    asn: 64497,
                    peer_asn: 64511
                }
            )
        );
        let (p, e) = t.lookup("10.2.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            (p.to_string(), *e),
            (
                "10.0.0.0/8".into(),
                NetworkEntry {
                    asn: 64496,
                    peer_asn: 0
                }
            )
        );
        let (_, e) = t.lookup("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            *e,
            NetworkEntry {
                asn: 64498,
                peer_asn: 1
            }
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("10.0.0.0/8\n", 1),
            ("# x\n10.0.0.0/8,1\n10.0.0.0/33,1\n", 3),
            ("10.0.0.0/8,4294967296\n", 1),
            ("10.0.0.0/8,1,2,3\n", 1),
            ("\n10.0.0.0/8,1,x\n", 2),
        ];
        for (text, line) in cases {
            match parse(text, "nets") {
                Err(Error::Networks { line: l, file, .. }) => {
                    assert_eq!((l, file.as_str()), (line, "nets"), "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
