//! A unit's files: its step context and directories, fetching its files into the store and
//! linking them into `/payload`, and the sources of those the slot capability streams instead.

use super::events::Event;
use super::manifests::Manifests;
use super::{Deployer, Run, WorkflowError, EARLY_FETCH_LIMIT};
use crate::capability::slot::Streams;
use crate::datadir::{safe_name, DataDir, DataDirError};
use crate::download::{Fetched, OwnedSource, Wanted};
use cap_std::fs::Dir;
use sandstep_model::codes::{erc, result};
use sandstep_model::journal::{FileRecord, FileSource, Journal};
use sandstep_model::{StepContext, StepFile, StepResult};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

impl Deployer {
    /// The step context and the files of unit `index`.
    pub(super) fn unit_context(
        &self,
        j: &Journal,
        index: usize,
        m: &Manifests,
    ) -> (StepContext, Vec<Wanted>) {
        let u = &j.units[index];
        let (manifest, step, step_index, level) = m.step_of(u);
        let wanted: Vec<Wanted> = step
            .files
            .iter()
            .map(|id| {
                let f = manifest
                    .file(id)
                    .expect("validated: step files are in `files`");
                Wanted {
                    id: id.clone(),
                    file_name: f.file_name.clone(),
                    size: f.size_in_bytes,
                    sha256: f.sha256,
                    download_handler: f.download_handler.clone(),
                }
            })
            .collect();
        let ctx = StepContext {
            workflow_id: j.workflow_id.clone(),
            update_id: manifest.update_id.clone(),
            handler_id: step.handler.clone(),
            step_index,
            level,
            handler_properties: {
                // sandstep's own key, never the handler's (see crate::health).
                let mut p = step.handler_properties.clone();
                p.remove(crate::health::PROPERTY);
                p
            },
            files: wanted
                .iter()
                .map(|w| StepFile {
                    id: w.id.clone(),
                    name: w.file_name.clone(),
                    size: w.size,
                    sha256: w.key(),
                })
                .collect(),
            component: u.component.clone(),
        };
        (ctx, wanted)
    }

    /// `payload/<wf>/<unit>`, `work/<wf>/<unit>`, `state/<handler>` for a unit.
    pub(super) fn unit_dirs(
        &self,
        j: &Journal,
        index: usize,
    ) -> Result<(Dir, Dir, Dir), DataDirError> {
        let u = &j.units[index];
        let key = match (&u.component, u.child_step) {
            (Some(c), Some(cs)) => format!("step-{}-{}-{}", u.step, safe_name(&c.id), cs),
            (None, Some(cs)) => format!("step-{}-host-{}", u.step, cs),
            _ => format!("step-{}", u.step),
        };
        let wf = safe_name(&j.workflow_id);
        let handler_dir = safe_name(&u.handler_id);
        let (payloads, works, states) =
            (self.data.payloads()?, self.data.work()?, self.data.state()?);
        let legacy_wf = crate::datadir::legacy_safe_name(&j.workflow_id);
        let legacy_handler = crate::datadir::legacy_safe_name(&u.handler_id);
        let err = |what: &str, source| DataDirError {
            path: self.data.path().display().to_string(),
            what: what.to_owned(),
            cause: source,
        };
        use crate::datadir::ensure_dir_adopting as open;
        let payload =
            open(&payloads, &legacy_wf, &wf, &key, 0o755).map_err(|e| err("payload dir", e))?;
        let work = open(&works, &legacy_wf, &wf, &key, 0o755).map_err(|e| err("work dir", e))?;
        let state = open(&states, &legacy_handler, &handler_dir, "", 0o755)
            .map_err(|e| err("state dir", e))?;
        Ok((payload, work, state))
    }

