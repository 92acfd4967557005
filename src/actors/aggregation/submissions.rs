//! The coordinator's submissions: pieces stored as they arrive, a complete upload checked,
//! and the running sum of the accepted updates (rebuilt from the store when it is missing).

use super::*;
use crate::crypto::kahe::{self, Accumulator};
use crate::metrics::OutcomeLabels;
use crate::session::records;
use crate::session::roles::coordinator::SubmissionMeta;
use crate::store::pieces::Upload;
use crate::store::StoreFailure;

/// A coordinator's running sum: each accepted update is added on a blocking thread as soon as
/// its upload is checked, so closing only has to finish the sum instead of reading every
/// update back from the store. Dropping it ends the thread.
pub(super) struct RunningSum {
    jobs: std::sync::mpsc::Sender<SumJob>,
    /// Who was handed to the thread, in order.
    added: Vec<String>,
}

type SumOutcome = Result<Aggregate, SessionError>;

enum SumJob {
    Add(String, Vec<u8>),
    Finish(oneshot::Sender<SumOutcome>),
}

impl RunningSum {
    pub(super) fn start(context: kahe::SessionContext) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<SumJob>();
        tokio::task::spawn_blocking(move || {
            let mut acc: Result<Accumulator, SessionError> = Ok(Accumulator::new(&context));
            while let Ok(job) = rx.recv() {
                match job {
                    SumJob::Add(who, bytes) => {
                        if let Ok(sum) = acc.as_mut() {
                            if let Err(e) = sum.add(&who, &bytes) {
                                acc = Err(e.into());
                            }
                        }
                    }
                    SumJob::Finish(reply) => {
                        let _ = reply.send(acc.map(Accumulator::finish));
                        return;
                    }
                }
            }
        });
        RunningSum {
            jobs,
            added: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, who: &str, bytes: Vec<u8>) {
        if self.jobs.send(SumJob::Add(who.to_string(), bytes)).is_ok() {
            self.added.push(who.to_string());
        }
    }

    /// The finished sum, if it holds exactly `contributors`.
    pub(super) async fn finish(self, contributors: &[String]) -> Option<SumOutcome> {
        let mut added = self.added.clone();
        added.sort();
        if added != contributors {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.jobs.send(SumJob::Finish(tx)).ok()?;
        rx.await.ok()
    }
}

/// What storing one piece led to.
pub(super) enum StoredPiece {
    /// More pieces are to come.
    Partial,
    /// This was the last piece: the whole upload is to be checked.
    Last(Box<CompleteUpload>),
}

pub(super) struct CompleteUpload {
    upload: Upload,
    context: kahe::SessionContext,
    meta: SubmissionMeta,
}

impl CompleteUpload {
    /// Assembles and checks the upload (blocking); a bad upload is dropped whole.
    pub(super) fn check(mut self) -> Result<(SubmissionMeta, Vec<u8>), SessionError> {
        let mut whole = Vec::new();
        let checked = match self.upload.concat(&mut whole) {
            Ok(()) => check_update(&whole, self.meta.digest, &self.context),
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(()) => {
                self.meta.bytes = whole.len() as u64;
                Ok((self.meta, whole))
            }
            Err(e) => {
                let _ = self.upload.remove();
                Err(e)
            }
        }
    }
}

/// A checked piece, to be written on the blocking pool.
pub(super) struct PieceWrite {
    pub(super) store: Store,
    pub(super) owner: String,
    pub(super) index: u32,
    pub(super) count: u32,
    pub(super) bytes: sled::IVec,
    /// What the complete upload is checked against.
    pub(super) context: kahe::SessionContext,
    pub(super) meta: SubmissionMeta,
}

impl PieceWrite {
    /// Writes the piece (blocking). Pieces of one upload may be written concurrently: each
    /// counts the stored pieces after its own write, so the last write to finish sees them all.
    pub(super) fn write(self) -> Result<StoredPiece, SessionError> {
        let upload = Upload::open(
            &self.store,
            trees::SUBMISSIONS,
            &self.owner,
            self.meta.digest,
        )?;
        if upload.put(self.index, self.bytes)? < self.count {
            return Ok(StoredPiece::Partial);
        }
        Ok(StoredPiece::Last(Box::new(CompleteUpload {
            upload,
            context: self.context,
            meta: self.meta,
        })))
    }
}

/// Counts a submission piece's outcome; pieces that are neither the last nor refused are not
/// submissions yet.
pub(super) fn count_submission(metrics: &NodeMetrics, result: &Result<AggReply, SessionError>) {
    let outcome = match result {
        Ok(AggReply::PieceAck { complete: true, .. }) => "accepted",
        Ok(_) => return,
        Err(SessionError::Duplicate(_)) => "duplicate",
        Err(SessionError::NotAllowed { .. }) => "not_allowed",
        Err(SessionError::UnknownSession(_)) => "unknown_session",
        Err(_) => "refused",
    };
    metrics
        .submissions
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// Checks an assembled upload: its envelope's digest is the one the participant announced
/// (and matches its bytes), and it is an update of this session.
fn check_update(
    bytes: &[u8],
    digest: [u8; 32],
    context: &kahe::SessionContext,
) -> Result<(), SessionError> {
    if crate::crypto::wire::envelope_digest(bytes) != Some(digest) {
        return Err(SessionError::BadInput(
            "the assembled update does not match its digest".into(),
        ));
    }
    kahe::wire::update_bodies(context, bytes)?;
    Ok(())
}

/// Sums the stored updates of `contributors` (blocking: runs on the blocking pool).
pub(super) fn accumulate(
    store: &Store,
    plan: &SessionPlan,
    context: &kahe::SessionContext,
    contributors: &[(String, [u8; 32])],
) -> Result<Aggregate, SessionError> {
    let mut acc = Accumulator::new(context);
    for (who, digest) in contributors {
        let upload = Upload::open(
            store,
            trees::SUBMISSIONS,
            &records::piece_owner(&plan.id, who),
            *digest,
        )?;
        let mut bytes = Vec::new();
        upload.concat(&mut bytes)?;
        check_update(&bytes, *digest, context).map_err(|e| {
            SessionError::Store(StoreFailure::Corrupt(format!(
                "the stored update of {who} is missing or damaged: {e}"
            )))
        })?;
        acc.add(who, &bytes)?;
    }
    Ok(acc.finish())
}
