//! Tenant secrets at rest: ChaCha20-Poly1305 under a key that lives in a
//! 0600 file of the state directory (`secrets.key`), never in the database,
//! so a copy of `control.db` (a backup, a leaked replica) holds only
//! ciphertext. Each value has its own random nonce, and the tenant and name
//! are authenticated data: a ciphertext moved to another tenant's row or
//! renamed does not decrypt.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::error::ServerError;

const KEY_FILE: &str = "secrets.key";

/// The secrets key of one state directory.
pub struct Vault {
    cipher: ChaCha20Poly1305,
    fingerprint: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(***)")
    }
}

impl Vault {
    /// Loads `secrets.key` from `dir`, creating it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Vault, ServerError> {
        let path = dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).map_err(|e| ServerError::Key(format!("no randomness: {e}")))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| ServerError::io("creating", &path, e))?;
                f.write_all(&k)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| ServerError::io("writing", &path, e))?;
                k
            }
            Err(e) => return Err(ServerError::io("reading", &path, e)),
        };
        if key.len() != 32 {
            return Err(ServerError::Key(format!("{} is not a 32-byte key", path.display())));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| ServerError::io("reading", &path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(ServerError::Key(format!(
                    "{} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        Ok(Vault { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)), fingerprint: fingerprint(&key) })
    }

    /// Names the key without revealing it (a domain-separated hash), so
    /// that servers sharing a database can check they share the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn aad(tenant: &str, name: &str) -> Vec<u8> {
        format!("kiln-secret\0{tenant}\0{name}").into_bytes()
    }

    /// `(nonce, ciphertext)` of a value.
    pub fn seal(&self, tenant: &str, name: &str, value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ServerError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| ServerError::Key(format!("no randomness: {e}")))?;
        let aad = Self::aad(tenant, name);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value, aad: &aad })
            .map_err(|_| ServerError::Key("encryption failed".into()))?;
        Ok((nonce.to_vec(), ct))
    }

    /// The value, if the ciphertext is intact and belongs to `tenant`/`name`.
    pub fn open(&self, tenant: &str, name: &str, nonce: &[u8], ct: &[u8]) -> Result<Vec<u8>, ServerError> {
        if nonce.len() != 12 {
            return Err(ServerError::Key(format!("secret {name}: bad nonce")));
        }
        let aad = Self::aad(tenant, name);
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| {
            ServerError::Key(format!("secret {name} of {tenant} does not decrypt with this key"))
        })
    }
}

/// A key's fingerprint: the first 16 bytes of SHA-256 over a label and the
/// key, in hex.
pub fn fingerprint(key: &[u8]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"kiln key fingerprint\0");
    h.update(key);
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bound_to_tenant_and_name_and_key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::load_or_create(dir.path()).unwrap();
        let (n, ct) = v.seal("acme", "TOKEN", b"hunter2hunter2").unwrap();
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(v.open("acme", "TOKEN", &n, &ct).unwrap(), b"hunter2hunter2");
        assert!(v.open("other", "TOKEN", &n, &ct).is_err());
        assert!(v.open("acme", "OTHER", &n, &ct).is_err());
        let again = Vault::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("acme", "TOKEN", &n, &ct).unwrap(), b"hunter2hunter2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
