//! Pod volumes: prepared once per pod before its first container starts, made visible to each
//! container by its `volumeMounts`.
//!
//! Every volume is a host path. `emptyDir` and `downwardAPI` volumes live in the pod's
//! directory (`POD_DIR/volumes/NAME`, removed with the pod); `hostPath` volumes are host paths
//! under a configured prefix. A mount is made visible three ways:
//!
//! - a bind mount at `mountPath` in a private mount namespace of the container's process (and of
//!   its exec probes and hooks), when procnode is root and `mountPath` exists on the host with
//!   the source's type (procnode does not create directories on the host); `readOnly` makes it
//!   read-only;
//! - a symbolic link `POD_DIR/<mountPath>` to the source, so a container in its default working
//!   directory reaches `/data` as `data`;
//! - an environment variable `PROCNODE_VOLUME_<NAME>` (the volume name upper-cased, `-` and `.`
//!   as `_`) holding the source path.
//!
//! Volume types whose content lives in the API server (secret, configMap, projected) need an
//! [`ObjectSource`]; the web front end has none, since Virtual Kubelet never passes object
//! contents. There the service-account volume every pod carries is given its `namespace` file
//! only, an `optional` secret or configMap is an empty directory, and anything else is a
//! pod-level error, as is every other volume type.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::safepath::{relative, Dir, Links, Owner};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, Pod, Volume};

use super::env::NodeFacts;
use super::process::BindMount;
use crate::quantity::Quantity;

/// Where the kubelet mounts the service-account token volume.
pub const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub use super::env::ObjectSource;

/// What the operator allows.
#[derive(Debug, Clone, Default)]
pub struct VolumePolicy {
    /// hostPath volumes must resolve to a path under one of these.
    pub host_path_prefixes: Vec<PathBuf>,
    /// Bind mounts in a private mount namespace (procnode is root) and tmpfs for
    /// `emptyDir.medium: Memory`.
    pub can_mount: bool,
    /// Each container run has a root of its own (`--pod-root overlay`): a mount point is made
    /// there, so every mountPath is mounted.
    pub overlay_root: bool,
}

/// Why a pod's volumes cannot be set up: the pod fails with [`VolumeError::reason`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    #[error("volume {name:?}: {kind} volumes are not supported by procnode{why}")]
    Unsupported {
        name: String,
        kind: String,
        why: String,
    },
    #[error("volume {name:?}: hostPath {path:?} is not under an allowed prefix ({allowed})")]
    HostPathNotAllowed {
        name: String,
        path: String,
        allowed: String,
    },
    #[error("volume {name:?}: {message}")]
    Setup { name: String, message: String },
    #[error("container {container:?}: volumeMount {mount:?}: {message}")]
    Mount {
        container: String,
        mount: String,
        message: String,
    },
}

impl VolumeError {
    /// The pod's `status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            VolumeError::Unsupported { .. } => "UnsupportedVolume",
            VolumeError::HostPathNotAllowed { .. } => "HostPathNotAllowed",
            VolumeError::Setup { .. } | VolumeError::Mount { .. } => "VolumeSetupFailed",
        }
    }
}

/// A prepared volume: the trusted directory `root` (one procnode made, or an operator's
/// hostPath prefix) and the path `rel` beneath it, resolved again without following links
/// wherever it is used.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `root` joined with `rel`, for messages and the volume's environment variable.
    pub path: PathBuf,
    pub root: PathBuf,
    pub rel: PathBuf,
    pub links: Links,
    /// `emptyDir.sizeLimit` in bytes, watched (or, on tmpfs, enforced by the kernel).
    pub size_limit: Option<(u64, String)>,
    /// A tmpfs procnode mounted (unmounted before the pod directory is removed).
    pub tmpfs: bool,
}

/// A pod's volumes by name.
pub type PodVolumes = BTreeMap<String, Prepared>;

/// The pod directory's subdirectory holding its volumes.
pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// Directories only procnode writes (0755, within the pod directory, which only the pod's own
/// group may enter).
const OWN_DIR: Owner = Owner::mode(0o755);

