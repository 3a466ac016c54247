//! File operations procnode makes as root on a pod's behalf, resolved beneath a trusted
//! directory handle and never through a symbolic link or onto another mount a pod could have
//! put there (the kubelet's subPath CVEs are the lesson).
//!
//! A [`Dir`] is an open directory procnode trusts: one it made itself under the state
//! directory, or a prefix the operator configured. Everything below it is reached with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` one path at a time,
//! and created, chmodded, chowned, written and renamed through the directory descriptors so
//! reached, never through a path string that the pod could change between a check and a use.
//! Every other module goes through this one for pod-controlled trees (volumes, subPaths, the
//! links in the working directory, hostPath creation, the termination message).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// How far a resolution may wander below its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Links {
    /// No symbolic link at all, and no crossing onto another mount (trees a pod can write).
    None,
    /// Links that stay beneath the root, and other mounts (an operator's hostPath prefix, whose
    /// own layout may use both; nothing can lead outside it).
    Beneath,
}

impl Links {
    fn flags(self) -> ResolveFlag {
        match self {
            Links::None => {
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV
            }
            Links::Beneath => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        }
    }
}

/// Who owns what procnode creates, and with which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub mode: u32,
    /// `None` keeps procnode's own uid and gid.
    pub ids: Option<(u32, u32)>,
}

impl Owner {
    pub const fn mode(mode: u32) -> Owner {
        Owner { mode, ids: None }
    }
}

/// A trusted, open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A relative path of plain components only (no `..`, no `.`, not absolute, not empty).
pub fn relative(p: &str) -> Result<&Path, String> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("{p:?} must be a relative path without '..'"));
    }
    Ok(path)
}

/// An error naming `path`. Its kind says what was refused: `PermissionDenied` for a link in
/// the way, `CrossesDevices` for a path that leaves the directory (or crosses a mount).
fn explain(path: &Path, e: Errno) -> io::Error {
    let (kind, why) = match e {
        Errno::ELOOP => (
            io::ErrorKind::PermissionDenied,
            "a symbolic link is in the way (procnode does not follow links here)",
        ),
        Errno::EXDEV => (
            io::ErrorKind::CrossesDevices,
            "the path leaves the directory or crosses another mount",
        ),
        _ => {
            let kind = io::Error::from(e).kind();
            return io::Error::new(kind, format!("{}: {e}", path.display()));
        }
    };
    io::Error::new(kind, format!("{}: {why}", path.display()))
}

