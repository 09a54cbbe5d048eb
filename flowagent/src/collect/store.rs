//! The collector's durable store: hourly JSON lines files plus a state file,
//! with group commit.
//!
//! Files: `OUT_DIR/%Y-%m-%d-%H.jsonl`, named by the UTC hour in which the
//! collector *wrote* the lines (every line carries its own timestamps), so a
//! commit always appends to exactly one file. Lines have the agent's JSON
//! field names plus `agent_id`; drop reports from agents are lines with
//! `"event_type": "dropped"`.
//!
//! Durability invariant: a batch is acknowledged only after [`Store::commit`]
//! returned `Ok`, and that happens only after (1) its lines were appended and
//! `fdatasync`ed, and (2) the state file, which records the committed length
//! of the current file and the dedupe set, was written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced. On open,
//! [`Store::open`] truncates the current file to the committed length and
//! removes files of later hours: bytes past the last commit belong to batches
//! that were never acknowledged and will be resent. So a SIGKILL at any
//! point loses nothing acknowledged and duplicates nothing.
//!
//! Dedupe: an agent numbers its batches with strictly increasing ids within
//! an *epoch* (one run of the agent) and resends unacknowledged batches with
//! their original ids, in order. The store keeps, durably in the state file,
//! the highest committed batch id per `(agent_id, epoch)`; a batch whose id is
//! not above it is a duplicate and is acknowledged without being written. The
//! set is bounded: the [`EPOCHS_PER_AGENT`] newest epochs of each agent, and
//! at most [`MAX_AGENTS`] agents (the least recently committed is forgotten
//! first). An evicted agent's redelivered batches would be written again;
//! resends come within seconds of the commit, so this needs thousands of
//! agents cycling faster than that.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    enrich::BgpAttrs,
    export::{
        flow_line,
        grpc::{convert, proto},
        jsonl,
    },
    flow::{Enrichment, FlowRecord},
};

/// Epochs (agent runs) remembered per agent for dedupe.
pub const EPOCHS_PER_AGENT: usize = 2;
/// Agents remembered for dedupe.
pub const MAX_AGENTS: usize = 4096;
/// The state file's name inside the output directory.
pub const STATE_FILE: &str = ".flowagent-collect.state";

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The state file exists but cannot be parsed.
    #[error("state file {path} is corrupt ({message}); move it away to start afresh")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A batch has a record that does not convert (checked before anything is written).
    #[error("batch {batch_id} of agent {agent_id:?}: {source}")]
    BadRecord {
        /// The sending agent.
        agent_id: String,
        /// The batch.
        batch_id: u64,
        /// What is wrong.
        #[source]
        source: convert::Error,
    },
}

/// At the gRPC boundary: a bad batch is the sender's fault and is not
/// retried as is; a storage failure is transient (the agent resends).
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRecord { .. } => tonic::Status::invalid_argument(e.to_string()),
            Error::Io { .. } => tonic::Status::unavailable(format!("storing failed: {e}")),
            Error::CorruptState { .. } => tonic::Status::internal(e.to_string()),
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// What happened to one batch of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written and durable.
    Stored,
    /// Already stored earlier; dropped.
    Duplicate,
}

/// The high-water mark of one agent epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Seen {
    epoch: u64,
    batch_id: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct AgentSeen {
    /// Newest epoch first.
    epochs: Vec<Seen>,
    /// Commit number of the last commit that touched this agent (for eviction).
    last_commit: u64,
}

/// The durable state, as stored in [`STATE_FILE`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    /// The file written last, and its committed length.
    file: Option<String>,
    len: u64,
    /// Commits so far.
    commits: u64,
    agents: HashMap<String, AgentSeen>,
}

impl State {
    fn is_duplicate(&self, agent_id: &str, epoch: u64, batch_id: u64) -> bool {
        self.agents.get(agent_id).is_some_and(|a| {
            a.epochs
                .iter()
                .any(|s| s.epoch == epoch && batch_id <= s.batch_id)
        })
    }

    fn mark(&mut self, agent_id: &str, epoch: u64, batch_id: u64) {
        let commit = self.commits;
        let agent = self.agents.entry(agent_id.to_owned()).or_default();
        agent.last_commit = commit;
        match agent.epochs.iter_mut().find(|s| s.epoch == epoch) {
            Some(s) => s.batch_id = s.batch_id.max(batch_id),
            None => agent.epochs.push(Seen { epoch, batch_id }),
        }
        agent.epochs.sort_by_key(|s| std::cmp::Reverse(s.epoch));
        agent.epochs.truncate(EPOCHS_PER_AGENT);
        if self.agents.len() > MAX_AGENTS {
            let oldest = self
                .agents
                .iter()
                .min_by_key(|(_, a)| a.last_commit)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.agents.remove(&id);
            }
        }
    }
}

