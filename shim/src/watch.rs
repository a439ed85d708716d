//! Waiting on a `watch<Option<T>>` that is set once: a process's exit, a
//! VM's end.

use tokio::sync::watch;

/// The value once it is set; `None` if its sender went away first.
pub async fn wait_set<T: Clone>(mut watch: watch::Receiver<Option<T>>) -> Option<T> {
    let result = watch
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| v.clone());
    result
}

/// The value once it is set; never, if its sender went away first (for a
/// `select!` whose other arms decide).
pub async fn wait_set_or_never<T: Clone>(watch: watch::Receiver<Option<T>>) -> T {
    match wait_set(watch).await {
        Some(value) => value,
        None => std::future::pending().await,
    }
}
