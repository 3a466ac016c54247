//! Every pod the runtime holds, by [`PodKey`]. Reached only through the runtime.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::pod::{PodEntry, PodKey};

/// All pods, by key.
#[derive(Default)]
pub struct Store {
    pods: RwLock<BTreeMap<PodKey, Arc<PodEntry>>>,
}

impl Store {
    pub fn get(&self, key: &PodKey) -> Option<Arc<PodEntry>> {
        self.pods.read().expect("store lock").get(key).cloned()
    }

    /// Inserts `entry` unless a pod with its key is stored; returns the stored one then.
    pub fn insert_new(&self, entry: Arc<PodEntry>) -> Result<(), Arc<PodEntry>> {
        let mut pods = self.pods.write().expect("store lock");
        if let Some(existing) = pods.get(entry.key()) {
            return Err(existing.clone());
        }
        pods.insert(entry.key().clone(), entry);
        Ok(())
    }

    /// Removes the pod under `key` if it is still `entry` (not a newer pod of the same name).
    pub fn remove_if_same(&self, entry: &Arc<PodEntry>) {
        let mut pods = self.pods.write().expect("store lock");
        if pods.get(entry.key()).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            pods.remove(entry.key());
        }
    }

    pub fn list(&self) -> Vec<Arc<PodEntry>> {
        self.pods
            .read()
            .expect("store lock")
            .values()
            .cloned()
            .collect()
    }
}
