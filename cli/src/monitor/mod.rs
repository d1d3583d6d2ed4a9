//! `monitor`: a live full-screen view (ratatui) that refreshes every `--interval` seconds.
//! Data is fetched by a background task so a slow or absent control plane never freezes the
//! screen or the `q` key; the terminal is restored on every exit path. Without a terminal it
//! prints the same snapshots line by line instead (`plain`).

mod data;
mod plain;
mod view;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::args::{GlobalArgs, MonitorArgs};
use crate::error::{Error, Result};

pub use data::{Model, Snapshot};

pub async fn run(global: &GlobalArgs, args: &MonitorArgs) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        return plain::run(global, args).await;
    }
    let stop = CancellationToken::new();
    let (mut snap_rx, fetcher) = data::start(global, args, &stop);
    let (key_tx, mut key_rx) = mpsc::channel::<Event>(16);
    let input_stop = Arc::new(AtomicBool::new(false));
    let input = spawn_input_thread(key_tx, input_stop.clone());

    let mut terminal = ratatui::try_init()?;
    let mut model = Model::new(global.server.clone(), args.service.clone(), args.interval);
    let mut sigterm = terminate_signal()?;
    let result: Result<()> = async {
        let mut refreshes = 0u64;
        loop {
            terminal.draw(|f| view::draw(f, &model))?;
            if args.count.is_some_and(|n| refreshes >= n) {
                return Ok(());
            }
            tokio::select! {
                Some(snap) = snap_rx.recv() => {
                    let _ = model.apply(snap);
                    refreshes += 1;
                }
                Some(ev) = key_rx.recv() => {
                    if is_quit(&ev) {
                        return Ok(());
                    }
                    // Any other event (resize included) just redraws.
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }
    .await;
    stop.cancel();
    input_stop.store(true, Ordering::Relaxed);
    let restored = ratatui::try_restore();
    let _ = input.join();
    let _ = fetcher.await;
    result?;
    restored.map_err(Error::Terminal)
}

fn is_quit(ev: &Event) -> bool {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            matches!(
                k.code,
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc
            ) || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

/// crossterm's reader is blocking; it polls with a short timeout so it notices `stop`.
fn spawn_input_thread(
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match crossterm::event::poll(Duration::from_millis(100)) {
                Ok(true) => match crossterm::event::read() {
                    Ok(ev) => {
                        if tx.blocking_send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    })
}

#[cfg(unix)]
fn terminate_signal() -> Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    )?)
}
