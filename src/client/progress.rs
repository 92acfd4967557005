//! What the CLI shows while it uploads an update and follows a session: progress bars and a
//! spinner on a terminal, one plain line per step otherwise (logs and CI read those). Always on
//! stderr: stdout carries the JSON answer.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::session::{SessionInfo, SubmitReceipt};

/// Reports the steps of one command.
pub struct Progress {
    session: String,
    /// The bar or spinner on screen, on a terminal.
    bar: Option<ProgressBar>,
    terminal: bool,
    /// The phase last reported, in plain mode.
    last_phase: Option<crate::session::Phase>,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new(session: &str) -> Self {
        Self::with_terminal(session, std::io::stderr().is_terminal())
    }

    pub fn with_terminal(session: &str, terminal: bool) -> Self {
        Progress {
            session: session.to_string(),
            bar: None,
            terminal,
            last_phase: None,
        }
    }

    /// An upload of `total` bytes begins: returns what to call with the bytes sent so far.
    pub fn upload(&mut self, total: u64) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = if self.terminal {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {bar:30} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("session {}: sending", self.session));
            self.bar = Some(bar.clone());
            Some(bar)
        } else {
            eprintln!("session {}: sending {total} bytes", self.session);
            None
        };
        move |sent| {
            if let Some(bar) = &bar {
                bar.set_position(sent);
            }
        }
    }

    /// The body is sent: the node encrypts it and uploads it to the coordinator.
    pub fn sealing(&mut self) {
        if self.terminal {
            self.spin("encrypting and uploading to the coordinator");
        }
    }

    pub fn submitted(&mut self, receipt: &SubmitReceipt) {
        self.clear();
        eprintln!(
            "session {}: submitted {} values ({} clipped): encrypted in {:.0} ms, {} bytes uploaded \
             in {:.0} ms",
            self.session,
            receipt.values,
            receipt.clipped,
            receipt.encrypt_ms,
            receipt.bytes_sent,
            receipt.upload_ms
        );
    }

    /// The session as it is now: a spinner's message on a terminal, a line per new phase
    /// otherwise.
    pub fn phase(&mut self, info: &SessionInfo) {
        let text = format!(
            "{} ({} of {} submitted)",
            info.phase, info.submissions, info.participants
        );
        if self.terminal && !info.phase.is_terminal() {
            self.spin(&text);
        } else if self.last_phase != Some(info.phase) {
            self.clear();
            eprintln!("session {}: {text}", self.session);
        }
        self.last_phase = Some(info.phase);
    }

    fn spin(&mut self, message: &str) {
        let bar = match self.bar.take() {
            Some(bar) if bar.length().is_none() => bar,
            other => {
                if let Some(old) = other {
                    old.finish_and_clear();
                }
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("session {}", self.session));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
        };
        bar.set_message(message.to_string());
        self.bar = Some(bar);
    }

    /// Takes the bar or spinner off the screen.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
