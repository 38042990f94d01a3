//! Files written so that a crash never leaves a half-written one: a temporary file in the same folder,
//! flushed to disk, then renamed over the target.

use crate::error::{Error, Result};
use ndarray::Array2;
use safetensors::tensor::{SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn write_err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Write {
        op,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The temporary file a writer with process id `pid` uses for `path`.
fn temporary(path: &Path, name: &str, pid: u32) -> PathBuf {
    path.with_file_name(format!(".{name}.tmp-{pid}"))
}

/// Removes the temporary files that writers of `path` left when they were killed mid-write: those of
/// processes that no longer run (known on Linux through `/proc`; elsewhere they are left, and ignored: no
/// reader ever opens them).
fn remove_stale_temporaries(path: &Path, name: &str) {
    let (Some(dir), true) = (path.parent(), Path::new("/proc/self").exists()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let pid = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix)?.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed to disk, then renamed
/// over `path`. A crash leaves either the old file or the new one, never a half-written one; the temporary
/// files of writers that were killed are removed by the next write.
///
/// # Errors
/// [`Error::Write`] naming the path when any step fails (the temporary file is removed).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    const OP: &str = "write_atomic";
    let path = path.as_ref();
    let name = path
        .file_name()
        .ok_or_else(|| write_err(OP, path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = temporary(path, &name, std::process::id());
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(OP, path, e));
    }
    remove_stale_temporaries(path, &name);
    Ok(())
}

/// Writes a matrix as a little-endian `.npy` file, atomically.
///
/// # Errors
/// As [`write_atomic`].
pub fn write_npy_atomic(path: impl AsRef<Path>, a: &Array2<f32>) -> Result<()> {
    let path = path.as_ref();
    let mut buf = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(a, &mut buf)
        .map_err(|e| write_err("write_npy_atomic", path, e))?;
    write_atomic(path, &buf)
}

/// Appends the little-endian bytes of `xs` to `out` (the layout safetensors and the fingerprints read).
pub(crate) fn extend_le_bytes<'a>(out: &mut Vec<u8>, xs: impl IntoIterator<Item = &'a f32>) {
    xs.into_iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

/// The little-endian bytes of a matrix, row by row.
pub(crate) fn le_bytes(t: ndarray::ArrayView2<'_, f32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * t.len());
    extend_le_bytes(&mut out, t.iter());
    out
}

/// The checksum of a safetensors file's contents: a CRC-32 over every tensor (name, dtype, shape, bytes, by name) and every metadata field but the checksum
/// (key and value, by key): any flipped byte or edited field changes it.
pub(crate) fn content_checksum<'a>(
    tensors: impl Iterator<Item = (String, TensorView<'a>)>,
    meta: &HashMap<String, String>,
) -> String {
    let mut h = crc32fast::Hasher::new();
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in &tensors {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.shape()).as_bytes());
        h.update(t.data());
    }
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != "checksum").collect();
    keys.sort();
    for k in keys {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(meta[k].as_bytes());
        h.update(&[0]);
    }
    format!("{:08x}", h.finalize())
}

/// A safetensors file parsed, or what is wrong with it in a user's words: a file cut short says so (with the
/// bytes its header claims and the bytes it has) rather than the parser's "invalid header length".
pub(crate) fn read_safetensors(bytes: &[u8]) -> std::result::Result<SafeTensors<'_>, String> {
    let Some(prefix) = bytes.get(..8) else {
        return Err(format!(
            "{} bytes: too short for a safetensors file (8 bytes of header length come first); the file is \
             truncated (or is not one)",
            bytes.len()
        ));
    };
    let claimed = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    let have = (bytes.len() - 8) as u64;
    if claimed > have {
        return Err(format!(
            "its header claims {claimed} bytes and the file has {have} after the length: the file is truncated \
             (or is not a safetensors file)"
        ));
    }
    SafeTensors::deserialize(bytes).map_err(|e| {
        format!(
            "not a readable safetensors file ({} bytes): it is truncated or corrupt: {e}",
            bytes.len()
        )
    })
}

/// `bytes` (a safetensors file) with the checksum its contents have: what a crafted file holds. `None` when the
/// file does not parse. For the fuzz harness, which must reach the checks behind the checksum.
pub(crate) fn resign(bytes: &[u8]) -> Option<Vec<u8>> {
    let st = SafeTensors::deserialize(bytes).ok()?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).ok()?;
    let mut meta = metadata.metadata().clone()?;
    let sum = content_checksum(st.tensors().into_iter(), &meta);
    meta.insert("checksum".into(), sum);
    safetensors::tensor::serialize(st.tensors(), Some(meta)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writers_temporary_file_is_removed_and_a_failed_write_says_write() {
        let dir = std::env::temp_dir().join(format!("recgoat-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.bin");
        // a pid above the kernel's maximum (2^22) never runs
        let stale = temporary(&path, "x.bin", 4_194_305);
        std::fs::write(&stale, b"half").unwrap();
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists(), "stale temporary file left");
        }
        let e = write_atomic(dir.join("no-such-dir").join("y.bin"), b"z").unwrap_err();
        assert!(
            matches!(e, Error::Write { .. }) && e.to_string().contains("cannot write"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
