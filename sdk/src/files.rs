//! Writing files so a reader never sees half of one: a handler replacing a config in a granted
//! directory, or its record in `/state`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where [`write_atomically`] stages `path`'s new content: `<path>.sandstep-new` (the name the
/// Python and JavaScript kits use too), so a `cancel` can remove a half-written file.
///
/// ```
/// use std::path::Path;
/// let staged = sandstep_sdk::files::staged_path(Path::new("/config/app.conf"));
/// assert_eq!(staged, Path::new("/config/app.conf.sandstep-new"));
/// ```
pub fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sandstep-new");
    PathBuf::from(name)
}

/// Writes `path` so a reader sees the old content or the new, never half: the bytes go to
/// [`staged_path`], are synced, and the file is renamed over `path`.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("sdk-atomic-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// sandstep_sdk::files::write_atomically(dir.join("app.conf"), b"x=2\n").unwrap();
/// assert_eq!(std::fs::read(dir.join("app.conf")).unwrap(), b"x=2\n");
/// assert!(!dir.join("app.conf.sandstep-new").exists());
/// ```
pub fn write_atomically(path: impl AsRef<Path>, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.as_ref();
    let staged = staged_path(path);
    let mut f = std::fs::File::create(&staged)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&staged, path)
}