    /// Fetches files into the store and links them into the unit's payload dir by file name.
    pub(super) async fn fetch_files(
        &self,
        j: &mut Journal,
        index: usize,
        files: &[Wanted],
        payload: &Dir,
        work: Option<&Dir>,
        run: &Run<'_>,
    ) -> Result<(), StepResult> {
        // A file the journal says was fetched by an earlier process is checked again: store files
        // are not synced, so after a crash only their hash says they are whole.
        for w in files {
            let key = (index, w.id.clone());
            if payload.exists(&w.file_name)
                && run.verified.lock().expect("never poisoned").contains(&key)
            {
                continue;
            }
            let started = Instant::now();
            let observer = run.observer.clone();
            let name = w.file_name.clone();
            let progress = move |done: u64, total: u64| {
                observer.event(&Event::FileProgress {
                    unit: index,
                    file: name.clone(),
                    done,
                    total,
                })
            };
            let source = resolve_source(&j.source, w)?;
            let fetched = tokio::select! {
                r = self.downloader.fetch(w, source.as_source(), &progress) => r,
                _ = run.cancel.cancelled() => {
                    return Err(StepResult::failure(erc::WORKFLOW_CANCELLED, format!("download of `{}` cancelled", w.file_name)).with_code(result::FAILURE_CANCELLED));
                }
            };
            let fetched = fetched.map_err(|e| StepResult::failure(e.erc(), e.to_string()))?;
            // Link the verified file into /payload under its name (replacing a stale link).
            let _ = payload.remove_file(&w.file_name);
            self.downloader
                .store()
                .hard_link(w.key(), payload, &w.file_name)
                .map_err(|e| {
                    StepResult::failure(
                        erc::SANDBOX_SETUP_FAILED,
                        format!("`{}`: cannot place it in /payload: {e}", w.file_name),
                    )
                })?;
            if let Some(work) = work {
                copy_into_work(payload, work, &w.file_name).await?;
            }
            if let (Fetched::Downloaded { .. }, Some(id)) = (fetched, &w.download_handler) {
                // ExtensionManager::Download: the handler would not load, so the full file came
                // (ProcessDownloadHandlerExtensibility adds this code to the workflow).
                tracing::info!(file = %w.file_name, handler = %id, "no such download handler: downloaded the full file");
                j.add_erc(erc::DOWNLOAD_HANDLER_MISSING);
            }
            let result_code = match fetched {
                Fetched::Downloaded { .. } => result::DOWNLOAD_SUCCESS,
                Fetched::AlreadyPresent => result::DOWNLOAD_SKIPPED_FILE_EXISTS,
            };
            crate::fault::point("after-file");
            run.observer.event(&Event::FileReady {
                unit: index,
                file: w.file_name.clone(),
                result_code,
            });
            let record = FileRecord {
                id: w.id.clone(),
                file_name: w.file_name.clone(),
                result_code,
                bytes: w.size,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            let files = &mut j.units[index].files;
            // Checked again after a restart: the record of the first fetch stands.
            let recorded = files.iter().any(|f| f.id == w.id);
            if !(recorded && matches!(fetched, Fetched::AlreadyPresent)) {
                files.retain(|f| f.id != w.id);
                files.push(record);
            }
            run.verified.lock().expect("never poisoned").insert(key);
        }
        Ok(())
    }

    /// Sees that each file the slot capability will stream is there with its size.
    pub(super) async fn probe_streamed(&self, streams: Option<&Streams>) -> Result<(), StepResult> {
        for (w, source) in streams.iter().flat_map(|s| s.files.values()) {
            self.downloader
                .probe(w, source.as_source())
                .await
                .map_err(|e| StepResult::failure(e.erc(), e.to_string()))?;
        }
        Ok(())
    }

    /// The sources of the files a unit's slot capability streams (`None`: there are none).
    pub(super) fn streams(
        &self,
        j: &Journal,
        streamed: &[Wanted],
    ) -> Result<Option<Arc<Streams>>, StepResult> {
        if streamed.is_empty() {
            return Ok(None);
        }
        let mut files = BTreeMap::new();
        for w in streamed {
            files.insert(
                w.file_name.clone(),
                (w.clone(), resolve_source(&j.source, w)?),
            );
        }
        let records = self
            .data
            .streams()
            .map_err(|e| StepResult::failure(erc::SANDBOX_SETUP_FAILED, e.to_string()))?;
        Ok(Some(Arc::new(Streams {
            downloader: self.downloader.clone(),
            files,
            records,
        })))
    }
}

/// The files a step's slot capability streams straight into a slot instead of the workflow
/// fetching them into the store: with the `slot` capability granted, those over the early-fetch
/// size (firmware images), never a block index: the slot capability reads that from `/payload`,
/// and a large image's index is itself over the early-fetch size.
pub(super) fn streamed_files(slot_granted: bool, files: &[Wanted]) -> Vec<Wanted> {
    files
        .iter()
        .filter(|w| {
            slot_granted
                && w.size > EARLY_FETCH_LIMIT
                && !w.file_name.ends_with(crate::blockindex::FILE_SUFFIX)
        })
        .cloned()
        .collect()
}

/// Where file `w` comes from, per the deployment's file source.
pub(crate) fn resolve_source(source: &FileSource, w: &Wanted) -> Result<OwnedSource, StepResult> {
    match source {
        FileSource::Directory(p) => Dir::open_ambient_dir(p, cap_std::ambient_authority())
            .map(OwnedSource::Directory)
            .map_err(|e| {
                StepResult::failure(
                    erc::WORKFLOW_DOWNLOAD_FAILED,
                    format!("files directory {p}: {e}"),
                )
            }),
        FileSource::BaseUrl(base) => Ok(OwnedSource::Url(format!("{base}{}", w.file_name))),
        // A file the deployment does not list (a child update's, typically) is fetched from beside
        // the listed ones: the digest from the signed manifest still decides what is accepted.
        FileSource::Urls(map) => map
            .get(&w.id)
            .cloned()
            .or_else(|| {
                let any = map.values().next()?;
                let (dir, _) = any.rsplit_once('/')?;
                Some(format!("{dir}/{}", w.file_name))
            })
            .map(OwnedSource::Url)
            .ok_or_else(|| {
                StepResult::failure(
                    erc::WORKFLOW_DOWNLOAD_FAILED,
                    format!(
                        "`{}`: the deployment has no URL for file id `{}`",
                        w.file_name, w.id
                    ),
                )
            }),
    }
}

/// Copies payload file `name` into the work folder (policy `payload-in-work`), replacing whatever
/// a program left there under that name (a file, a symlink, a directory) without following it.
/// On a blocking thread: the file may be large.
async fn copy_into_work(payload: &Dir, work: &Dir, name: &str) -> Result<(), StepResult> {
    let failed = |e: std::io::Error| {
        StepResult::failure(
            erc::SANDBOX_SETUP_FAILED,
            format!("`{name}`: cannot place a copy in the work folder: {e}"),
        )
    };
    let (from, to) = (
        payload.try_clone().map_err(failed)?,
        work.try_clone().map_err(failed)?,
    );
    let owned = name.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        match to.symlink_metadata(&owned) {
            Ok(m) if m.is_dir() => to.remove_dir_all(&owned)?,
            Ok(_) => to.remove_file(&owned)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut src = from.open(&owned)?.into_std();
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        let mut dst = to.open_with(&owned, &opts)?.into_std();
        std::io::copy(&mut src, &mut dst)?;
        Ok(())
    })
    .await
    .map_err(|e| failed(std::io::Error::other(e)))?
    .map_err(failed)
}

pub(super) fn setup_error(data: &DataDir, e: std::io::Error) -> WorkflowError {
    WorkflowError::DataDir(DataDirError {
        path: data.path().display().to_string(),
        what: "open unit directories".into(),
        cause: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, size: u64) -> Wanted {
        Wanted {
            id: name.into(),
            file_name: name.into(),
            size,
            sha256: [0; 32],
            download_handler: None,
        }
    }

    #[test]
    fn only_large_images_of_slot_granted_steps_stream_and_never_their_block_index() {
        let big = EARLY_FETCH_LIMIT + 1;
        let files = [
            wanted("fw.img", big),
            // A 1 GiB image's index at 8 KiB blocks is 4 MiB: over the limit, still fetched.
            wanted("fw.img.blockindex", big),
            wanted("small.cfg", 10),
        ];
        let names = |v: Vec<Wanted>| v.into_iter().map(|w| w.file_name).collect::<Vec<_>>();
        assert_eq!(names(streamed_files(true, &files)), ["fw.img"]);
        assert!(streamed_files(false, &files).is_empty());
    }
}