/// The hourly file name for `t`: `%Y-%m-%d-%H.jsonl` in UTC.
pub fn hour_file_name(t: SystemTime) -> String {
    // "2026-11-24T19:53:10Z" -> "2026-11-24-19"
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}-{}.jsonl", &s[..10], &s[11..13])
}

#[derive(Serialize)]
struct DroppedLine<'a> {
    event_type: &'static str,
    agent_id: &'a str,
    dropped_records: u64,
    dropped_counters: u64,
    timestamp_start: String,
    timestamp_end: String,
}

/// The routing fields to write for a record: those of an agent with routing
/// configured, when the record carries any routing information (the API
/// does not say whether the agent had routing on; a record of an agent
/// with routing that matched nothing is written without them). AS paths
/// and communities only when present.
fn routing_of(r: &FlowRecord) -> Option<BgpAttrs> {
    let e = &r.enrichment;
    (*e != Enrichment::default()).then_some(BgpAttrs {
        as_path: !e.as_path.is_empty(),
        communities: !e.communities.is_empty() || !e.large_communities.is_empty(),
    })
}

/// Appends one batch's lines to `out`. Fails before writing anything when a
/// record does not convert.
fn write_batch(out: &mut impl io::Write, batch: &proto::FlowBatch) -> Result<(), Error> {
    let agent = batch.agent_id.as_str();
    let records = batch
        .records
        .iter()
        .map(convert::from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::BadRecord {
            agent_id: batch.agent_id.clone(),
            batch_id: batch.batch_id,
            source,
        })?;
    let line_err = |source| Error::Io {
        what: "formatting lines",
        path: PathBuf::new(),
        source,
    };
    let mut line = Vec::with_capacity(1024);
    for r in &records {
        jsonl::write_flow_line(out, &mut line, r, Some(agent), routing_of(r)).map_err(line_err)?;
    }
    for c in &batch.counters {
        jsonl::write_counters_line(out, &convert::counters_from_proto(c), Some(agent))
            .map_err(line_err)?;
    }
    if let Some(d) = &batch.dropped {
        let line = DroppedLine {
            event_type: "dropped",
            agent_id: agent,
            dropped_records: d.dropped_records,
            dropped_counters: d.dropped_counters,
            timestamp_start: flow_line::rfc3339_micros(convert::time_from_ns(d.first_drop_ns)),
            timestamp_end: flow_line::rfc3339_micros(convert::time_from_ns(d.last_drop_ns)),
        };
        serde_json::to_writer(&mut *out, &line).map_err(|e| line_err(e.into()))?;
        out.write_all(b"\n").map_err(line_err)?;
    }
    Ok(())
}

/// The durable store. One owner (the collector's writer thread) calls it.
pub struct Store {
    dir: PathBuf,
    state: State,
    /// The open current file, named `state.file`.
    current: Option<File>,
}

