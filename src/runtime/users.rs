//! Which user a container runs as: `securityContext.runAsUser` / `runAsGroup` /
//! `supplementalGroups` / `runAsNonRoot` (container level over pod level), procnode's uid
//! policy (`--allowed-uids`, `--default-uid`), and what procnode itself is allowed to do.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

/// The identity a container's process takes before exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Which uids pods may run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidPolicy {
    Any,
    /// Inclusive ranges.
    Only(Vec<(u32, u32)>),
}

impl UidPolicy {
    pub fn allows(&self, uid: u32) -> bool {
        match self {
            UidPolicy::Any => true,
            UidPolicy::Only(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&uid)),
        }
    }
}

impl std::str::FromStr for UidPolicy {
    type Err = String;

    /// `any`, or a comma-separated list of uids and ranges such as `1000-1999,65534`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "any" {
            return Ok(UidPolicy::Any);
        }
        let bad =
            || format!("`{s}` is not `any` or a list of uids and ranges like 1000-1999,65534");
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        if ranges.is_empty() {
            return Err(bad());
        }
        Ok(UidPolicy::Only(ranges))
    }
}

impl std::fmt::Display for UidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UidPolicy::Any => write!(f, "any"),
            UidPolicy::Only(r) => {
                let parts: Vec<String> = r
                    .iter()
                    .map(|(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// What a container that sets no `runAsUser` runs as, when procnode is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultUser {
    /// A uid of the pod's own from `--pod-uid-range` (as systemd's DynamicUser): pods cannot
    /// read or signal each other's processes, nor each other's files.
    PerPod,
    Fixed(u32),
}

impl std::str::FromStr for DefaultUser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pod" => Ok(DefaultUser::PerPod),
            n => n
                .parse()
                .map(DefaultUser::Fixed)
                .map_err(|_| format!("`{s}` is not `pod` or a uid")),
        }
    }
}

impl std::fmt::Display for DefaultUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultUser::PerPod => write!(f, "pod"),
            DefaultUser::Fixed(u) => write!(f, "{u}"),
        }
    }
}

/// The user settings of procnode.
#[derive(Debug, Clone)]
pub struct UserPolicy {
    /// uids a container may ask for (`runAsUser`), and a fixed default must be in.
    pub allowed: UidPolicy,
    /// gids a container may ask for (`runAsGroup`, `supplementalGroups`, `fsGroup`).
    pub allowed_gids: UidPolicy,
    /// The uid of containers that set no `runAsUser`, when procnode runs as root.
    pub default_user: DefaultUser,
    /// The range pod uids are taken from; no pod may ask for one of them by number.
    pub pod_range: (u32, u32),
    /// procnode's own effective uid.
    pub own_uid: u32,
}

impl UserPolicy {
    /// A policy for procnode's own uid that allows everything (tests, tools).
    pub fn permissive(own_uid: u32) -> UserPolicy {
        UserPolicy {
            allowed: UidPolicy::Any,
            allowed_gids: UidPolicy::Any,
            default_user: DefaultUser::PerPod,
            pod_range: DEFAULT_POD_UID_RANGE,
            own_uid,
        }
    }
}