impl Dir {
    /// Opens a directory procnode trusts by its absolute path (the state directory, a directory
    /// it made, an operator's prefix). The last component must not be a link.
    pub fn open_trusted(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| explain(path, e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn at(&self, rel: &Path, flags: OFlag, links: Links) -> io::Result<OwnedFd> {
        // openat2 refuses flags that do not go with O_PATH.
        let extra = if flags.contains(OFlag::O_PATH) {
            OFlag::O_CLOEXEC
        } else {
            OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = OpenHow::new().flags(flags | extra).resolve(links.flags());
        openat2(self.fd.as_fd(), rel, how).map_err(|e| explain(&self.path.join(rel), e))
    }

    /// The existing directory `rel` below this one.
    pub fn open_dir(&self, rel: &Path, links: Links) -> io::Result<Dir> {
        let fd = self.at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, links)?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// An `O_PATH` handle on whatever `rel` is (a file or directory, never a link), for a
    /// bind mount from `/proc/self/fd/N`.
    pub fn open_path(&self, rel: &Path, links: Links) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.at(Path::new("."), OFlag::O_PATH, links);
        }
        self.at(rel, OFlag::O_PATH, links)
    }

    /// Makes `rel` and its missing parents (each new one with `owner`), and opens it. Existing
    /// directories keep their modes.
    pub fn make_dirs(&self, rel: &Path, owner: Owner, links: Links) -> io::Result<Dir> {
        let mut dir = self.open_dir(Path::new("."), links)?;
        dir.path = self.path.clone();
        for part in rel.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: must be a relative path without '..'", rel.display()),
                ));
            };
            dir = dir.child_dir(name, owner, links)?;
        }
        Ok(dir)
    }

    fn child_dir(&self, name: &OsStr, owner: Owner, links: Links) -> io::Result<Dir> {
        let made = match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(explain(&self.path.join(name), e)),
        };
        let child = self.open_dir(Path::new(name), links)?;
        if made {
            child.set_owner(owner)?;
        }
        Ok(child)
    }

    /// Sets this directory's mode and (if given) owner, through its descriptor.
    pub fn set_owner(&self, owner: Owner) -> io::Result<()> {
        set_owner(&self.fd, &self.path, owner)
    }

    /// Writes `rel` whole: a new file beside it (never an existing one, never through a link),
    /// renamed over it, so a reader never sees half a file. Parents are made with `dirs`.
    pub fn write_file(
        &self,
        rel: &Path,
        content: &[u8],
        file: Owner,
        dirs: Owner,
        links: Links,
    ) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let parent = self.make_dirs(parent, dirs, links)?;
        let mut tmp = name.to_os_string();
        tmp.push(format!(".procnode-tmp{}", std::process::id()));
        let _ = nix::unistd::unlinkat(
            parent.fd.as_fd(),
            tmp.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = parent.at(
            Path::new(&tmp),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            links,
        )?;
        let target = parent.path.join(name);
        let written = (|| {
            set_owner(&fd, &target, file)?;
            let mut f = std::fs::File::from(fd);
            f.write_all(content)?;
            nix::fcntl::renameat(parent.fd.as_fd(), tmp.as_os_str(), parent.fd.as_fd(), name)
                .map_err(|e| explain(&target, e))
        })();
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                parent.fd.as_fd(),
                tmp.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written
    }

    /// Makes the symbolic link `rel` → `target` (parents with `dirs`); one already there stays.
    pub fn symlink(&self, rel: &Path, target: &Path, dirs: Owner) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let parent = self.make_dirs(parent, dirs, Links::None)?;
        match nix::unistd::symlinkat(target, parent.fd.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(explain(&parent.path.join(name), e)),
        }
    }

    /// Makes (if missing) the empty file `rel`, and opens nothing else.
    pub fn make_file(&self, rel: &Path, owner: Owner, links: Links) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let parent = self.open_dir(parent, links)?;
        match parent.at(
            Path::new(name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            links,
        ) {
            Ok(fd) => set_owner(&fd, &parent.path.join(name), owner),
            Err(e) if e.raw_os_error() == Some(Errno::EEXIST as i32) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What `rel` is (not following a final link), or `None` if it does not exist.
    pub fn kind(&self, rel: &Path, links: Links) -> io::Result<Option<SFlag>> {
        match self.open_path(rel, links) {
            Ok(fd) => {
                let st = fstat(&fd)?;
                Ok(Some(SFlag::from_bits_truncate(
                    st.st_mode & SFlag::S_IFMT.bits(),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entries of this directory that are mount points (another device than this one).
    pub fn mounted_children(&self) -> Vec<PathBuf> {
        let Ok(me) = fstat(&self.fd) else {
            return Vec::new();
        };
        // The names as listed through the trusted path; each is then opened beneath the
        // descriptor, so a name swapped meanwhile cannot lead elsewhere.
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| PathBuf::from(e.file_name()))
            .collect();
        names
            .into_iter()
            .filter(|n| {
                // Opened without following links and without crossing mounts: a mount point
                // answers EXDEV, a directory of the same file system opens.
                let how = OpenHow::new()
                    .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
                match openat2(self.fd.as_fd(), n.as_path(), how) {
                    Ok(fd) => fstat(&fd).is_ok_and(|st| st.st_dev != me.st_dev),
                    Err(_) => false,
                }
            })
            .map(|n| self.path.join(n))
            .collect()
    }
}

fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", rel.display()),
        )),
    }
}

fn set_owner(fd: &OwnedFd, path: &Path, owner: Owner) -> io::Result<()> {
    if let Some((uid, gid)) = owner.ids {
        nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| explain(path, e))?;
    }
    fchmod(fd, Mode::from_bits_truncate(owner.mode)).map_err(|e| explain(path, e))
}

/// Reads at most `max` bytes of `path` if it is a regular file that the identity `reader`
/// (uid, gid, groups; `None`: procnode's own) may open: the open is made by a thread that takes
/// that identity as its file system credentials, without blocking (a FIFO or a device is
/// refused after the open, before any read). With `root`, `path` is relative and resolved as
/// if `root` were `/` (`RESOLVE_IN_ROOT`: a link never leads out of it), and only what lies
/// below `root` needs the reader's permission. `None` when there is nothing to read.
pub fn read_as(
    root: Option<&Dir>,
    path: &Path,
    reader: Option<(u32, u32, Vec<u32>)>,
    max: usize,
) -> Option<Vec<u8>> {
    let path = path.to_path_buf();
    let root = match root {
        Some(dir) => Some(dir.fd.try_clone().ok()?),
        None => None,
    };
    // A thread of its own: its credentials die with it.
    std::thread::spawn(move || {
        if let Some((uid, gid, groups)) = &reader {
            super::process::take_fs_identity(*uid, *gid, groups).ok()?;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = match &root {
            Some(root) => {
                let how = OpenHow::new()
                    .flags(flags)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
                openat2(root.as_fd(), &path, how).ok()?
            }
            None => nix::fcntl::open(&path, flags, Mode::empty()).ok()?,
        };
        let st = fstat(&fd).ok()?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return None;
        }
        let mut buf = Vec::new();
        std::fs::File::from(fd)
            .take(max as u64)
            .read_to_end(&mut buf)
            .ok()?;
        Some(buf)
    })
    .join()
    .ok()
    .flatten()
}

/// Whether `rel` names anything in `root` resolved as if `root` were `/` (never outside it).
pub fn exists_in_root(root: &Dir, rel: &Path) -> bool {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.fd.as_fd(), rel, how).is_ok()
}

