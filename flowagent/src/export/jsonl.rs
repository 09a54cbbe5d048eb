//! JSON lines output, field names after pmacct's JSON where pmacct has one.
//!
//! One line per flow record (`"event_type": "purge"`, as pmacct's print
//! plugin writes) and one `"event_type": "counters"` line per interval with
//! the packets accounted outside flows (non-IP, malformed, map overflow) and
//! records the output itself had to drop.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use flowagent_common::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

use super::flow_line;
use crate::{config::Output, drain::Batch, enrich::BgpAttrs, flow::FlowRecord};

/// Output errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output file could not be opened.
    #[error("cannot open output file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing failed.
    #[error("writing flow records: {0}")]
    Write(#[from] io::Error),
}

/// The lower-case protocol name pmacct prints (from /etc/protocols), if any.
pub fn proto_name(proto: u8) -> Option<&'static str> {
    Some(match proto {
        1 => "icmp",
        2 => "igmp",
        4 => "ipencap",
        6 => "tcp",
        17 => "udp",
        41 => "ipv6",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "ipv6-icmp",
        89 => "ospf",
        103 => "pim",
        112 => "vrrp",
        132 => "sctp",
        136 => "udplite",
        _ => return None,
    })
}

#[derive(Serialize)]
struct CountersLine<'a> {
    event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    timestamp_start: String,
    timestamp_end: String,
    non_ip_packets: u64,
    non_ip_bytes: u64,
    malformed_packets: u64,
    malformed_bytes: u64,
    overflow_packets: u64,
    overflow_bytes: u64,
    dropped_records: u64,
    sampling_rate: u32,
}

/// Writes one flow record as a JSON line, with `agent_id` when given (the
/// collector's files hold many agents' records) and the routing fields when
/// `routing` says which. `line` is scratch space, reused between calls.
pub fn write_flow_line(
    out: &mut impl Write,
    line: &mut Vec<u8>,
    record: &FlowRecord,
    agent_id: Option<&str>,
    routing: Option<BgpAttrs>,
) -> io::Result<()> {
    line.clear();
    flow_line::push(line, record, agent_id, routing);
    out.write_all(line)
}

