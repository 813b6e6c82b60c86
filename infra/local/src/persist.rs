//! The local stack's data folder: one JSON file with every store, written atomically (a
//! temporary file, fsynced, renamed over the old one, the folder fsynced) before a request
//! that may have changed something is answered. A file that cannot be read or parsed stops
//! the stack with a clear error; it is never silently replaced.

use std::path::{Path, PathBuf};

use paykey::adapters::memory::KeysSnapshot;
use paykey::domain::{AccountRecord, CheckoutRecord};
use serde::{Deserialize, Serialize};

use crate::cognito::PoolSnapshot;

pub const FILE: &str = "state.json";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub sessions: Vec<CheckoutRecord>,
    pub accounts: Vec<AccountRecord>,
    pub events: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    pub keys: KeysSnapshot,
    pub cognito: PoolSnapshot,
    /// The Stripe emulator's objects (absent when talking to real Stripe), as the emulator
    /// serialised them under its lock (no copy of its state is made to save it).
    pub stripe: Option<Box<serde_json::value::RawValue>>,
    pub webhook_secret: String,
    /// The usage reporter's cursor (absent in data files of earlier versions).
    #[serde(default)]
    pub usage_cursor: Option<chrono::NaiveDate>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read the data file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the data file {path} is corrupt ({reason}); move it away to start with empty stores")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the data file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Snapshot {
    pub fn new(
        cognito: PoolSnapshot,
        stripe: Option<Box<serde_json::value::RawValue>>,
        webhook_secret: String,
    ) -> Self {
        Self {
            version: VERSION,
            sessions: vec![],
            accounts: vec![],
            events: vec![],
            keys: KeysSnapshot::default(),
            cognito,
            stripe,
            webhook_secret,
            usage_cursor: None,
        }
    }
}

/// `Ok(None)` when there is no data file yet.
pub fn load(dir: &Path) -> Result<Option<Snapshot>, PersistError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Read { path, source }),
    };
    let snap: Snapshot =
        serde_json::from_str(&text).map_err(|e| PersistError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    if snap.version != VERSION {
        return Err(PersistError::Corrupt { path, reason: format!("version {} is not {VERSION}", snap.version) });
    }
    Ok(Some(snap))
}

/// Writes `state.json.tmp`, fsyncs it, renames it over `state.json` and fsyncs the folder, so
/// that after a crash or power loss the file is the old one or the new one, never a torn mix.
pub fn save(dir: &Path, snap: &Snapshot) -> Result<(), PersistError> {
    use std::io::Write as _;
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let text = serde_json::to_vec(snap)
        .map_err(|e| PersistError::Write { path: path.clone(), source: std::io::Error::other(e) })?;
    std::fs::create_dir_all(dir).map_err(|source| PersistError::Write { path: path.clone(), source })?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()
    };
    write().map_err(|source| PersistError::Write { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, &path).map_err(|source| PersistError::Write { path: path.clone(), source })?;
    // the rename itself is durable only once the folder's entry is on disk
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| PersistError::Write { path, source })
}

/// When the data file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// After every request, one at a time (what the stack did before; kept as the
    /// benchmark's reference: `PAYKEY_PERSIST=every-request`).
    EveryRequest,
    /// Group commit: a request that may have changed something waits until a write that
    /// started after it finished; concurrent requests share one write.
    #[default]
    Group,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "every-request" => Ok(Self::EveryRequest),
            "group" => Ok(Self::Group),
            other => Err(format!("PAYKEY_PERSIST must be group or every-request, got {other:?}")),
        }
    }
}
