//! Where the agent's inputs come from: a directory of manifests ([`file`]), or
//! the Kubernetes API ([`kube`]).
//!
//! A source only records changes: its background tasks keep the latest objects
//! and bump a change counter. The run loop decides when to read them
//! ([`Source::snapshot`]), translate and sync, and it never syncs before
//! [`Source::synced`] holds.
pub mod file;
pub mod health;
pub mod kube;

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use tokio::sync::watch;

use crate::{
    manifests::LoadError,
    translate::{
        Inputs,
        incremental::{Changes, GroupIndex},
    },
};

/// Which source to start, and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// A directory of manifests, checked every `poll_interval`.
    File {
        /// The directory.
        dir: PathBuf,
        /// How often it is checked.
        poll_interval: Duration,
    },
    /// The Kubernetes API: `kubeconfig`, or the usual inference when `None`.
    Kubernetes {
        /// The kubeconfig file.
        kubeconfig: Option<PathBuf>,
    },
}

/// An object that could not be read. It is skipped; everything else is used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A manifest (or a whole file) of the file source.
    #[error(transparent)]
    Manifest(#[from] LoadError),
    /// An object the Kubernetes API returned that does not have the
    /// expected shape.
    #[error("{kind} {namespace}/{name} ({api_version}) skipped: {message}")]
    Object {
        /// `ServiceImport` or `GKE ServiceImport`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its `apiVersion`.
        api_version: String,
        /// What is wrong, starting with the field's path.
        message: String,
    },
}

/// What a source holds at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The objects the translation reads.
    pub inputs: Inputs,
    /// Objects that could not be read (a malformed manifest or API object),
    /// each naming the object and the field.
    pub problems: Vec<Problem>,
    /// Where each group's objects are in `inputs`, when the source keeps
    /// that up to date; the translation then finds a touched group's
    /// objects without a pass over all of them.
    pub index: Option<GroupIndex>,
}

/// One of the sources.
pub enum Source {
    /// A directory of manifests, polled.
    File(file::FileSource),
    /// The Kubernetes API, watched.
    Kube(kube::KubeSource),
}

impl Source {
    /// Starts the source `config` names.
    ///
    /// # Errors
    /// When the manifest directory cannot be listed or the kubeconfig cannot
    /// be read.
    pub async fn start(config: &SourceConfig) -> Result<Self> {
        match config {
            SourceConfig::File { dir, poll_interval } => {
                Ok(Self::File(file::FileSource::start(dir.clone(), *poll_interval)?))
            }
            SourceConfig::Kubernetes { kubeconfig } => {
                Ok(Self::Kube(kube::KubeSource::start(kubeconfig.as_deref()).await?))
            }
        }
    }

    /// Waits until something changed since the last call (or since the start).
    ///
    /// # Errors
    /// When the source's tasks have stopped; the agent cannot go on.
    pub async fn changed(&mut self) -> Result<()> {
        match self {
            Self::File(s) => s.changed().await,
            Self::Kube(s) => s.changed().await,
        }
    }

    /// Whether every part of the source has read its objects once.
    #[must_use]
    pub fn synced(&self) -> bool {
        match self {
            Self::File(s) => s.synced(),
            Self::Kube(s) => s.synced(),
        }
    }

    /// How the source's connection to the API server is doing; `None` for
    /// the file source.
    #[must_use]
    pub fn health(&self) -> Option<health::ApiHealth> {
        match self {
            Self::File(_) => None,
            Self::Kube(s) => Some(s.health()),
        }
    }

    /// The objects held now (the file source shares its copy rather than
    /// copying it), and the groups that changed since the last call:
    /// everything before the first.
    #[must_use]
    pub fn take(&self) -> (std::sync::Arc<Snapshot>, Changes) {
        match self {
            Self::File(s) => s.take(),
            Self::Kube(s) => s.take(),
        }
    }
}

/// Waits for the next change on `rx`.
pub(crate) async fn wait_changed(rx: &mut watch::Receiver<u64>) -> Result<()> {
    if rx.changed().await.is_err() {
        bail!("the source stopped");
    }
    rx.borrow_and_update();
    Ok(())
}