impl Store {
    /// Opens (creating) `dir` and rolls back anything written after the last
    /// commit.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let state_path = dir.join(STATE_FILE);
        let state = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                path: state_path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err("reading", &state_path)(e)),
        };
        let mut store = Store {
            dir: dir.to_owned(),
            state,
            current: None,
        };
        store.roll_back()?;
        Ok(store)
    }

    /// Truncates the current file to its committed length and removes files
    /// of later hours (only ever written by uncommitted batches).
    fn roll_back(&mut self) -> Result<(), Error> {
        let Some(name) = self.state.file.clone() else {
            return Ok(());
        };
        let entries = fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if file.ends_with(".jsonl") && file > name.as_str() && file.len() == name.len() {
                let path = entry.path();
                log::warn!("removing {}: written after the last commit", path.display());
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
            }
        }
        let path = self.dir.join(&name);
        match OpenOptions::new().write(true).open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io_err("reading", &path))?.len();
                if len > self.state.len {
                    log::warn!(
                        "{}: dropping {} bytes written after the last commit (never acknowledged)",
                        path.display(),
                        len - self.state.len
                    );
                    f.set_len(self.state.len)
                        .map_err(io_err("truncating", &path))?;
                    f.sync_all().map_err(io_err("syncing", &path))?;
                } else if len < self.state.len {
                    log::error!(
                        "{}: {} bytes shorter than committed; was it edited?",
                        path.display(),
                        self.state.len - len
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::error!("{}: committed file is missing", path.display());
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        }
        Ok(())
    }

    /// Whether a batch of this agent epoch was committed already.
    pub fn is_duplicate(&self, agent_id: &str, epoch: u64, batch_id: u64) -> bool {
        self.state.is_duplicate(agent_id, epoch, batch_id)
    }

    /// Writes `batches` durably (one fsync of data, one of state, for all of
    /// them) and returns what happened to each. On `Err` nothing of the
    /// commit is kept: the file is truncated back and no batch may be
    /// acknowledged. A batch with a bad record is an `Err` for the whole
    /// commit; callers check batches with [`check_batch`] first.
    pub fn commit(
        &mut self,
        batches: &[proto::FlowBatch],
        now: SystemTime,
    ) -> Result<Vec<Outcome>, Error> {
        let mut next = self.state.clone();
        next.commits += 1;
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut buf = Vec::new();
        for b in batches {
            if next.is_duplicate(&b.agent_id, b.epoch, b.batch_id) {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            write_batch(&mut buf, b)?;
            next.mark(&b.agent_id, b.epoch, b.batch_id);
            outcomes.push(Outcome::Stored);
        }
        if buf.is_empty() {
            return Ok(outcomes);
        }
        let name = hour_file_name(now);
        if next.file.as_deref() != Some(name.as_str()) || self.current.is_none() {
            let path = self.dir.join(&name);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("opening", &path))?;
            let len = f.metadata().map_err(io_err("reading", &path))?.len();
            if next.file.as_deref() != Some(name.as_str()) {
                next.len = len;
            }
            next.file = Some(name.clone());
            self.current = Some(f);
        }
        let path = self.dir.join(&name);
        let Some(file) = self.current.as_mut() else {
            unreachable!("opened above")
        };
        let written = {
            let mut w = BufWriter::new(&mut *file);
            w.write_all(&buf).and_then(|()| w.flush())
        };
        let synced = written.and_then(|()| file.sync_data());
        if let Err(source) = synced {
            self.undo(&path, next.len);
            return Err(Error::Io {
                what: "writing",
                path,
                source,
            });
        }
        next.len += buf.len() as u64;
        if let Err(e) = self.write_state(&next) {
            self.undo(&path, next.len - buf.len() as u64);
            return Err(e);
        }
        self.state = next;
        Ok(outcomes)
    }

    /// Best effort after a failed commit: cut the file back to `len`.
    fn undo(&mut self, path: &Path, len: u64) {
        if let Some(f) = self.current.take()
            && let Err(e) = f.set_len(len)
        {
            log::error!(
                "{}: cannot truncate back to {len} after a failed commit: {e}",
                path.display()
            );
        }
    }

    fn write_state(&self, state: &State) -> Result<(), Error> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(state).map_err(|e| io_err("encoding", &path)(e.into()))?;
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(&bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        // The rename, and a newly created hourly file, are durable only once
        // the directory is synced.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &self.dir))?;
        Ok(())
    }
}

