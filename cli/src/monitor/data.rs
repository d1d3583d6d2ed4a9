//! What the monitor shows and how it is fetched: one snapshot per interval, message rates
//! derived from the difference of `messages_total` between snapshots.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use myagent_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::args::{GlobalArgs, MonitorArgs};
use crate::client::Clients;
use crate::error::Error;

/// One fetch result.
#[derive(Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub wall: chrono::DateTime<chrono::Utc>,
    pub result: Result<Fetched, Error>,
}

#[derive(Debug, Default)]
pub struct Fetched {
    pub services: Vec<pb::Service>,
    pub overview: Option<pb::Overview>,
    pub logs: Vec<pb::LogEntry>,
}

/// The screen's state.
#[derive(Debug)]
pub struct Model {
    pub server: String,
    pub service: Option<String>,
    pub interval: f64,
    pub data: Fetched,
    pub last_ok: Option<chrono::DateTime<chrono::Utc>>,
    pub error: Option<String>,
    /// messages/s per service id over the last interval.
    pub rates: HashMap<String, f64>,
    prev_totals: HashMap<String, (u64, Instant)>,
    pub refreshes: u64,
}

impl Model {
    pub fn new(server: String, service: Option<String>, interval: f64) -> Self {
        Model {
            server,
            service,
            interval,
            data: Fetched::default(),
            last_ok: None,
            error: None,
            rates: HashMap::new(),
            prev_totals: HashMap::new(),
            refreshes: 0,
        }
    }

    /// Takes in one fetch; a failed one is kept as the error shown, and handed back.
    pub fn apply(&mut self, snap: Snapshot) -> Option<Error> {
        match snap.result {
            Ok(data) => {
                let mut rates = HashMap::new();
                let mut totals = HashMap::new();
                for s in &data.services {
                    let total = s.stats.as_ref().map(|st| st.messages_total).unwrap_or(0);
                    if let Some((prev, at)) = self.prev_totals.get(&s.service_id) {
                        let secs = snap.at.duration_since(*at).as_secs_f64();
                        if secs > 0.0 && total >= *prev {
                            rates.insert(s.service_id.clone(), (total - prev) as f64 / secs);
                        }
                    }
                    totals.insert(s.service_id.clone(), (total, snap.at));
                }
                self.rates = rates;
                self.prev_totals = totals;
                self.data = data;
                self.last_ok = Some(snap.wall);
                self.error = None;
                self.refreshes += 1;
                None
            }
            Err(e) => {
                self.error = Some(e.to_string());
                Some(e)
            }
        }
    }
}

/// Starts fetching a snapshot per `--interval` in the background, until `stop`.
pub fn start(
    global: &GlobalArgs,
    args: &MonitorArgs,
    stop: &CancellationToken,
) -> (mpsc::Receiver<Snapshot>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Snapshot>(4);
    let fetcher = tokio::spawn(fetch_loop(
        global.clone(),
        args.service.clone(),
        Duration::from_secs_f64(args.interval),
        tx,
        stop.clone(),
    ));
    (rx, fetcher)
}

async fn fetch_loop(
    global: GlobalArgs,
    service: Option<String>,
    interval: Duration,
    tx: mpsc::Sender<Snapshot>,
    stop: CancellationToken,
) {
    let mut clients: Option<Clients> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = fetch(&global, &mut clients, service.as_deref()) => r,
        };
        if result.is_err() {
            // Reconnect on the next tick; the channel may be what broke.
            clients = None;
        }
        let snap = Snapshot {
            at: Instant::now(),
            wall: chrono::Utc::now(),
            result,
        };
        if tx.send(snap).await.is_err() {
            return;
        }
    }
}

async fn fetch(
    global: &GlobalArgs,
    clients: &mut Option<Clients>,
    service: Option<&str>,
) -> Result<Fetched, Error> {
    if clients.is_none() {
        *clients = Some(Clients::connect(global).await?);
    }
    let Some(c) = clients.as_mut() else {
        return Err(Error::Stack("not connected".into()));
    };
    let err = |s: tonic::Status, c: &Clients| c.err(s);
    let overview = c
        .stats
        .get_overview(pb::GetOverviewRequest {})
        .await
        .map(|r| r.into_inner())
        .ok();
    match service {
        Some(name) => {
            let s = c
                .services
                .get_service(pb::GetServiceRequest {
                    service: name.to_string(),
                })
                .await
                .map_err(|s| err(s, c))?
                .into_inner();
            let logs = c
                .logs
                .get_logs(pb::GetLogsRequest {
                    service: s.service_id.clone(),
                    limit: 20,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().logs)
                .unwrap_or_default();
            Ok(Fetched {
                services: vec![s],
                overview,
                logs,
            })
        }
        None => {
            let mut services = Vec::new();
            // Page through everything; the server caps a page at 1000.
            loop {
                let r = c
                    .services
                    .list_services(pb::ListServicesRequest {
                        limit: 1000,
                        offset: services.len() as u32,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| err(s, c))?
                    .into_inner();
                let n = r.services.len();
                services.extend(r.services);
                if !r.has_next || n == 0 {
                    break;
                }
            }
            Ok(Fetched {
                services,
                overview,
                logs: Vec::new(),
            })
        }
    }
}
