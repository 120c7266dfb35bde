//! SHA-256 digests: parsing `sha256:<hex>` strings, hashing while streaming, and OCI ChainIDs.
//!
//! Everything the store keeps is addressed by content, so every byte that enters it passes
//! through a [`HashingReader`] and is compared with the digest it was announced under.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A digest string is not a well-formed `sha256:<64 lowercase hex>`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{digest}` is not a sha256 digest: expected `sha256:` followed by 64 lowercase hex digits"
)]
pub struct BadDigest {
    /// The rejected string.
    pub digest: String,
}

/// Returns the hex part of a `sha256:<hex>` digest, refusing anything else.
///
/// The hex part names files under `blobs/sha256/` and `layers/`, so it is checked strictly:
/// nothing but 64 lowercase hex digits can reach a path.
pub fn sha256_hex(digest: &str) -> Result<&str, BadDigest> {
    let bad = || BadDigest {
        digest: digest.to_string(),
    };
    let hex = digest.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(hex)
    } else {
        Err(bad())
    }
}

/// `sha256:<hex>` of a byte slice.
pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// OCI ChainIDs of a stack of layers given their DiffIDs, bottom first.
///
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A reader that hashes and counts every byte read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads `inner` to its end (hashing it) and returns `(sha256:<hex>, total bytes)`.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(read) = buf.get(..n) {
            self.hasher.update(read);
        }
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_accepts_only_canonical_digests() {
        let good = sha256_of(b"abc");
        assert_eq!(
            sha256_hex(&good).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha256_hex("sha512:ba7816bf").is_err());
        assert!(sha256_hex(&good.to_uppercase()).is_err());
        assert!(sha256_hex(&format!("{good}/..")).is_err());
        assert!(sha256_hex("sha256:../../etc/passwd").is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        let c = sha256_of(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_of(format!("{a} {b}").as_bytes()));
        assert_eq!(ids[2], sha256_of(format!("{} {c}", ids[1]).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn hashing_reader_hashes_what_it_reads_and_the_rest_on_finish() {
        let data = vec![7u8; 10_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 100];
        r.read_exact(&mut first).unwrap();
        assert_eq!(r.count(), 100);
        let (digest, n) = r.finish().unwrap();
        assert_eq!(n, 10_000);
        assert_eq!(digest, sha256_of(&data));
    }
}