/// Checks that every record of a batch converts, so one bad batch is refused
/// on its own instead of failing a group commit.
pub fn check_batch(batch: &proto::FlowBatch) -> Result<(), Error> {
    for m in &batch.records {
        convert::from_proto(m).map_err(|source| Error::BadRecord {
            agent_id: batch.agent_id.clone(),
            batch_id: batch.batch_id,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::export::grpc::convert::tests::full_record;

    pub(crate) fn batch(agent: &str, epoch: u64, id: u64, n: u64) -> proto::FlowBatch {
        proto::FlowBatch {
            agent_id: agent.into(),
            epoch,
            batch_id: id,
            records: (0..n)
                .map(|i| convert::to_proto(&full_record(i), agent))
                .collect(),
            counters: vec![],
            dropped: None,
        }
    }

    fn lines(dir: &Path) -> Vec<serde_json::Value> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".jsonl"))
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|n| {
                fs::read_to_string(dir.join(n))
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    const T: u64 = 1_764_014_400; // 2025-11-24T20:00:00Z

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T + secs)
    }

    #[test]
    fn hour_file_names() {
        assert_eq!(hour_file_name(at(0)), "2025-11-24-20.jsonl");
        assert_eq!(hour_file_name(at(3599)), "2025-11-24-20.jsonl");
        assert_eq!(hour_file_name(at(3600)), "2025-11-24-21.jsonl");
    }

    #[test]
    fn writes_lines_and_drops_duplicates_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let mut b2 = batch("a", 7, 2, 2);
        b2.dropped = Some(proto::DropReport {
            dropped_records: 5,
            dropped_counters: 1,
            first_drop_ns: 0,
            last_drop_ns: 1_000,
        });
        let out = s
            .commit(&[batch("a", 7, 1, 3), b2, batch("b", 7, 1, 1)], at(0))
            .unwrap();
        assert_eq!(out, vec![Outcome::Stored; 3]);
        drop(s);
        let mut s = Store::open(dir.path()).unwrap();
        let out = s
            .commit(
                &[
                    batch("a", 7, 1, 3),
                    batch("a", 7, 2, 2),
                    batch("a", 7, 3, 1),
                    batch("a", 8, 1, 1),
                ],
                at(3600),
            )
            .unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::Duplicate,
                Outcome::Duplicate,
                Outcome::Stored,
                Outcome::Stored
            ]
        );
        let all = lines(dir.path());
        assert_eq!(all.len(), 3 + 2 + 1 + 1 + 1 + 1);
        assert_eq!(all[0]["agent_id"], "a");
        assert_eq!(all[0]["event_type"], "purge");
        assert_eq!(all[0]["ip_dst"], "2001:db8::1");
        // Records carrying routing information keep it in the files.
        let e = full_record(0).enrichment;
        assert_eq!(all[0]["as_src"], e.as_src);
        assert_eq!(all[0]["peer_as_dst"], e.peer_as_dst);
        let (net, len) = e.net_dst.unwrap();
        assert_eq!(all[0]["net_dst"], net.to_string());
        assert_eq!(all[0]["mask_dst"], len);
        let path: Vec<String> = e.as_path.iter().map(u32::to_string).collect();
        assert_eq!(all[0]["as_path"], path.join("_"));
        assert_eq!(all[5]["event_type"], "dropped");
        assert_eq!(all[5]["dropped_records"], 5);
        assert_eq!(all[6]["agent_id"], "b");
        let n20 = fs::read_to_string(dir.path().join("2025-11-24-20.jsonl")).unwrap();
        assert_eq!(n20.lines().count(), 7);
    }

    #[test]
    fn reopen_cuts_uncommitted_tail_and_later_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(&[batch("a", 1, 1, 2)], at(0)).unwrap();
        drop(s);
        let f20 = dir.path().join("2025-11-24-20.jsonl");
        let committed = fs::metadata(&f20).unwrap().len();
        // A crash after writing but before the state was replaced.
        let mut f = OpenOptions::new().append(true).open(&f20).unwrap();
        f.write_all(b"{\"partial\": tr").unwrap();
        fs::write(dir.path().join("2025-11-24-21.jsonl"), "{}\n").unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(fs::metadata(&f20).unwrap().len(), committed);
        assert!(!dir.path().join("2025-11-24-21.jsonl").exists());
        // The unacknowledged batch comes again and is written once.
        assert_eq!(
            s.commit(&[batch("a", 1, 2, 1)], at(1)).unwrap(),
            vec![Outcome::Stored]
        );
        assert_eq!(lines(dir.path()).len(), 3);
    }

    #[test]
    fn bad_record_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let mut b = batch("a", 1, 1, 2);
        b.records[1].src_addr = vec![1];
        assert!(matches!(
            check_batch(&b),
            Err(Error::BadRecord { batch_id: 1, .. })
        ));
        assert!(s.commit(&[b], at(0)).is_err());
        assert!(!s.is_duplicate("a", 1, 1));
        assert_eq!(lines(dir.path()).len(), 0);
    }

    #[test]
    fn dedupe_set_is_bounded() {
        let mut st = State::default();
        for e in 1..=5 {
            st.mark("a", e, 10);
        }
        assert_eq!(st.agents["a"].epochs.len(), EPOCHS_PER_AGENT);
        assert!(st.is_duplicate("a", 5, 10));
        assert!(!st.is_duplicate("a", 5, 11));
        assert!(!st.is_duplicate("a", 1, 1));
        for i in 0..MAX_AGENTS + 10 {
            st.commits += 1;
            st.mark(&format!("agent-{i}"), 1, 1);
        }
        assert_eq!(st.agents.len(), MAX_AGENTS);
        assert!(!st.agents.contains_key("a"));
        assert!(st.agents.contains_key(&format!("agent-{}", MAX_AGENTS + 9)));
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(Error::CorruptState { .. })
        ));
    }
}
