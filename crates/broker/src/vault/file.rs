//! Files of the vault: bounded reads, atomic 0600 writes (temp file, fsync, rename, fsync of
//! the directory) and an advisory lock that serialises read-modify-write cycles between
//! processes (the CLI and a running broker).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::VaultError;

/// Largest vault file read (thousands of entries fit; a multi-gigabyte file is refused).
pub const MAX_VAULT_FILE: u64 = 16 * 1024 * 1024;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io { path: path.to_path_buf(), source }
}

/// Reads the vault file; `NotFound` when there is none.
pub fn read(path: &Path) -> Result<Vec<u8>, VaultError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VaultError::NotFound(path.to_path_buf()),
        _ => VaultError::Io { path: path.to_path_buf(), source: e },
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_VAULT_FILE + 1).read_to_end(&mut bytes).map_err(io(path))?;
    if bytes.len() as u64 > MAX_VAULT_FILE {
        return Err(VaultError::Tampered("the vault file is larger than 16 MiB"));
    }
    Ok(bytes)
}

/// Replaces `path` atomically with `bytes`, mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = parent(path);
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut suffix)
        .map_err(|_| VaultError::Crypto)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("vault");
    let temp = dir.join(format!(".{name}.{}.tmp", hex_of(&suffix)));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io(&temp))?;
        file.write_all(bytes).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        std::fs::rename(&temp, path).map_err(io(path))?;
        // The rename is durable only once the directory entry is.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Creates a new file (refusing to replace one), mode 0600, synced.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            VaultError::AlreadyExists(path.to_path_buf())
        } else {
            VaultError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Creates the broker directory (0700) if missing.
pub fn create_private_dir(dir: &Path) -> Result<(), VaultError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// An exclusive advisory lock on `<vault>.lock`, released on drop.
pub struct Lock {
    file: File,
}

impl Lock {
    pub fn acquire(vault_path: &Path) -> Result<Self, VaultError> {
        let path = lock_path(vault_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(Self { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn lock_path(vault_path: &Path) -> PathBuf {
    let mut name = vault_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    parent(vault_path).join(name)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