/// Prepares every volume of `pod` (blocking) in its pod directory `pod_dir` (root-owned, not
/// writable by the pod). Idempotent: a restarted procnode calls it again for the pods it
/// restores.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Dir,
    policy: &VolumePolicy,
    node: &NodeFacts,
    objects: Option<&dyn ObjectSource>,
    pod_id: Option<u32>,
) -> Result<PodVolumes, VolumeError> {
    let spec = pod.spec.as_ref().expect("validated pods have a spec");
    let mut prepared = PodVolumes::new();
    for v in spec.volumes.iter().flatten() {
        let p = prepare_one(pod, v, pod_dir, policy, node, (objects, pod_id))?;
        prepared.insert(v.name.clone(), p);
    }
    Ok(prepared)
}

fn prepare_one(
    pod: &Pod,
    v: &Volume,
    pod_dir: &Dir,
    policy: &VolumePolicy,
    node: &NodeFacts,
    (objects, pod_id): (Option<&dyn ObjectSource>, Option<u32>),
) -> Result<Prepared, VolumeError> {
    let name = &v.name;
    let setup = |message: String| VolumeError::Setup {
        name: name.clone(),
        message,
    };
    let volumes = pod_dir
        .make_dirs(Path::new("volumes"), OWN_DIR, Links::None)
        .map_err(|e| setup(e.to_string()))?;
    let own_dir = volumes.path().join(name);
    // The volume's own directory, made if missing, its owner and mode set again.
    let own = |owner: Owner| -> Result<Dir, VolumeError> {
        let d = volumes
            .make_dirs(Path::new(name), owner, Links::None)
            .map_err(|e| setup(e.to_string()))?;
        d.set_owner(owner).map_err(|e| setup(e.to_string()))?;
        Ok(d)
    };
    let plain = |path: PathBuf| Prepared {
        root: path.clone(),
        rel: PathBuf::new(),
        links: Links::None,
        path,
        size_limit: None,
        tmpfs: false,
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");

    if let Some(e) = &v.empty_dir {
        // The pod's own uid and group's, writable by every container of the pod (the
        // kubelet's 0777): only the pod's own group may enter the pod directory around it.
        if !is_mount_point(&own_dir) {
            own(Owner {
                mode: 0o777,
                ids: pod_id.map(|id| (id, id)),
            })?;
        }
        let limit = match &e.size_limit {
            Some(q) => {
                let bytes =
                    q.0.parse::<Quantity>()
                        .ok()
                        .and_then(|q| q.to_bytes())
                        .ok_or_else(|| setup(format!("sizeLimit {:?} is not a quantity", q.0)))?;
                Some((bytes, q.0.clone()))
            }
            None => None,
        };
        let memory = e.medium.as_deref() == Some("Memory");
        let tmpfs = memory && policy.can_mount;
        if tmpfs && !is_mount_point(&own_dir) {
            let mut size = limit
                .as_ref()
                .map(|(b, _)| format!("size={b},mode=0777"))
                .unwrap_or_else(|| "mode=0777".to_string());
            if let Some(id) = pod_id {
                size.push_str(&format!(",uid={id},gid={id}"));
            }
            nix::mount::mount(
                Some("tmpfs"),
                &own_dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(size.as_str()),
            )
            .map_err(|e| setup(format!("mounting a tmpfs: {e}")))?;
        }
        return Ok(Prepared {
            size_limit: limit,
            tmpfs,
            ..plain(own_dir)
        });
    }
    if let Some(h) = &v.host_path {
        return host_path(name, &h.path, h.type_.as_deref().unwrap_or(""), policy);
    }
    if let Some(d) = &v.downward_api {
        let dir = own(OWN_DIR)?;
        write_downward(pod, d.items.as_deref().unwrap_or_default(), &dir, node).map_err(setup)?;
        return Ok(plain(own_dir));
    }
    let service_account = is_service_account_volume(pod, v);
    if let Some(p) = &v.projected {
        let dir = own(OWN_DIR)?;
        for source in p.sources.iter().flatten() {
            if let Some(d) = &source.downward_api {
                write_downward(pod, d.items.as_deref().unwrap_or_default(), &dir, node)
                    .map_err(setup)?;
            } else if let Some(cm) = &source.config_map {
                let data = objects.and_then(|o| o.config_map(namespace, &cm.name));
                let optional = cm.optional == Some(true) || service_account;
                write_object(
                    &dir,
                    data,
                    cm.items.as_deref(),
                    optional,
                    (&cm.name, "ConfigMap", p.default_mode),
                )
                .map_err(|m| missing_object(name, "configMap", m, objects.is_none()))?;
            } else if let Some(s) = &source.secret {
                let data = objects.and_then(|o| o.secret(namespace, &s.name));
                let optional = s.optional == Some(true) || service_account;
                write_object(
                    &dir,
                    data,
                    s.items.as_deref(),
                    optional,
                    (&s.name, "Secret", p.default_mode),
                )
                .map_err(|m| missing_object(name, "secret", m, objects.is_none()))?;
            } else if let Some(t) = &source.service_account_token {
                // From the API server's TokenRequest: only a front end with API access can
                // fill it in; web mode leaves the file out.
                let account = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let token = objects.and_then(|o| {
                    o.service_account_token(
                        namespace,
                        &account,
                        t.audience.as_deref(),
                        t.expiration_seconds,
                    )
                });
                if let Some(token) = token {
                    let path = relative(&t.path).map_err(|e| setup(format!("token path: {e}")))?;
                    let mode = (p.default_mode.unwrap_or(0o644) & 0o777) as u32;
                    write_file_mode(&dir, path, token.as_bytes(), mode).map_err(setup)?;
                } else if objects.is_some() {
                    return Err(setup(format!(
                        "no token for service account {account:?} (TokenRequest failed)"
                    )));
                }
            } else {
                return Err(unsupported(name, "this projected source", ""));
            }
        }
        return Ok(plain(own_dir));
    }
    if let Some(s) = &v.secret {
        let dir = own(OWN_DIR)?;
        let secret = s.secret_name.clone().unwrap_or_default();
        let data = objects.and_then(|o| o.secret(namespace, &secret));
        let optional = s.optional == Some(true) || service_account;
        if service_account && data.is_none() {
            write_file(&dir, Path::new("namespace"), namespace.as_bytes()).map_err(setup)?;
            return Ok(plain(own_dir));
        }
        write_object(
            &dir,
            data,
            s.items.as_deref(),
            optional,
            (&secret, "Secret", s.default_mode),
        )
        .map_err(|m| missing_object(name, "secret", m, objects.is_none()))?;
        return Ok(plain(own_dir));
    }
    if let Some(cm) = &v.config_map {
        let dir = own(OWN_DIR)?;
        let data = objects.and_then(|o| o.config_map(namespace, &cm.name));
        write_object(
            &dir,
            data,
            cm.items.as_deref(),
            cm.optional == Some(true),
            (&cm.name, "ConfigMap", cm.default_mode),
        )
        .map_err(|m| missing_object(name, "configMap", m, objects.is_none()))?;
        return Ok(plain(own_dir));
    }
    Err(unsupported(name, volume_kind(v), ""))
}

fn unsupported(name: &str, kind: &str, why: &str) -> VolumeError {
    VolumeError::Unsupported {
        name: name.to_string(),
        kind: kind.to_string(),
        why: why.to_string(),
    }
}

fn missing_object(name: &str, kind: &str, message: String, no_api: bool) -> VolumeError {
    if no_api {
        unsupported(
            name,
            kind,
            " in web mode: Virtual Kubelet's web broker passes no Secret or ConfigMap contents \
             (mark the source optional, use env, or run procnode as a node)",
        )
    } else {
        VolumeError::Setup {
            name: name.to_string(),
            message,
        }
    }
}

/// The name of the volume type `v` uses, for messages.
fn volume_kind(v: &Volume) -> &'static str {
    let unsupported = [
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()),
        ("azureDisk", v.azure_disk.is_some()),
        ("azureFile", v.azure_file.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("cinder", v.cinder.is_some()),
        ("csi", v.csi.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("fc", v.fc.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
        ("flocker", v.flocker.is_some()),
        ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("gitRepo", v.git_repo.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("image", v.image.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("nfs", v.nfs.is_some()),
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("photonPersistentDisk", v.photon_persistent_disk.is_some()),
        ("portworxVolume", v.portworx_volume.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("rbd", v.rbd.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        ("storageos", v.storageos.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()),
    ];
    unsupported
        .into_iter()
        .find_map(|(kind, used)| used.then_some(kind))
        .unwrap_or("this")
}

/// The volume the service-account admission adds: mounted at [`SERVICE_ACCOUNT_PATH`], or a
/// projected volume with a token source.
fn is_service_account_volume(pod: &Pod, v: &Volume) -> bool {
    let spec = pod.spec.as_ref().expect("validated");
    let mounted_there = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.name == v.name && m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_PATH);
    let token = v.projected.as_ref().is_some_and(|p| {
        p.sources
            .iter()
            .flatten()
            .any(|s| s.service_account_token.is_some())
    });
    mounted_there || token
}

/// Writes a Secret's or ConfigMap's keys (or the selected `items`) as files.
fn write_object(
    dir: &Dir,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    optional: bool,
    (object, kind, default_mode): (&str, &str, Option<i32>),
) -> Result<(), String> {
    // The kubelet's default file mode for these volumes: 0644.
    let file_mode = |m: Option<i32>| (m.or(default_mode).unwrap_or(0o644) & 0o777) as u32;
    let Some(data) = data else {
        return if optional {
            Ok(())
        } else {
            Err(format!("{kind} {object:?} not found"))
        };
    };
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| format!("{kind} {object:?} has no key {:?}", item.key))?;
                let path = relative(&item.path).map_err(|e| format!("item path: {e}"))?;
                write_file_mode(dir, path, value, file_mode(item.mode))?;
            }
        }
        _ => {
            for (key, value) in &data {
                let path = relative(key).map_err(|e| format!("key: {e}"))?;
                write_file_mode(dir, path, value, file_mode(None))?;
            }
        }
    }
    Ok(())
}

fn write_file_mode(dir: &Dir, path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    dir.write_file(path, content, Owner::mode(mode), OWN_DIR, Links::None)
        .map_err(|e| e.to_string())
}

/// Writes downwardAPI items as files.
fn write_downward(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    dir: &Dir,
    node: &NodeFacts,
) -> Result<(), String> {
    for item in items {
        let path = relative(&item.path).map_err(|e| format!("item path: {e}"))?;
        let value = if let Some(f) = &item.field_ref {
            let map = |m: Option<&BTreeMap<String, String>>| {
                m.into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v:?}\n"))
                    .collect::<String>()
            };
            match f.field_path.as_str() {
                "metadata.labels" => map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => map(pod.metadata.annotations.as_ref()),
                other => super::env::field_value(pod, other, node)
                    .ok_or_else(|| format!("fieldRef {other:?} is not supported"))?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let spec = pod.spec.as_ref().expect("validated");
            let container = spec
                .containers
                .iter()
                .find(|c| Some(c.name.as_str()) == r.container_name.as_deref())
                .or(spec.containers.first())
                .ok_or("the pod has no containers")?;
            super::env::resource_value(pod, container, r, node, &item.path)
                .map_err(|e| e.to_string())?
        } else {
            return Err(format!(
                "item {:?} has neither fieldRef nor resourceFieldRef",
                item.path
            ));
        };
        write_file(dir, path, value.as_bytes())?;
    }
    Ok(())
}

/// Writes a file whole (a temporary file renamed over it), so that a refresh never shows a
/// reader half a file.
fn write_file(dir: &Dir, path: &Path, content: &[u8]) -> Result<(), String> {
    write_file_mode(dir, path, content, 0o644)
}

/// Checks (and for the *OrCreate types, creates) a hostPath volume under the allowed prefixes.
/// The path is taken apart into a prefix (trusted: the operator's) and the rest, which is
/// resolved beneath the prefix: links are followed only while they stay beneath it, so none a
/// pod made can lead elsewhere, and what is created is created there.
fn host_path(
    name: &str,
    path: &str,
    type_: &str,
    policy: &VolumePolicy,
) -> Result<Prepared, VolumeError> {
    use nix::sys::stat::SFlag;
    let setup = |message: String| VolumeError::Setup {
        name: name.to_string(),
        message,
    };
    let not_allowed = || VolumeError::HostPathNotAllowed {
        name: name.to_string(),
        path: path.to_string(),
        allowed: if policy.host_path_prefixes.is_empty() {
            "none is configured: see --host-path-prefix".to_string()
        } else {
            policy
                .host_path_prefixes
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    let requested = Path::new(path);
    if !requested.is_absolute() || requested.components().any(|c| c == Component::ParentDir) {
        return Err(not_allowed());
    }
    // The prefix as written or as the host resolves it (the operator's own links).
    let (prefix, rel) = policy
        .host_path_prefixes
        .iter()
        .flat_map(|p| {
            [
                p.clone(),
                std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
            ]
        })
        .find_map(|p| {
            let rel = requested.strip_prefix(&p).ok()?.to_path_buf();
            Some((std::fs::canonicalize(&p).ok()?, rel))
        })
        .ok_or_else(not_allowed)?;
    let root = Dir::open_trusted(&prefix).map_err(|e| setup(e.to_string()))?;
    let escaped = |e: io::Error| {
        if e.kind() == io::ErrorKind::CrossesDevices {
            not_allowed()
        } else {
            setup(e.to_string())
        }
    };
    let kind = root.kind(&rel, Links::Beneath).map_err(escaped)?;
    let kind_ok = |want: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(setup(format!(
                "hostPath type check failed: {path} is not a {want}"
            )))
        }
    };
    let is = |k: SFlag| kind == Some(k);
    match type_ {
        "" => {}
        "DirectoryOrCreate" => {
            if kind.is_none() {
                root.make_dirs(&rel, Owner::mode(0o755), Links::Beneath)
                    .map_err(escaped)?;
            }
            let now = root.kind(&rel, Links::Beneath).map_err(escaped)?;
            kind_ok("directory", now == Some(SFlag::S_IFDIR))?;
        }
        "Directory" => kind_ok("directory", is(SFlag::S_IFDIR))?,
        "FileOrCreate" => {
            if kind.is_none() {
                root.make_file(&rel, Owner::mode(0o644), Links::Beneath)
                    .map_err(|e| setup(format!("creating {path}: {e}")))?;
            }
            let now = root.kind(&rel, Links::Beneath).map_err(escaped)?;
            kind_ok("file", now == Some(SFlag::S_IFREG))?;
        }
        "File" => kind_ok("file", is(SFlag::S_IFREG))?,
        "Socket" => kind_ok("socket", is(SFlag::S_IFSOCK))?,
        "CharDevice" => kind_ok("character device", is(SFlag::S_IFCHR))?,
        "BlockDevice" => kind_ok("block device", is(SFlag::S_IFBLK))?,
        other => return Err(setup(format!("unknown hostPath type {other:?}"))),
    }
    Ok(Prepared {
        path: if rel.as_os_str().is_empty() {
            prefix.clone()
        } else {
            prefix.join(&rel)
        },
        root: prefix,
        rel,
        links: Links::Beneath,
        size_limit: None,
        tmpfs: false,
    })
}

/// A container's bind mounts and its volume environment variables.
pub type ContainerView = (Vec<BindMount>, Vec<(String, String)>);

/// How one container sees the pod's volumes: bind mounts (when possible), symbolic links in
/// its working directory `work` (when it runs there; made here, never through a link) and
/// environment variables. A subPath is resolved (and made, if missing) beneath its volume
/// without following a link a pod could have made, so nothing a container put in a volume can
/// lead outside it; `owner` owns what is made. Blocking.
pub fn for_container(
    container: &Container,
    volumes: &PodVolumes,
    work: Option<&Dir>,
    policy: &VolumePolicy,
    owner: Option<(u32, u32)>,
) -> Result<ContainerView, VolumeError> {
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let fail = |message: String| VolumeError::Mount {
            container: container.name.clone(),
            mount: m.mount_path.clone(),
            message,
        };
        let volume = volumes
            .get(&m.name)
            .ok_or_else(|| fail(format!("no volume named {:?}", m.name)))?;
        let root = Dir::open_trusted(&volume.root).map_err(|e| fail(e.to_string()))?;
        let mut rel = volume.rel.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            rel = rel.join(relative(sub).map_err(|e| fail(format!("subPath {e}")))?);
            let missing = root
                .kind(&rel, volume.links)
                .map_err(|e| fail(format!("subPath: {e}")))?
                .is_none();
            if missing {
                let made = Owner {
                    mode: if volume.links == Links::None {
                        0o777
                    } else {
                        0o755
                    },
                    ids: owner,
                };
                root.make_dirs(&rel, made, volume.links)
                    .map_err(|e| fail(format!("subPath: {e}")))?;
            }
        }
        let source = if rel.as_os_str().is_empty() {
            volume.root.clone()
        } else {
            volume.root.join(&rel)
        };
        let target = Path::new(&m.mount_path);
        if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
            return Err(fail("mountPath must be absolute, without '..'".into()));
        }
        env.push((env_name(&m.name), source.display().to_string()));
        // WORK/<mountPath> → source (a link already there stays: first mount wins).
        if let Some(work) = work {
            let link = target.strip_prefix("/").unwrap_or(target);
            if !link.as_os_str().is_empty() {
                let dirs = Owner {
                    mode: 0o755,
                    ids: owner,
                };
                work.symlink(link, &source, dirs)
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        let source_is_dir =
            root.kind(&rel, volume.links).ok().flatten() == Some(nix::sys::stat::SFlag::S_IFDIR);
        let bindable = policy.can_mount
            && (policy.overlay_root
                || std::fs::metadata(target).is_ok_and(|t| t.is_dir() == source_is_dir));
        if bindable {
            mounts.push(BindMount {
                root: volume.root.clone(),
                sub: rel,
                links: volume.links,
                target: target.to_path_buf(),
                read_only: m.read_only == Some(true),
            });
        }
    }
    Ok((mounts, env))
}

