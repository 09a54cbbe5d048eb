//! Interface index to name, shared between the link watcher (writer) and the
//! drain (reader). A deleted interface keeps its name for a grace period so
//! the flows it saw in its last interval still come out with a name.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

#[derive(Debug)]
struct Entry {
    name: String,
    gone_since: Option<Instant>,
}

/// A cheap, cloneable handle to the interface table.
#[derive(Clone, Debug, Default)]
pub struct IfNames {
    inner: Arc<RwLock<HashMap<u32, Entry>>>,
}

impl IfNames {
    /// Records that `index` is called `name`.
    pub fn present(&self, index: u32, name: &str) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.insert(
            index,
            Entry {
                name: name.to_owned(),
                gone_since: None,
            },
        );
    }

    /// Records that `index` was deleted; its name stays resolvable until
    /// [`IfNames::expire`] removes it.
    pub fn gone(&self, index: u32) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&index) {
            entry.gone_since.get_or_insert_with(Instant::now);
        }
    }

    /// Forgets interfaces deleted more than `grace` ago.
    pub fn expire(&self, grace: Duration) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| e.gone_since.is_none_or(|t| t.elapsed() < grace));
    }

    /// The name of `index`, if known.
    pub fn name(&self, index: u32) -> Option<String> {
        if index == 0 {
            return None;
        }
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(&index).map(|e| e.name.clone())
    }

    /// A copy of the table, to resolve the indexes of a whole drain without
    /// taking the lock once per record.
    pub fn snapshot(&self) -> HashMap<u32, String> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(i, e)| (*i, e.name.clone())).collect()
    }

    /// The index of the live interface called `name`.
    pub fn index(&self, name: &str) -> Option<u32> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .find(|(_, e)| e.gone_since.is_none() && e.name == name)
            .map(|(i, _)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_names_resolve_until_expired() {
        let names = IfNames::default();
        names.present(3, "eth0");
        assert_eq!(names.index("eth0"), Some(3));
        names.gone(3);
        assert_eq!(names.name(3).as_deref(), Some("eth0"));
        assert_eq!(names.index("eth0"), None);
        names.expire(Duration::from_secs(60));
        assert_eq!(names.name(3).as_deref(), Some("eth0"));
        names.expire(Duration::ZERO);
        assert_eq!(names.name(3), None);
        assert_eq!(names.name(0), None);
    }
}