/// Writes the counters of one interval (`batch`'s records are ignored) as a
/// JSON line, with `agent_id` when given.
pub fn write_counters_line(
    out: &mut impl Write,
    batch: &Batch,
    agent_id: Option<&str>,
) -> io::Result<()> {
    let c = &batch.counters;
    let line = CountersLine {
        event_type: "counters",
        agent_id,
        timestamp_start: flow_line::rfc3339_micros(batch.start),
        timestamp_end: flow_line::rfc3339_micros(batch.end),
        non_ip_packets: c.get(Counter::NonIpPackets),
        non_ip_bytes: c.get(Counter::NonIpBytes),
        malformed_packets: c.get(Counter::MalformedPackets),
        malformed_bytes: c.get(Counter::MalformedBytes),
        overflow_packets: c.get(Counter::OverflowPackets),
        overflow_bytes: c.get(Counter::OverflowBytes),
        dropped_records: batch.dropped_records,
        sampling_rate: batch.sampling_rate,
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// Writes batches as JSON lines.
pub struct JsonlWriter<W: Write = Box<dyn Write + Send>> {
    out: BufWriter<W>,
    /// Scratch space for one line.
    line: Vec<u8>,
    /// Write the routing fields (and which optional ones), `None` without routing.
    routing: Option<BgpAttrs>,
}

impl JsonlWriter {
    /// Opens the output: stdout, or a file opened for appending.
    pub fn open(output: &Output) -> Result<Self, Error> {
        let out: Box<dyn Write + Send> = match output {
            Output::Stdout => Box::new(io::stdout()),
            Output::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::Open {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        Ok(Self::new(out))
    }
}

impl<W: Write> JsonlWriter<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, out),
            line: Vec::with_capacity(1024),
            routing: None,
        }
    }

    /// Also writes the routing fields (`as_src`, `net_dst`, ...), plus
    /// `as_path`/`comms`/`lcomms` as `attrs` asks.
    pub fn with_routing(mut self, attrs: BgpAttrs) -> Self {
        self.routing = Some(attrs);
        self
    }

    /// Writes one batch and flushes it.
    pub fn write_batch(&mut self, batch: &Batch) -> Result<(), Error> {
        for record in &batch.records {
            write_flow_line(&mut self.out, &mut self.line, record, None, self.routing)?;
        }
        write_counters_line(&mut self.out, batch, None)?;
        self.out.flush()?;
        Ok(())
    }

    /// Writes batches until the channel closes (blocking: run on its own thread).
    pub fn run(mut self, mut batches: mpsc::Receiver<Batch>) -> Result<(), Error> {
        while let Some(batch) = batches.blocking_recv() {
            self.write_batch(&batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{drain::Counters, flow::FlowDirection};

    /// The line `write_flow_line` writes for `r`, parsed.
    fn line_of(r: &FlowRecord) -> serde_json::Value {
        let mut out = Vec::new();
        write_flow_line(&mut out, &mut Vec::new(), r, None, None).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn flow_line_uses_pmacct_names() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let r = FlowRecord {
            src: Ipv4Addr::new(192, 0, 2, 1).into(),
            dst: Ipv6Addr::LOCALHOST.into(),
            src_port: 1234,
            dst_port: 53,
            proto: 17,
            tos: 0xb8,
            tcp_flags: 0,
            vlan: 42,
            ifindex: 3,
            direction: FlowDirection::Ingress,
            other_ifindex: 0,
            iface_in: Some("eth0".into()),
            iface_out: None,
            next_hop: None,
            src_mac: [2, 0, 0, 0, 0, 1],
            packets: 2,
            bytes: 300,
            start: t,
            end: t,
            sampling_rate: 1,
            enrichment: Default::default(),
        };
        let json = line_of(&r);
        assert_eq!(
            json,
            serde_json::json!({
                "event_type": "purge", "ip_src": "192.0.2.1", "ip_dst": "::1",
                "port_src": 1234, "port_dst": 53, "ip_proto": "udp", "tos": 184,
                "tcp_flags": 0, "mac_src": "02:00:00:00:00:01", "iface_in": "eth0", "iface_out": null, "ifindex": 3,
                "direction": "ingress", "vlan": 42, "packets": 2, "bytes": 300,
                "timestamp_start": "2023-11-14T22:13:20.250000Z",
                "timestamp_end": "2023-11-14T22:13:20.250000Z", "sampling_rate": 1
            })
        );
        let unnamed = FlowRecord { proto: 253, ..r };
        assert_eq!(line_of(&unnamed)["ip_proto"], 253);
    }

    #[test]
    fn routing_fields_with_pmacct_names() {
        let t = SystemTime::UNIX_EPOCH;
        let r = FlowRecord {
            src: Ipv4Addr::new(10, 1, 1, 1).into(),
            dst: Ipv4Addr::new(198, 51, 100, 7).into(),
            src_port: 1,
            dst_port: 2,
            proto: 6,
            tos: 0,
            tcp_flags: 0,
            vlan: 0,
            ifindex: 3,
            direction: FlowDirection::Ingress,
            other_ifindex: 0,
            iface_in: None,
            iface_out: None,
            next_hop: None,
            src_mac: [2, 0, 0, 0, 0, 1],
            packets: 1,
            bytes: 40,
            start: t,
            end: t,
            sampling_rate: 1,
            enrichment: crate::flow::Enrichment {
                as_src: 0,
                as_dst: 65010,
                peer_as_src: 0,
                peer_as_dst: 65001,
                net_src: None,
                net_dst: Some((Ipv4Addr::new(198, 51, 100, 0).into(), 24)),
                bgp_nexthop: Some(Ipv4Addr::new(192, 0, 2, 1).into()),
                as_path: vec![65001, 65010],
                communities: vec![(65001 << 16) | 100, (65001 << 16) | 200],
                large_communities: vec![[65001, 1, 2]],
            },
        };
        let batch = Batch {
            start: t,
            end: t,
            records: vec![r].into(),
            counters: Counters::default(),
            dropped_records: 0,
            sampling_rate: 1,
        };
        let attrs = BgpAttrs {
            as_path: true,
            communities: true,
        };
        let mut w = JsonlWriter::new(Vec::new()).with_routing(attrs);
        w.write_batch(&batch).unwrap();
        let text = String::from_utf8(w.out.into_inner().unwrap()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let expected = serde_json::json!({
            "as_src": 0, "as_dst": 65010, "peer_as_src": 0, "peer_as_dst": 65001,
            "net_src": "0.0.0.0", "mask_src": 0, "net_dst": "198.51.100.0", "mask_dst": 24,
            "bgp_nexthop": "192.0.2.1", "as_path": "65001_65010",
            "comms": "65001:100_65001:200", "lcomms": "65001:1:2"
        });
        for (k, v) in expected.as_object().unwrap() {
            assert_eq!(&line[k], v, "{k}");
        }
        // Without --bgp-attrs only the fixed routing fields appear.
        let mut w = JsonlWriter::new(Vec::new()).with_routing(BgpAttrs::default());
        w.write_batch(&batch).unwrap();
        let text = String::from_utf8(w.out.into_inner().unwrap()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["as_dst"], 65010);
        assert!(line.get("as_path").is_none() && line.get("comms").is_none());
    }

    #[test]
    fn counters_line_always_written() {
        let mut w = JsonlWriter::new(Vec::new());
        let batch = Batch {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            records: Default::default(),
            counters: Counters([1, 60, 2, 40, 3, 300, 0, 0, 0, 0]),
            dropped_records: 0,
            sampling_rate: 10,
        };
        w.write_batch(&batch).unwrap();
        let text = String::from_utf8(w.out.into_inner().unwrap()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "event_type": "counters",
                "timestamp_start": "1970-01-01T00:00:00.000000Z",
                "timestamp_end": "1970-01-01T00:00:00.000000Z",
                "non_ip_packets": 1, "non_ip_bytes": 60, "malformed_packets": 2,
                "malformed_bytes": 40, "overflow_packets": 3, "overflow_bytes": 300,
                "dropped_records": 0, "sampling_rate": 10
            })
        );
    }
}