/// `PROCNODE_VOLUME_<NAME>` for a volume name.
pub fn env_name(volume: &str) -> String {
    let upper: String = volume
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    format!("PROCNODE_VOLUME_{upper}")
}

/// Bytes used under `dir` (allocated blocks, as `du` counts them; not following links).
pub fn usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                total += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    total
}

/// Unmounts the tmpfs volumes procnode mounted in `pod_dir` (before it is removed). Only
/// the entries of the pod's `volumes/` directory are looked at, reached through a directory
/// only procnode writes and without following links. Blocking.
pub fn release(pod_dir: &Path) {
    let Ok(dir) = Dir::open_trusted(&volumes_dir(pod_dir)) else {
        return;
    };
    for mounted in dir.mounted_children() {
        if let Err(err) = nix::mount::umount2(
            &mounted,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        ) {
            tracing::warn!(dir = %mounted.display(), error = %err, "could not unmount a volume");
        }
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_shell_friendly() {
        assert_eq!(env_name("data-dir.v1"), "PROCNODE_VOLUME_DATA_DIR_V1");
    }

    #[test]
    fn host_paths_resolve_links_before_the_prefix_check() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
        let policy = VolumePolicy {
            host_path_prefixes: vec![allowed.clone()],
            can_mount: false,
            overlay_root: false,
        };
        let p = |s: &Path| s.display().to_string();
        assert!(host_path("v", &p(&allowed), "Directory", &policy).is_ok());
        let err = host_path("v", &p(&allowed.join("escape")), "", &policy).unwrap_err();
        assert_eq!(err.reason(), "HostPathNotAllowed");
        let err = host_path("v", &format!("{}/../outside", p(&allowed)), "", &policy).unwrap_err();
        assert_eq!(err.reason(), "HostPathNotAllowed");
        let made = host_path(
            "v",
            &p(&allowed.join("new/dir")),
            "DirectoryOrCreate",
            &policy,
        );
        assert!(made.unwrap().path.is_dir());
        let err = host_path("v", &p(&allowed.join("missing")), "Directory", &policy).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let none = VolumePolicy::default();
        let err = host_path("v", &p(&allowed), "", &none).unwrap_err();
        assert!(err.to_string().contains("--host-path-prefix"), "{err}");
    }
}