/// Makes (if missing) and opens with `O_PATH` the mount point `rel` in a container's own root
/// `root`, resolving every component as the container would: a symbolic link is followed
/// inside `root` (`RESOLVE_IN_ROOT`), never out of it. A missing last component is made a
/// directory, or an empty file when `file`; missing parents are made directories (root's,
/// 0755). Used only on a run's fresh root, whose writable layer takes what is made. Blocking.
pub fn mount_point_in_root(root: &Dir, rel: &Path, file: bool) -> io::Result<OwnedFd> {
    let in_root = |p: &Path| {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(root.fd.as_fd(), p, how)
    };
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: must be a relative path without '..'", rel.display()),
            )),
        })
        .collect::<io::Result<_>>()?;
    // Each component from its resolved parent: opened if it is there, else made and opened.
    let mut prefix = PathBuf::new();
    let mut current = in_root(Path::new(".")).map_err(|e| explain(&root.path, e))?;
    for (i, name) in parts.iter().enumerate() {
        prefix.push(name);
        match in_root(&prefix) {
            Ok(fd) => {
                current = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(explain(&root.path.join(&prefix), e)),
        }
        // `current` (the parent) is an O_PATH handle: make the entry through a real one.
        let parent_dir = nix::fcntl::openat(
            current.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| explain(&root.path.join(&prefix), e))?;
        let last = i + 1 == parts.len();
        let made = if last && file {
            nix::fcntl::openat(
                parent_dir.as_fd(),
                *name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            mkdirat(parent_dir.as_fd(), *name, Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(explain(&root.path.join(&prefix), e)),
        }
        current = in_root(&prefix).map_err(|e| explain(&root.path.join(&prefix), e))?;
    }
    Ok(current)
}

/// The path through which a bind mount uses `fd` as its source.
pub fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_in_a_root_follow_its_links_inside_it_never_out() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("run")).unwrap();
        // An absolute link as a host root has them (/var/run -> /run), and one aimed at a real
        // directory outside: both resolve inside the root.
        std::fs::create_dir(root.path().join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.path().join("var/run")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.path().join("escape")).unwrap();
        let dir = Dir::open_trusted(root.path()).unwrap();
        mount_point_in_root(&dir, Path::new("var/run/app/sock.d"), false).unwrap();
        assert!(root.path().join("run/app/sock.d").is_dir());
        // Where the link leads inside the root does not exist: refused, nothing made.
        assert!(mount_point_in_root(&dir, Path::new("escape/conf"), true).is_err());
        let inside = root.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        mount_point_in_root(&dir, Path::new("escape/conf"), true).unwrap();
        assert!(
            std::fs::read_dir(host.path()).unwrap().next().is_none(),
            "nothing made outside the root"
        );
        assert!(
            inside.join("conf").is_file(),
            "made where the link leads inside the root"
        );
        assert!(mount_point_in_root(&dir, Path::new("../x"), false).is_err());
    }

    #[test]
    fn relative_paths_cannot_climb() {
        assert!(relative("a/b").is_ok());
        for bad in ["", "../x", "a/../../b", "/abs", "./a"] {
            assert!(relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nothing_is_made_or_written_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let dir = Dir::open_trusted(&root).unwrap();
        let own = Owner::mode(0o755);
        let err = dir
            .make_dirs(Path::new("link/new"), own, Links::None)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = dir
            .write_file(Path::new("link/f"), b"x", own, own, Links::None)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A link as the file itself: replaced by the rename, its target untouched.
        std::os::unix::fs::symlink(outside.join("t"), root.join("f")).unwrap();
        dir.write_file(Path::new("f"), b"x", own, own, Links::None)
            .unwrap();
        assert!(!outside.join("t").exists());
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Within the root, links are fine where allowed, and still cannot lead out.
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.join("inner")).unwrap();
        assert!(dir.open_dir(Path::new("inner"), Links::Beneath).is_ok());
        assert!(dir.open_dir(Path::new("inner"), Links::None).is_err());
        assert!(dir.open_dir(Path::new("link"), Links::Beneath).is_err());
        let made = dir
            .make_dirs(Path::new("a/b"), Owner::mode(0o750), Links::None)
            .unwrap();
        assert_eq!(made.path(), root.join("a/b"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("a/b")).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o750);
    }

    #[test]
    fn reads_only_regular_files_and_never_blocks() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(read_as(None, &fifo, None, 10), None);
        assert_eq!(read_as(None, Path::new("/dev/zero"), None, 10), None);
        let file = tmp.path().join("f");
        std::fs::write(&file, "0123456789abc").unwrap();
        assert_eq!(read_as(None, &file, None, 10).unwrap(), b"0123456789");
    }
}
