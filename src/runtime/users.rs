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

/// The user settings of procnode.
#[derive(Debug, Clone)]
pub struct UserPolicy {
    pub allowed: UidPolicy,
    /// The uid of containers that set no `runAsUser`, when procnode runs as root.
    pub default_uid: Option<u32>,
    /// procnode's own effective uid.
    pub own_uid: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserError {
    #[error("runAsUser {uid} is not allowed by procnode's uid policy (--allowed-uids {policy})")]
    NotAllowed { uid: u32, policy: String },
    #[error("container has runAsNonRoot and would run as root (set runAsUser, or --default-uid)")]
    RunsAsRoot,
    #[error("procnode runs as uid {own} and cannot switch to runAsUser {uid}")]
    CannotSwitch { own: u32, uid: u32 },
    #[error("{field} {value} is not a valid id")]
    Invalid { field: &'static str, value: i64 },
}

fn id(field: &'static str, value: i64) -> Result<u32, UserError> {
    u32::try_from(value).map_err(|_| UserError::Invalid { field, value })
}

/// The identity container `c` of `pod` runs as; `None` means procnode's own.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    policy: &UserPolicy,
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
    let supplemental: Vec<u32> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| id("supplementalGroups", g))
        .collect::<Result<_, _>>()?;

    let root = policy.own_uid == 0;
    let uid = run_as_user.or(if root { policy.default_uid } else { None });
    let effective = uid.unwrap_or(policy.own_uid);
    if non_root && effective == 0 {
        return Err(UserError::RunsAsRoot);
    }
    if !policy.allowed.allows(effective) {
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
    let gid = run_as_group.unwrap_or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw())
    });
    let mut groups = vec![gid];
    groups.extend(supplemental.into_iter().filter(|g| *g != gid));
    Ok(Some(UserSpec { uid, gid, groups }))
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
            allowed: UidPolicy::Any,
            default_uid: None,
            own_uid: own,
        }
    }

    #[test]
    fn container_settings_win_over_pod_settings() {
        let p = pod(serde_json::json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "supplementalGroups": [3000]},
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1500}}, {"name": "b"}]
        }));
        let spec = p.spec.as_ref().unwrap();
        let a = resolve(&p, &spec.containers[0], &policy(0))
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.uid, a.gid, a.groups.clone()),
            (1500, 2000, vec![2000, 3000])
        );
        let b = resolve(&p, &spec.containers[1], &policy(0))
            .unwrap()
            .unwrap();
        assert_eq!(b.uid, 1000);
    }

    #[test]
    fn policy_default_and_non_root() {
        let p = pod(serde_json::json!({"containers": [{"name": "a"}]}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&p, c, &policy(0)).unwrap(),
            None,
            "root without a default: root"
        );
        let with_default = UserPolicy {
            default_uid: Some(65534),
            ..policy(0)
        };
        assert_eq!(resolve(&p, c, &with_default).unwrap().unwrap().uid, 65534);
        let only = UserPolicy {
            allowed: "1000-1999".parse().unwrap(),
            ..policy(0)
        };
        assert!(matches!(
            resolve(&p, c, &only),
            Err(UserError::NotAllowed { uid: 0, .. })
        ));
        let p = pod(
            serde_json::json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(resolve(&p, c, &policy(0)), Err(UserError::RunsAsRoot));
    }

    #[test]
    fn a_non_root_procnode_cannot_switch_users() {
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 0}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&p, c, &policy(1000)),
            Err(UserError::CannotSwitch { own: 1000, uid: 0 })
        );
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 1000}, "containers": [{"name": "a"}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&p, c, &policy(1000)),
            Ok(None),
            "its own uid is fine"
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
