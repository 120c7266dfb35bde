//! Copies of unpacked layers owned by a user namespace's id range.
//!
//! A container with `userns = true` runs as host uid 100000+ (see `runtime::userns`). Layers
//! are unpacked owned by their tar headers' ids (mostly root), which such a container would
//! see as `nobody`. Like Docker's `userns-remap`, the store keeps a second copy of each layer
//! with every owner shifted by the map's base, made once per layer and base and shared by all
//! containers that use it:
//!
//! ```text
//! layers-shifted/<base>/<chain-id hex>/
//! ```
//!
//! A copy is built in `tmp/` and renamed into place, so a crash never leaves a half copy
//! where containers look. Whiteouts (0/0 character devices), opaque directories, symlinks,
//! hardlinks within the layer and mode bits (set after the chown, which clears set-id bits)
//! are carried over.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::layerfs::LayerFs;
use super::staging::remove_tree;
use super::{io_err, Store, StoreError, StoredImage};
use crate::runtime::userns::IdMap;

/// Container id an unmapped owner becomes (the kernel's overflow id, `nobody`).
const OVERFLOW_ID: u32 = 65_534;

impl Store {
    /// The image's layer directories (bottom first, like [`StoredImage::layer_dirs`]) as
    /// copies owned by `map`'s range, made when missing.
    pub fn shifted_layer_dirs(
        &self,
        image: &StoredImage,
        map: &IdMap,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let base_dir = self.root.join("layers-shifted").join(map.host.to_string());
        fs::create_dir_all(&base_dir).map_err(io_err("create", &base_dir))?;
        let mut out = Vec::with_capacity(image.layer_dirs.len());
        for layer in &image.layer_dirs {
            let name = layer.file_name().ok_or_else(|| StoreError::Io {
                op: "name the shifted copy of",
                path: layer.clone(),
                source: io::Error::other("layer directory has no name"),
            })?;
            let target = base_dir.join(name);
            if !target.is_dir() {
                let tmp = self.staging.file_path("shift");
                let made = copy_shifted(layer, &tmp, map, self.fs_ops.as_ref())
                    .and_then(|()| fs::rename(&tmp, &target));
                if let Err(source) = made {
                    let _ = remove_tree(&tmp);
                    // Another berthd thread may have won the race: its copy is as good.
                    if !target.is_dir() {
                        return Err(StoreError::Io {
                            op: "copy with shifted ownership",
                            path: layer.clone(),
                            source,
                        });
                    }
                }
            }
            out.push(target);
        }
        Ok(out)
    }
}

/// Copy the tree at `src` to `dst` (which must not exist) with owners shifted by `map`.
pub fn copy_shifted(src: &Path, dst: &Path, map: &IdMap, fs_ops: &dyn LayerFs) -> io::Result<()> {
    let mut links = HashMap::new();
    copy_entry(src, dst, map, fs_ops, &mut links)
}

fn shifted(map: &IdMap, id: u32) -> u32 {
    map.to_host(id)
        .unwrap_or_else(|| map.host.saturating_add(OVERFLOW_ID))
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    map: &IdMap,
    fs_ops: &dyn LayerFs,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let (uid, gid) = (shifted(map, meta.uid()), shifted(map, meta.gid()));
    let mode = fs::Permissions::from_mode(meta.mode() & 0o7777);
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(dst)?;
        let mut entries = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        entries.sort();
        for name in entries {
            copy_entry(&src.join(&name), &dst.join(&name), map, fs_ops, links)?;
        }
        if fs_ops.is_opaque(src)? {
            fs_ops.set_opaque(dst)?;
        }
        fs_ops.lchown(dst, uid, gid)?;
        // Last, so a read-only directory did not stop its own copy.
        fs::set_permissions(dst, mode)
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        fs_ops.lchown(dst, uid, gid)
    } else if kind.is_char_device() && meta.rdev() == 0 {
        fs_ops.make_whiteout(dst)?;
        fs_ops.lchown(dst, uid, gid)
    } else if kind.is_file() {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&key) {
                return fs::hard_link(first, dst);
            }
            links.insert(key, dst.to_path_buf());
        }
        fs::copy(src, dst)?;
        fs_ops.lchown(dst, uid, gid)?;
        // After the chown, which clears set-id bits.
        fs::set_permissions(dst, mode)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is a device node, fifo or socket, which unpacked layers never hold",
                src.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layerfs::{LayerFsCall, RecordingLayerFs};

    #[test]
    fn tree_is_copied_with_every_owner_shifted_and_links_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("etc/ro")).unwrap();
        fs::write(src.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        fs::hard_link(src.join("etc/passwd"), src.join("etc/passwd-")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        fs::set_permissions(src.join("etc/passwd"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(src.join("etc/ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let fake = RecordingLayerFs::new();
        let dst = tmp.path().join("dst");
        copy_shifted(&src, &dst, &IdMap::DEFAULT, &fake).unwrap();

        assert_eq!(
            fs::read_to_string(dst.join("etc/passwd")).unwrap(),
            "root:x:0:0::/:/bin/sh\n"
        );
        let a = fs::metadata(dst.join("etc/passwd")).unwrap();
        let b = fs::metadata(dst.join("etc/passwd-")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hardlinks stay one file");
        assert_eq!(a.mode() & 0o7777, 0o4755, "mode set after the chown");
        assert_eq!(
            fs::metadata(dst.join("etc/ro")).unwrap().mode() & 0o7777,
            0o555
        );
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let expect = (
            shifted(&IdMap::DEFAULT, me.0),
            shifted(&IdMap::DEFAULT, me.1),
        );
        let chowns: Vec<PathBuf> = fake
            .calls()
            .into_iter()
            .map(|c| match c {
                LayerFsCall::Chown(p, u, g) => {
                    assert_eq!((u, g), expect, "{}", p.display());
                    p
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // Every entry but the second name of the hardlink, children before parents.
        for p in ["etc/passwd", "etc/ro", "etc", "link", ""] {
            assert!(chowns.contains(&dst.join(p)), "{p} not chowned: {chowns:?}");
        }
        assert!(!chowns.contains(&dst.join("etc/passwd-")));
        assert!(chowns.last() == Some(&dst.join("")) || chowns.last() == Some(&dst));
    }

    #[test]
    fn ids_outside_the_range_become_nobody() {
        assert_eq!(shifted(&IdMap::DEFAULT, 0), 100_000);
        assert_eq!(shifted(&IdMap::DEFAULT, 1000), 101_000);
        assert_eq!(shifted(&IdMap::DEFAULT, 70_000), 165_534);
    }

    #[test]
    fn fifos_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        nix::unistd::mkfifo(
            &src.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = copy_shifted(
            &src,
            &tmp.path().join("dst"),
            &IdMap::DEFAULT,
            &RecordingLayerFs::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("fifo"), "{err}");
    }
}
