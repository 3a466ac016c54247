//! Which ports a pod listens on, for `kubectl port-forward`.
//!
//! Pods share the host's network, so a forwarded connection is a dial to 127.0.0.1 from procnode
//! (root). Left at that, anyone allowed to port-forward to any pod could reach every service the
//! host keeps on loopback. A port is therefore forwarded only while a process of the pod
//! listens on it: a listening TCP socket with that local port, held open by a process in one of
//! the pod's containers' process groups or in its cgroup.

use std::collections::HashSet;
use std::sync::Arc;

use super::{PodEntry, PodKey, Runtime, RuntimeError};

/// A pod that can be port-forwarded to.
pub struct PortTarget {
    entry: Arc<PodEntry>,
}

impl Runtime {
    /// Pod `key`, if it exists and has not finished.
    pub fn port_target(&self, key: &PodKey) -> Result<PortTarget, RuntimeError> {
        let entry = self.get(key)?;
        if entry.is_done() || entry.stop_requested() {
            return Err(RuntimeError::PodNotRunning(key.clone()));
        }
        Ok(PortTarget { entry })
    }
}

impl PortTarget {
    pub fn key(&self) -> &PodKey {
        self.entry.key()
    }

    pub fn uid(&self) -> &str {
        self.entry.uid()
    }

    /// Whether a process of the pod listens on TCP `port` now. Blocking (reads /proc).
    pub fn listens_on(&self, port: u16) -> bool {
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return false;
        }
        let groups: HashSet<i32> = self.entry.read_state(|st| {
            st.init
                .iter()
                .chain(st.containers.iter())
                .filter_map(|c| c.pid)
                .collect()
        });
        let cgroup = format!("/pod{}", self.entry.uid());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return false;
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| in_pod(*pid, &groups, &cgroup))
            .any(|pid| holds_any(pid, &inodes))
    }
}

/// The inodes of the listening TCP sockets (IPv4 and IPv6) bound to `port`.
fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(parse_listeners(&text, port));
        }
    }
    inodes
}

/// The listening sockets of one /proc/net/tcp table bound to `port`: lines of
/// `sl local_address rem_address st ... inode`, the address `HEXADDR:HEXPORT`, state 0A.
fn parse_listeners(table: &str, port: u16) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit_once(':')?.1;
        if u16::from_str_radix(local_port, 16).ok()? != port || *f.get(3)? != "0A" {
            return None;
        }
        f.get(9)?.parse().ok()
    })
}

/// Whether `pid` is in one of `groups` or in the pod's cgroup.
fn in_pod(pid: i32, groups: &HashSet<i32>, cgroup: &str) -> bool {
    let pgrp = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
        .map(|p| p.as_raw())
        .ok();
    if pgrp.is_some_and(|g| groups.contains(&g)) {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines().any(|l| {
            l.split(':')
                .nth(2)
                .is_some_and(|path| path.split('/').any(|part| cgroup[1..] == *part))
        })
    })
}

/// Whether `pid` holds one of the sockets `inodes`.
fn holds_any(pid: i32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_read_off_a_proc_table() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4545 1 0000000000000000 100 0 0 10 0
";
        // Port 8080 (0x1F90): the two listeners, not the established connection, not 8081.
        let found: Vec<u64> = parse_listeners(table, 8080).collect();
        assert_eq!(found, vec![4242, 4343]);
        assert_eq!(parse_listeners(table, 22).count(), 0);
    }

    #[test]
    fn a_socket_this_process_listens_on_is_found_by_its_inode() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inodes = listening_inodes(port);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        assert!(holds_any(std::process::id() as i32, &inodes));
        drop(listener);
        assert!(listening_inodes(port).is_empty());
    }
}