/// The default `--pod-uid-range`: 65,536 uids from 0x70000000, above the ranges systemd gives
/// to regular and dynamic users and to its containers, and below 2^31.
pub const DEFAULT_POD_UID_RANGE: (u32, u32) = (0x7000_0000, 0x7000_ffff);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserError {
    #[error("runAsUser {uid} is not allowed by procnode's uid policy (--allowed-uids {policy})")]
    NotAllowed { uid: u32, policy: String },
    #[error("{field} {gid} is not allowed by procnode's gid policy (--allowed-gids {policy})")]
    GroupNotAllowed {
        field: &'static str,
        gid: u32,
        policy: String,
    },
    #[error("runAsUser {uid} is in the range procnode gives to pods (--pod-uid-range): a pod may not take another pod's uid")]
    PodRange { uid: u32 },
    #[error("container has runAsNonRoot and would run as root (set runAsUser, or --default-uid)")]
    RunsAsRoot,
    #[error("procnode runs as uid {own} and cannot switch to runAsUser {uid}")]
    CannotSwitch { own: u32, uid: u32 },
    #[error("{field} {value} is not a valid id")]
    Invalid { field: &'static str, value: i64 },
    #[error("no uid is free in --pod-uid-range for this pod")]
    NoPodUid,
}

fn id(field: &'static str, value: i64) -> Result<u32, UserError> {
    u32::try_from(value).map_err(|_| UserError::Invalid { field, value })
}

/// The identity container `c` of `pod` runs as; `None` means procnode's own. `pod_id` is the
/// pod's own uid (and gid) from [`PodIds`], when procnode is root.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    policy: &UserPolicy,
    pod_id: Option<u32>,
) -> Result<Option<UserSpec>, UserError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c_sc = c.security_context.as_ref();
    let run_as_user = c_sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user))
        .map(|u| id("runAsUser", u))
        .transpose()?;
    let run_as_group = c_sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group))
        .map(|g| id("runAsGroup", g))
        .transpose()?;
    let non_root = c_sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let mut supplemental: Vec<(&'static str, u32)> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| id("supplementalGroups", g).map(|g| ("supplementalGroups", g)))
        .collect::<Result<_, _>>()?;
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        supplemental.push(("fsGroup", id("fsGroup", fs_group)?));
    }

    let root = policy.own_uid == 0;
    let in_pod_range = |u: u32| (policy.pod_range.0..=policy.pod_range.1).contains(&u);
    if let Some(uid) = run_as_user {
        if in_pod_range(uid) {
            return Err(UserError::PodRange { uid });
        }
    }
    let (uid, dynamic) = match (run_as_user, root, policy.default_user) {
        (Some(u), _, _) => (Some(u), false),
        (None, false, _) => (None, false),
        (None, true, DefaultUser::Fixed(u)) => (Some(u), false),
        (None, true, DefaultUser::PerPod) => (Some(pod_id.ok_or(UserError::NoPodUid)?), true),
    };
    let effective = uid.unwrap_or(policy.own_uid);
    if non_root && effective == 0 {
        return Err(UserError::RunsAsRoot);
    }
    if !dynamic && !policy.allowed.allows(effective) {
        return Err(UserError::NotAllowed {
            uid: effective,
            policy: policy.allowed.to_string(),
        });
    }
    let Some(uid) = uid else {
        return Ok(None);
    };
    if !root {
        if uid == policy.own_uid && run_as_group.is_none() && supplemental.is_empty() {
            return Ok(None);
        }
        return Err(UserError::CannotSwitch {
            own: policy.own_uid,
            uid,
        });
    }
    let check_gid = |field: &'static str, gid: u32| {
        if policy.allowed_gids.allows(gid) {
            Ok(gid)
        } else {
            Err(UserError::GroupNotAllowed {
                field,
                gid,
                policy: policy.allowed_gids.to_string(),
            })
        }
    };
    let gid = match run_as_group {
        Some(g) => check_gid("runAsGroup", g)?,
        None if dynamic => uid,
        // The host's primary group of a uid the operator allowed: part of allowing it.
        None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw()),
    };
    let mut groups = vec![gid];
    for (field, g) in supplemental {
        let g = check_gid(field, g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    // Every container of the pod is in the pod's own group: it reaches the pod's directory.
    if let Some(p) = pod_id {
        if !groups.contains(&p) {
            groups.push(p);
        }
    }
    Ok(Some(UserSpec { uid, gid, groups }))
}

/// The uids handed out to pods, one per pod, from `--pod-uid-range`.
#[derive(Debug)]
pub struct PodIds {
    range: (u32, u32),
    used: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

impl PodIds {
    pub fn new(range: (u32, u32)) -> PodIds {
        PodIds {
            range,
            used: Default::default(),
        }
    }

    /// Claims `recorded` (a pod restored with its uid), or a free uid for the pod called `seed`
    /// (its metadata.uid): the search starts at a place given by the name, so the same pod
    /// gets the same uid again after a crash that lost its record, and a uid just freed is not
    /// the next one handed out. Uids the host's user database knows are skipped.
    pub fn claim(&self, recorded: Option<u32>, seed: &str) -> Option<u32> {
        self.claim_with(recorded, seed, |uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .is_some()
        })
    }

    /// [`PodIds::claim`], with `known` saying whether the host's user database has a uid. A
    /// candidate is reserved before it is looked up and the lookup is made without the lock:
    /// the database may be a directory service that takes its time, and the deletes and
    /// restores that release and claim uids meanwhile must not wait for it.
    fn claim_with(
        &self,
        recorded: Option<u32>,
        seed: &str,
        mut known: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let (lo, hi) = self.range;
        let used = || self.used.lock().expect("pod ids lock");
        if let Some(r) = recorded.filter(|r| (lo..=hi).contains(r)) {
            used().insert(r);
            return Some(r);
        }
        let size = u64::from(hi - lo) + 1;
        let start = super::hash::fnv1a(seed) % size;
        for i in 0..size.min(1 << 20) {
            let candidate = lo + ((start + i) % size) as u32;
            if !used().insert(candidate) {
                continue;
            }
            if !known(candidate) {
                return Some(candidate);
            }
            used().remove(&candidate);
        }
        None
    }

    pub fn release(&self, id: u32) {
        self.used.lock().expect("pod ids lock").remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}))
            .unwrap()
    }

    fn policy(own: u32) -> UserPolicy {
        UserPolicy {
            default_user: DefaultUser::Fixed(0),
            ..UserPolicy::permissive(own)
        }
    }

    #[test]
    fn container_settings_win_over_pod_settings() {
        let p = pod(serde_json::json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "supplementalGroups": [3000]},
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1500}}, {"name": "b"}]
        }));
        let spec = p.spec.as_ref().unwrap();
        let a = resolve(&p, &spec.containers[0], &policy(0), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.uid, a.gid, a.groups.clone()),
            (1500, 2000, vec![2000, 3000])
        );
        let b = resolve(&p, &spec.containers[1], &policy(0), None)
            .unwrap()
            .unwrap();
        assert_eq!(b.uid, 1000);
    }

    #[test]
    fn policy_default_and_non_root() {
        let p = pod(serde_json::json!({"containers": [{"name": "a"}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&p, c, &policy(0), None).unwrap().unwrap().uid,
            0,
            "a default of 0: root"
        );
        let with_default = UserPolicy {
            default_user: DefaultUser::Fixed(65534),
            ..policy(0)
        };
        assert_eq!(
            resolve(&p, c, &with_default, None).unwrap().unwrap().uid,
            65534
        );
        let only = UserPolicy {
            allowed: "1000-1999".parse().unwrap(),
            ..policy(0)
        };
        assert!(matches!(
            resolve(&p, c, &only, None),
            Err(UserError::NotAllowed { uid: 0, .. })
        ));
        let p = pod(
            serde_json::json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(resolve(&p, c, &policy(0), None), Err(UserError::RunsAsRoot));
    }

    #[test]
    fn a_non_root_procnode_cannot_switch_users() {
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 0}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&p, c, &policy(1000), None),
            Err(UserError::CannotSwitch { own: 1000, uid: 0 })
        );
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 1000}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&p, c, &policy(1000), None),
            Ok(None),
            "its own uid is fine"
        );
    }

    #[test]
    fn groups_are_policed_and_pods_get_their_own_ids() {
        let p = pod(serde_json::json!({
            "securityContext": {"runAsUser": 65534, "runAsGroup": 0, "supplementalGroups": [6]},
            "containers": [{"name": "a"}]
        }));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let strict = UserPolicy {
            allowed: "65534".parse().unwrap(),
            allowed_gids: "65534".parse().unwrap(),
            ..UserPolicy::permissive(0)
        };
        assert!(matches!(
            resolve(&p, c, &strict, Some(7)),
            Err(UserError::GroupNotAllowed {
                field: "runAsGroup",
                gid: 0,
                ..
            })
        ));
        let p = pod(serde_json::json!({
            "securityContext": {"runAsUser": 65534, "supplementalGroups": [65534, 42]},
            "containers": [{"name": "a"}]
        }));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(matches!(
            resolve(&p, c, &strict, Some(7)),
            Err(UserError::GroupNotAllowed {
                field: "supplementalGroups",
                gid: 42,
                ..
            })
        ));
        let p = pod(
            serde_json::json!({"securityContext": {"fsGroup": 0}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(matches!(
            resolve(&p, c, &strict, Some(7)),
            Err(UserError::GroupNotAllowed {
                field: "fsGroup",
                ..
            })
        ));
        // No runAsUser: the pod's own uid, gid and group.
        let p = pod(serde_json::json!({"containers": [{"name": "a"}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let own = resolve(&p, c, &strict, Some(0x7000_0005)).unwrap().unwrap();
        assert_eq!(
            (own.uid, own.gid, own.groups),
            (0x7000_0005, 0x7000_0005, vec![0x7000_0005])
        );
        // Nobody may name a pod uid.
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 0x7000_0005u32}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(matches!(
            resolve(&p, c, &UserPolicy::permissive(0), None),
            Err(UserError::PodRange { .. })
        ));
        let ids = PodIds::new((100_000, 100_002));
        let a = ids.claim(None, "a").unwrap();
        let b = ids.claim(None, "a").unwrap();
        let c = ids.claim(None, "a").unwrap();
        assert!(a != b && b != c && a != c);
        assert_eq!(ids.claim(None, "a"), None, "the range is used up");
        ids.release(b);
        assert_eq!(ids.claim(None, "x"), Some(b));
        assert_eq!(ids.claim(Some(a), "z"), Some(a), "a recorded uid is kept");
    }

    #[test]
    fn pod_uids_are_looked_up_without_the_lock() {
        use std::sync::{mpsc, Arc};
        let ids = Arc::new(PodIds::new((100_000, 100_009)));
        let held = ids.claim(None, "held").unwrap();
        let (done, finished) = mpsc::channel();
        let other = ids.clone();
        let mut second = None;
        let first = ids.claim_with(None, "same", |_| {
            // A slow user database: meanwhile a delete releases a uid and a pod with the
            // same name asks for one. Neither may wait for this lookup, nor get its uid.
            let (other, done) = (other.clone(), done.clone());
            std::thread::spawn(move || {
                other.release(held);
                let _ = done.send(other.claim_with(None, "same", |_| false));
            });
            second = Some(
                finished
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("a release and a claim went ahead during the lookup"),
            );
            false
        });
        let second = second.unwrap();
        assert!(first.is_some() && second.is_some());
        assert_ne!(first, second, "two pods, one uid");
    }

    #[test]
    fn a_uid_the_host_knows_is_skipped_and_left_free() {
        let ids = PodIds::new((100_000, 100_001));
        let taken = ids.claim_with(None, "a", |_| true);
        assert_eq!(taken, None, "every uid of the range is the host's");
        assert!(
            ids.claim_with(None, "a", |_| false).is_some(),
            "none stayed reserved"
        );
    }

    #[test]
    fn uid_policies_parse() {
        assert_eq!("any".parse::<UidPolicy>().unwrap(), UidPolicy::Any);
        let p: UidPolicy = "1000-1999, 65534".parse().unwrap();
        assert!(p.allows(1500) && p.allows(65534) && !p.allows(0));
        assert_eq!(p.to_string(), "1000-1999,65534");
        for bad in ["", "x", "5-1", "1-"] {
            assert!(bad.parse::<UidPolicy>().is_err(), "{bad}");
        }
    }
}
