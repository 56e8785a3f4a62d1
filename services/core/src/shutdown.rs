//! One shutdown signal for the whole process.
//!
//! The binary owns a [`ShutdownController`]; every listener and session holds a
//! [`Shutdown`] clone. Listeners stop accepting as soon as the signal fires; sessions finish
//! the transaction they are in and are given a grace period before being dropped.

use tokio::sync::watch;

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct ShutdownController {
    tx: watch::Sender<bool>,
}

/// Receives the shutdown signal; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl ShutdownController {
    pub fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Self { tx }, Shutdown { rx })
    }

    /// Fires the signal. Idempotent.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// A signal that never fires, for tests and one-off tools.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the process so `wait` never resolves.
        std::mem::forget(tx);
        Self { rx }
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been requested (or the controller is gone).
    pub async fn wait(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }
}
